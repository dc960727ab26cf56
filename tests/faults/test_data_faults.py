"""Faulty and hostile dataset files and checkpoints: each gives a clear, named error.

Tiny files in the official formats are written into ``tmp_path``: IDX files for
MNIST-style datasets, Python-2-style protocol-2 pickles for CIFAR, safetensors checkpoints.
"""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from py2_pickle import Py2Pickler, Py2Str, py2_str
from weightspace.data import load_torchvision_dataset
from weightspace.data.torchvision_sets import (
    DatasetFormatError,
    RestrictedUnpickler,
    UnsafeDatasetFileError,
)
from weightspace.errors import (
    CorruptCheckpointError,
    DatasetNotFoundError,
    NonFiniteWeightsError,
)
from weightspace.nets import ArchSpec
from weightspace.zoo import checkpoint

# --- writers --------------------------------------------------------------------------


_s = py2_str


def _dump(path: Path, obj, py2: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        if py2:
            Py2Pickler(handle, protocol=2).dump(obj)
        else:  # as Python 3 writes it: str keys, bytes via _codecs.encode
            pickle.dump(_py3(obj), handle, protocol=2)


def _py3(obj):
    if isinstance(obj, Py2Str):
        return obj.decode("latin1")
    if isinstance(obj, dict):
        return {_py3(k): _py3(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py3(v) for v in obj]
    return obj


def _batch(n: int, seed: int = 0, label_key: str = "labels", n_classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    return {
        _s("batch_label"): _s("batch"),
        _s("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        _s(label_key): [int(v) for v in np.arange(n) % n_classes],
        _s("filenames"): [_s(f"img_{i}.png") for i in range(n)],
    }


CIFAR10 = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def _write_cifar10(root: Path, py2: bool = True) -> Path:
    folder = root / CIFAR10
    for i, name in enumerate(TRAIN_FILES):
        _dump(folder / name, _batch(10, seed=i), py2)
    _dump(folder / "test_batch", _batch(10, seed=9), py2)
    meta = {_s("label_names"): [_s(f"class_{i}") for i in range(10)], _s("num_vis"): 3072}
    _dump(folder / "batches.meta", meta, py2)
    return folder


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


class _RunsCommand:
    """Unpickling this runs a shell command (if the unpickler lets it)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (builtins.eval, (self.code,))


# --- CIFAR: no code from data files -----------------------------------------------------


def test_official_format_cifar_loads(tmp_path):
    """Positive control: Python-2-style and Python-3 protocol-2 pickles both load."""
    _write_cifar10(tmp_path / "py2", py2=True)
    _write_cifar10(tmp_path / "py3", py2=False)
    a = load_torchvision_dataset("cifar10", tmp_path / "py2")
    b = load_torchvision_dataset("cifar10", tmp_path / "py3")
    assert a.input_shape == (3, 32, 32) and a.n_classes == 10 and len(a.test) == 10
    assert torch.equal(a.test.x, b.test.x) and a.class_names == b.class_names


def test_cifar_pickle_running_os_system_is_refused(tmp_path):
    folder = _write_cifar10(tmp_path)
    pwned = tmp_path / "pwned"
    _dump(folder / "data_batch_2", {_s("data"): _RunsCommand(f"touch {pwned}")}, py2=False)
    with pytest.raises(UnsafeDatasetFileError) as info:
        load_torchvision_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert str(folder / "data_batch_2") in message
    assert "system" in message and "not an official CIFAR batch" in message
    assert not pwned.exists()
    assert isinstance(info.value, DatasetNotFoundError)  # callers' except clauses still work


def test_cifar_pickle_calling_builtins_eval_is_refused(tmp_path):
    folder = _write_cifar10(tmp_path)
    marker = tmp_path / "evaluated"
    code = f"open({str(marker)!r}, 'w').write('x')"
    _dump(folder / "test_batch", _Evals(code), py2=False)
    with pytest.raises(UnsafeDatasetFileError, match=r"global (__builtin__|builtins)\.eval"):
        load_torchvision_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_hostile_global_hidden_deep_in_a_valid_batch_is_refused(tmp_path):
    folder = _write_cifar10(tmp_path)
    pwned = tmp_path / "pwned_nested"
    batch = _batch(10)
    batch[_s("filenames")][3] = _RunsCommand(f"touch {pwned}")
    _dump(folder / "data_batch_5", batch, py2=False)
    with pytest.raises(UnsafeDatasetFileError, match="data_batch_5"):
        load_torchvision_dataset("cifar10", tmp_path)
    assert not pwned.exists()


def test_hostile_meta_file_is_refused(tmp_path):
    folder = _write_cifar10(tmp_path)
    pwned = tmp_path / "pwned_meta"
    _dump(folder / "batches.meta", {_s("label_names"): _RunsCommand(f"touch {pwned}")}, False)
    with pytest.raises(UnsafeDatasetFileError, match=r"batches\.meta"):
        load_torchvision_dataset("cifar10", tmp_path)
    assert not pwned.exists()


def test_codecs_encode_is_admitted_for_latin1_only(tmp_path):
    path = tmp_path / "batch"
    # _codecs.encode(..., "rot13") is admitted as a global but refused as a call
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    path.write_bytes(payload)
    with open(path, "rb") as handle, pytest.raises(pickle.UnpicklingError, match="latin1"):
        RestrictedUnpickler(handle, path, encoding="latin1").load()


def test_cifar_batch_with_wrong_keys(tmp_path):
    folder = _write_cifar10(tmp_path)
    batch = _batch(10)
    batch[_s("images")] = batch.pop(_s("data"))
    _dump(folder / "data_batch_3", batch)
    with pytest.raises(DatasetFormatError, match=r"data_batch_3.*lacks the key\(s\) \['data'\]"):
        load_torchvision_dataset("cifar10", tmp_path)


def test_cifar100_needs_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _dump(folder / "train", _batch(20, label_key="fine_labels", n_classes=100))
    _dump(folder / "test", _batch(10, label_key="labels", n_classes=100))  # CIFAR-10 keys
    _dump(folder / "meta", {_s("fine_label_names"): [_s(f"c{i}") for i in range(100)]})
    with pytest.raises(DatasetFormatError, match=r"test.*\['fine_labels'\]"):
        load_torchvision_dataset("cifar100", tmp_path)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (np.zeros((10, 1024), np.uint8), r"N x 3072 uint8 array .*shape \(10, 1024\)"),
        (np.zeros((10, 3072), np.float32), r"got a float32 array"),
        (np.zeros((10, 3, 32, 32), np.uint8), r"shape \(10, 3, 32, 32\)"),
        ([[0] * 3072] * 10, r"got a list"),
    ],
)
def test_cifar_batch_with_wrong_shape_or_dtype(tmp_path, data, fragment):
    folder = _write_cifar10(tmp_path)
    batch = _batch(10)
    batch[_s("data")] = data
    _dump(folder / "data_batch_1", batch)
    with pytest.raises(DatasetFormatError, match=f"data_batch_1: 'data' must be .*{fragment}"):
        load_torchvision_dataset("cifar10", tmp_path)


def test_cifar_label_count_mismatch(tmp_path):
    folder = _write_cifar10(tmp_path)
    batch = _batch(10)
    batch[_s("labels")] = batch[_s("labels")][:7]
    _dump(folder / "data_batch_4", batch)
    with pytest.raises(DatasetFormatError, match=r"data_batch_4: 10 images .* but 7 labels"):
        load_torchvision_dataset("cifar10", tmp_path)


def test_cifar_label_out_of_range(tmp_path):
    folder = _write_cifar10(tmp_path)
    batch = _batch(10)
    batch[_s("labels")][0] = 10
    _dump(folder / "test_batch", batch)
    with pytest.raises(DatasetFormatError, match=r"test_batch.*names 10 classes"):
        load_torchvision_dataset("cifar10", tmp_path)


def test_truncated_cifar_pickle(tmp_path):
    folder = _write_cifar10(tmp_path)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match=r"data_batch_2 is not an official CIFAR batch"):
        load_torchvision_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00" * 100, os.urandom(0) + bytes(range(256)) * 4, b"hello world"]
)
def test_garbage_cifar_file(tmp_path, garbage):
    folder = _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(garbage)
    with pytest.raises(DatasetFormatError, match=r"test_batch is not an official CIFAR batch"):
        load_torchvision_dataset("cifar10", tmp_path)


def test_cifar_pickle_of_a_non_dict(tmp_path):
    folder = _write_cifar10(tmp_path)
    _dump(folder / "data_batch_1", [1, 2, 3])
    with pytest.raises(DatasetFormatError, match=r"data_batch_1 .* holds a list, not a dict"):
        load_torchvision_dataset("cifar10", tmp_path)


def test_missing_cifar_file_names_folder_and_expected_files(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_torchvision_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert not isinstance(info.value, DatasetFormatError)
    assert str(tmp_path) in message and str(folder / "test_batch") in message
    assert "<root>/cifar-10-batches-py/data_batch_1" in message
    assert "<root>/cifar-10-batches-py/batches.meta" in message


# --- MNIST-style IDX files ---------------------------------------------------------------


def test_mnist_image_label_count_mismatch_names_both_files(tmp_path):
    raw = _write_mnist(tmp_path)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(17) % 10)
    with pytest.raises(DatasetFormatError) as info:
        load_torchvision_dataset("mnist", tmp_path)
    message = str(info.value)
    assert f"{raw / 'train-images-idx3-ubyte'} holds 20 images" in message
    assert f"{raw / 'train-labels-idx1-ubyte'} holds 17 labels" in message


def test_mnist_bad_magic_number(tmp_path):
    raw = _write_mnist(tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 0x0803) + path.read_bytes()[4:])  # image magic
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte has the magic number"):
        load_torchvision_dataset("mnist", tmp_path)


@pytest.mark.parametrize("keep", [0, 3, 6, 16 + 28 * 28 * 5])
def test_mnist_truncated(tmp_path, keep):
    raw = _write_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte is truncated"):
        load_torchvision_dataset("mnist", tmp_path)


def test_mnist_file_too_long(tmp_path):
    raw = _write_mnist(tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00" * 5)
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte is too long"):
        load_torchvision_dataset("mnist", tmp_path)


def test_mnist_gzip_under_the_raw_name(tmp_path):
    import gzip

    raw = _write_mnist(tmp_path)
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DatasetFormatError, match=r"train-labels-idx1-ubyte is gzip-compressed"):
        load_torchvision_dataset("mnist", tmp_path)


def test_mnist_wrong_image_size(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_mnist(tmp_path)
    (tmp_path / "MNIST").rename(tmp_path / "FashionMNIST")
    _write_idx(raw / "train-images-idx3-ubyte", np.zeros((20, 32, 32)))
    with pytest.raises(DatasetFormatError, match=r"images of 32 x 32 pixels"):
        load_torchvision_dataset("fashion_mnist", tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    raw = _write_mnist(tmp_path)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 12))
    with pytest.raises(DatasetFormatError, match=r"holds the label 12"):
        load_torchvision_dataset("mnist", tmp_path)


# --- checkpoints --------------------------------------------------------------------------

ARCH = ArchSpec("resnet", {"stem_channels": 4, "stages": [[4, 1], [8, 1]]}, (3, 8, 8), 5)


def _arch_state(arch: ArchSpec = ARCH) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in arch.build().state_dict().items()}


def test_nan_checkpoint_message_names_file_tensor_and_fix(tmp_path):
    state = _arch_state()
    name = list(state)[5]
    state[name] = state[name].clone().float()
    state[name].view(-1)[0] = float("nan")
    path = tmp_path / "m.safetensors"
    checkpoint.write(path, state, ARCH, {"model_id": "m"})
    with pytest.raises(NonFiniteWeightsError) as info:
        checkpoint.read(path)
    message = str(info.value)
    assert str(path) in message and repr(name) in message
    assert "delete the file to retrain that member" in message.lower()
    assert "zoo.run.on_corrupt: retrain" in message
    # also a CorruptCheckpointError, so that on_corrupt: retrain retrains it
    assert isinstance(info.value, CorruptCheckpointError)


@pytest.mark.parametrize(
    "arch",
    [ARCH, ArchSpec("mlp", {"hidden": [7, 5]}, (1, 4, 4), 3), ArchSpec("vgg", {}, (3, 8, 8), 4)],
)
def test_checkpoint_keys_load_in_the_module_state_dict_order(tmp_path, arch):
    state = _arch_state(arch)
    expected = list(arch.build().state_dict())
    path = tmp_path / "m.safetensors"
    # write in a scrambled order: the read order must not depend on it
    scrambled = dict(sorted(state.items(), key=lambda kv: hash(kv[0][::-1])))
    checkpoint.write(path, scrambled, arch, {"model_id": "m"})
    for _ in range(2):
        ckpt = checkpoint.read(path)
        assert list(ckpt.state) == expected
    assert list(ckpt.build().state_dict()) == expected


def test_checkpoint_key_order_for_unknown_keys_and_arch_is_sorted(tmp_path):
    keys = ["z.weight", "a.bias", "m.x"]
    unknown = ArchSpec("no_such_arch", {}, (1, 2, 2), 2)
    assert checkpoint.state_key_order(unknown, keys) == sorted(keys)
    extra = checkpoint.state_key_order(ARCH, [*_arch_state(), "zz.extra", "aa.extra"])
    assert extra[-2:] == ["aa.extra", "zz.extra"]


def test_reading_a_checkpoint_leaves_the_global_rng_alone(tmp_path):
    arch = ArchSpec("mlp", {"hidden": [9]}, (1, 3, 3), 2)  # not yet in the key-order cache
    path = tmp_path / "m.safetensors"
    checkpoint.write(path, _arch_state(arch), arch, {"model_id": "m"})
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    checkpoint.read(path)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_empty_bytes_global_is_admitted_but_not_bytes_of_a_size(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"empty": b""}, protocol=2))  # builtins.bytes()
    with open(path, "rb") as handle:
        assert RestrictedUnpickler(handle, path, encoding="latin1").load() == {"empty": b""}
    path.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")  # bytes(2**30)
    with open(path, "rb") as handle, pytest.raises(pickle.UnpicklingError, match="bytes"):
        RestrictedUnpickler(handle, path, encoding="latin1").load()
