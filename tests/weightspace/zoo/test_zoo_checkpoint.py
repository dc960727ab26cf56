"""Checkpoint files: round trip, hash checks, corruption, strict loading, atomic writes."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save as st_save

import weightspace
from weightspace.atomic import atomic_path, atomic_write_bytes, sha256_bytes, sha256_file
from weightspace.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    NonFiniteWeightsError,
)
from weightspace.nets import ArchSpec
from weightspace.zoo import checkpoint

ARCH = ArchSpec("resnet", {"stem_channels": 4, "stages": [[4, 1]]}, (1, 8, 8), 3)


def _state(arch: ArchSpec = ARCH, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    module = arch.build()
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 0.5)
            else:
                b.fill_(7)
    return {k: v.clone() for k, v in module.state_dict().items()}


def _write(path, state=None, arch=ARCH, meta=None):
    return checkpoint.write(path, state or _state(), arch, meta or {"model_id": "m1", "epoch": 3})


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "m1.safetensors"
    state = _state()
    digest = _write(path, state)
    assert digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    ckpt = checkpoint.read(path, expected_sha256=digest)
    assert set(ckpt.state) == set(state)
    for k, v in state.items():
        assert torch.equal(ckpt.state[k], v) and ckpt.state[k].dtype == v.dtype
    assert ckpt.arch == ARCH
    assert ckpt.metadata["model_id"] == "m1"
    assert json.loads(ckpt.metadata["epoch"]) == 3
    assert ckpt.metadata["format"] == checkpoint.FORMAT
    assert ckpt.metadata["library_version"] == weightspace.__version__
    assert ArchSpec.from_dict(json.loads(ckpt.metadata["arch"])) == ARCH
    # The module is rebuilt from the file alone, in eval mode, with the stored tensors.
    module = ckpt.build()
    assert not module.training
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k])


def test_same_checkpoint_gives_same_bytes(tmp_path):
    # Determinism (DESIGN): same zoo -> same files, so DVC and the index hashes are stable.
    state = _state()
    digests = {_write(tmp_path / f"{i}.safetensors", state) for i in range(8)}
    assert len(digests) == 1


def test_wrong_hash_raises_with_path(tmp_path):
    path = tmp_path / "m1.safetensors"
    digest = _write(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a weight byte: still parses, but the content changed
    path.write_bytes(bytes(data))
    checkpoint.read(path)  # without an expected hash it parses
    with pytest.raises(CorruptCheckpointError, match="sha256") as info:
        checkpoint.read(path, expected_sha256=digest)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0, 4, 8, 20, 0.5, -1])
def test_truncated_file_raises(tmp_path, keep):
    path = tmp_path / "m1.safetensors"
    _write(path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep % len(data))
    path.write_bytes(data[:n])
    with pytest.raises(CorruptCheckpointError, match="cannot be parsed") as info:
        checkpoint.read(path)
    assert str(path) in str(info.value)


def test_garbage_and_foreign_files_raise(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 16)
    with pytest.raises(CorruptCheckpointError):
        checkpoint.read(path)
    # A valid safetensors file that is no Weightspace checkpoint (no architecture).
    path.write_bytes(st_save({"w": torch.zeros(2)}))
    with pytest.raises(CorruptCheckpointError):
        checkpoint.read(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.read(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_raise(tmp_path, bad):
    state = _state()
    state["layers.0.conv2.weight"][0, 0, 1, 1] = bad
    path = tmp_path / "m1.safetensors"
    digest = _write(path, state)
    with pytest.raises(NonFiniteWeightsError, match=r"layers\.0\.conv2\.weight"):
        checkpoint.read(path, expected_sha256=digest)
    loaded = checkpoint.read(path, check_finite=False)
    assert torch.equal(
        loaded.state["layers.0.conv2.weight"].isnan(), state["layers.0.conv2.weight"].isnan()
    )


def test_load_state_strict_names_the_mismatch(tmp_path):
    state = _state()
    # Same architecture: loads, values identical.
    module = ARCH.build()
    checkpoint.load_state_strict(module, state, source="m1")
    assert torch.equal(module.state_dict()["fc.weight"], state["fc.weight"])
    # Wider network: shape mismatch names the key.
    wider = ArchSpec("resnet", {"stem_channels": 6, "stages": [[4, 1]]}, (1, 8, 8), 3).build()
    with pytest.raises(CheckpointMismatchError, match=r"stem\.0\.weight") as info:
        checkpoint.load_state_strict(wider, state, source="model m1")
    assert "model m1" in str(info.value)
    # Another architecture: missing and unexpected keys are named.
    mlp = ArchSpec("mlp", {"hidden": [8]}, (1, 8, 8), 3).build()
    with pytest.raises(CheckpointMismatchError, match=r"1\.weight") as info:
        checkpoint.load_state_strict(mlp, state, source="m1")
    assert "fc.weight" in str(info.value)  # unexpected keys are listed (sorted) too
    # A missing key alone is caught too.
    partial = dict(state)
    del partial["fc.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"fc\.bias"):
        checkpoint.load_state_strict(ARCH.build(), partial, source="m1")


def test_checkpoint_build_rejects_a_state_of_another_architecture(tmp_path):
    other = ArchSpec("mlp", {"hidden": [8]}, (1, 8, 8), 3)
    path = tmp_path / "liar.safetensors"
    checkpoint.write(path, _state(), other, {"model_id": "liar"})
    with pytest.raises(CheckpointMismatchError, match="liar"):
        checkpoint.read(path).build()


# ---- atomic writes -------------------------------------------------------------------


def test_atomic_path_leaves_nothing_when_the_body_raises(tmp_path):
    target = tmp_path / "deep" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a checkpoint")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new but broken")
        raise KeyError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible before the block ends
    assert target.read_bytes() == b"new"
    atomic_write_bytes(target, b"newer")
    assert target.read_bytes() == b"newer"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert sha256_bytes(b"newer") == hashlib.sha256(b"newer").hexdigest() == sha256_file(target)
