"""torchvision datasets read from tiny files written in the official formats."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from py2_pickle import py2_dump, py2_str
from weightspace.data import dataset_card, expected_files, load_dataset, load_torchvision_dataset
from weightspace.data.torchvision_sets import RestrictedUnpickler
from weightspace.errors import DatasetNotFoundError, UnknownDatasetError

N_TRAIN, N_TEST = 20, 10


# --- writers for the official formats -------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX ("SN3 Pascal Vincent") file: magic 0x0000080<ndim> for uint8, big-endian dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_style(root: Path, folder: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.permutation(np.arange(N_TEST) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(root / folder / "raw" / name, array)
    return arrays


def _py2_pickle(path: Path, obj: dict) -> None:
    py2_dump(path, obj)


_s = py2_str


def _cifar_batch(rng, n: int, label_keys: dict[str, np.ndarray], name: str) -> dict:
    batch = {
        _s("batch_label"): _s(name),
        _s("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        _s("filenames"): [_s(f"img_{i:05d}.png") for i in range(n)],
    }
    batch.update({_s(key): [int(v) for v in values] for key, values in label_keys.items()})
    return batch


def _write_cifar10(root: Path) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    per_batch = N_TRAIN // 5
    batches = {}
    for i in range(1, 6):
        labels = (np.arange(per_batch) + per_batch * (i - 1)) % 10
        batches[f"data_batch_{i}"] = _cifar_batch(rng, per_batch, {"labels": labels}, f"b{i}")
    batches["test_batch"] = _cifar_batch(rng, N_TEST, {"labels": np.arange(N_TEST) % 10}, "t")
    for name, batch in batches.items():
        _py2_pickle(folder / name, batch)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    meta = {
        _s("num_cases_per_batch"): per_batch,
        _s("label_names"): [_s(n) for n in names],
        _s("num_vis"): 3072,
    }
    _py2_pickle(folder / "batches.meta", meta)
    return batches


def _write_cifar100(root: Path) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    batches = {}
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        fine = rng.integers(0, 100, n)
        batches[name] = _cifar_batch(
            rng, n, {"fine_labels": fine, "coarse_labels": fine // 5}, name
        )
        _py2_pickle(folder / name, batches[name])
    meta = {
        _s("fine_label_names"): [_s(f"fine_{i}") for i in range(100)],
        _s("coarse_label_names"): [_s(f"coarse_{i}") for i in range(20)],
    }
    _py2_pickle(folder / "meta", meta)
    return batches


# --- tests ----------------------------------------------------------------------------


def test_layout_matches_installed_torchvision():
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

    for name, cls in (("mnist", MNIST), ("fashion_mnist", FashionMNIST)):
        raw = [f"{cls.__name__}/raw/{url[: -len('.gz')]}" for url, _ in cls.resources]
        assert list(expected_files(name)) == raw
    for name, cls in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        assert list(expected_files(name)) == [f"{cls.base_folder}/{f}" for f in files]


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_class_names_match_installed_torchvision(tmp_path, name, folder):
    from torchvision.datasets import MNIST, FashionMNIST

    _write_mnist_style(tmp_path, folder, seed=0)
    ds = load_torchvision_dataset(name, tmp_path)
    assert list(ds.class_names) == (MNIST if name == "mnist" else FashionMNIST).classes


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_style(tmp_path, name, folder):
    arrays = _write_mnist_style(tmp_path, folder, seed=len(name))
    ds = load_torchvision_dataset(name, tmp_path, seed=0, val_fraction=0.1)
    assert ds.name == name and ds.input_shape == (1, 28, 28) and ds.n_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 10)
    expected_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.equal(ds.test.x, expected_test)
    assert torch.equal(ds.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    # train + val is exactly the official train split, each image with its own label
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long()
    for split in (ds.train, ds.val):
        for x, y in zip(split.x, split.y, strict=True):
            index = int(torch.nonzero((images == x).flatten(1).all(1))[0])
            assert labels[index] == y
    assert len(set(ds.val.y.tolist())) == 2  # stratified: two different classes held out
    if name == "fashion_mnist":
        assert ds.class_names[0] == "T-shirt/top"
    again = load_torchvision_dataset(name, tmp_path, seed=0, val_fraction=0.1)
    assert dataset_card(again)["sha256"] == dataset_card(ds)["sha256"]
    others = [load_torchvision_dataset(name, tmp_path, seed=s, val_fraction=0.1) for s in (1, 2)]
    assert any(not torch.equal(o.val.x, ds.val.x) for o in others)


def test_cifar10(tmp_path):
    batches = _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as handle:  # never pickle.load a data file: it could run code
        assert b"data" in RestrictedUnpickler(handle, path, encoding="bytes").load()
    ds = load_dataset("cifar10", root=str(tmp_path), val_fraction=0.1)
    assert ds.input_shape == (3, 32, 32) and ds.n_classes == 10
    assert ds.class_names[:2] == ("airplane", "automobile")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 10)
    test_rows = batches["test_batch"][_s("data")]
    # a CIFAR row is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    assert torch.equal(ds.test.x, torch.from_numpy(test_rows).float().reshape(-1, 3, 32, 32) / 255)
    assert ds.test.y.tolist() == batches["test_batch"][_s("labels")]
    assert float(ds.train.x.min()) >= 0.0 and float(ds.train.x.max()) <= 1.0


def test_cifar100_fine_labels(tmp_path):
    batches = _write_cifar100(tmp_path)
    ds = load_torchvision_dataset("cifar100", tmp_path, val_fraction=0.1)
    assert ds.n_classes == 100 and ds.class_names[7] == "fine_7"
    assert ds.test.y.tolist() == batches["test"][_s("fine_labels")]
    assert len(ds.train) + len(ds.val) == N_TRAIN


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", root=missing)
    message = str(info.value)
    assert str(missing) in message
    assert "<root>/MNIST/raw/train-images-idx3-ubyte" in message
    assert "Nothing is downloaded" in message


def test_missing_file_is_listed_with_layout(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as info:
        load_torchvision_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_3") in message
    assert "data_batch_1\n" not in message.split("Expected layout")[0]
    assert "<root>/cifar-10-batches-py/batches.meta" in message
    assert "tar -xzf" in message


def test_compressed_mnist_files_get_a_hint(tmp_path):
    arrays = _write_mnist_style(tmp_path, "MNIST", seed=0)
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    Path(str(raw) + ".gz").write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    assert len(arrays) == 4
    with pytest.raises(DatasetNotFoundError, match="gunzip"):
        load_torchvision_dataset("mnist", tmp_path)


def test_corrupt_file_is_reported(tmp_path):
    _write_mnist_style(tmp_path, "MNIST", seed=0)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\xff" * 64)
    with pytest.raises(DatasetNotFoundError, match="Could not read the test split"):
        load_torchvision_dataset("mnist", tmp_path)


def test_unknown_torchvision_name(tmp_path):
    with pytest.raises(UnknownDatasetError, match="cifar100"):
        load_torchvision_dataset("svhn", tmp_path)
