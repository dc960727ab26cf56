"""One checkpoint per zoo model: a safetensors file with its config in the metadata.

The tensors are the module's full ``state_dict``; the metadata (one canonical JSON string
under the key ``weightspace``, so identical checkpoints are identical bytes) carry
``format``, ``model_id``, ``member`` (the :class:`~weightspace.zoo.spec.MemberSpec` JSON),
``arch`` (the :class:`~weightspace.nets.ArchSpec` JSON), ``epoch`` and
``library_version``, so any code can rebuild the module from the file alone. Files are
written atomically and identified by the sha256 of their bytes.

Key order: safetensors does not preserve the order of the tensors it stores, so
:func:`read` returns ``Checkpoint.state`` in a fixed order, the same in every process: the
order of ``arch.build().state_dict()`` (the architecture's registration order), followed
by any keys the architecture does not have, sorted (:func:`load_state_strict` rejects
those). If the architecture cannot be built, all keys are sorted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import weightspace
from weightspace.atomic import atomic_write_bytes, sha256_bytes
from weightspace.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    NonFiniteCheckpointError,
)
from weightspace.nets.registry import ArchSpec

FORMAT = "weightspace-checkpoint/1"
META_KEY = "weightspace"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: state dict, architecture and metadata."""

    state: dict[str, torch.Tensor]
    arch: ArchSpec
    metadata: dict[str, str]

    def build(self) -> nn.Module:
        """The module with these weights (strictly loaded, eval mode)."""
        module = self.arch.build()
        load_state_strict(module, self.state, source=self.metadata.get("model_id", "checkpoint"))
        return module.eval()


def encode(state: Mapping[str, torch.Tensor], arch: ArchSpec, metadata: Mapping[str, Any]) -> bytes:
    """Serialise a state dict with its architecture and metadata to safetensors bytes."""
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta.update(format=FORMAT, arch=arch.key, library_version=weightspace.__version__)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # One metadata key holding canonical JSON: safetensors keeps metadata in a hash map
    # whose order varies between writes, which would make identical checkpoints differ.
    return st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def write(
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    arch: ArchSpec,
    metadata: Mapping[str, Any],
) -> str:
    """Write a checkpoint atomically; return the sha256 of its bytes."""
    data = encode(state, arch, metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _read_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(json.loads(header["__metadata__"][META_KEY]))


def read(
    path: str | os.PathLike, expected_sha256: str | None = None, check_finite: bool = True
) -> Checkpoint:
    """Read a checkpoint, verifying its hash and content.

    ``Checkpoint.state`` is in the fixed order of :func:`state_key_order`.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    CorruptCheckpointError
        If the bytes do not match ``expected_sha256`` or cannot be parsed.
    NonFiniteCheckpointError
        If a tensor holds NaN or infinity (and ``check_finite``); both a
        :class:`NonFiniteWeightsError` and a :class:`CorruptCheckpointError`.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise CorruptCheckpointError(
            f"checkpoint {os.fspath(path)!r} does not match its recorded sha256 "
            f"({expected_sha256[:12]}...): it was modified or damaged. Delete it and re-run "
            "the zoo pipeline to retrain that model"
        )
    try:
        loaded = st_load(data)
        metadata = _read_metadata(data)
        arch = ArchSpec.from_dict(json.loads(metadata["arch"]))
    except (SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint {os.fspath(path)!r} cannot be parsed as a Weightspace checkpoint "
            f"({exc}); delete it and re-run the zoo pipeline"
        ) from exc
    state = {name: loaded[name] for name in state_key_order(arch, loaded)}
    if check_finite:
        for name, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                n_bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteCheckpointError(
                    f"checkpoint {os.fspath(path)!r}: tensor {name!r} holds NaN or inf "
                    f"({n_bad} of {t.numel()} values); the model diverged or the file was "
                    "damaged. Delete the file to retrain that member, or set "
                    "zoo.run.on_corrupt: retrain"
                )
    return Checkpoint(state=state, arch=arch, metadata=metadata)


_KEY_ORDERS: dict[str, tuple[str, ...]] = {}


def _module_key_order(arch: ArchSpec) -> tuple[str, ...] | None:
    """Keys of the architecture's ``state_dict()`` in order, or None if it cannot be built.

    Built on the meta device (no memory, no initialisation cost) with the global RNG state
    saved and restored, so reading a checkpoint has no side effects. Successes are cached
    per architecture key.
    """
    key = arch.key
    if key not in _KEY_ORDERS:
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                _KEY_ORDERS[key] = tuple(arch.build().state_dict())
        except Exception:  # unknown or unbuildable architecture: the caller sorts
            return None
    return _KEY_ORDERS[key]


def state_key_order(arch: ArchSpec, keys: Iterable[str]) -> list[str]:
    """``keys`` in the fixed order of :func:`read` (see the module docstring).

    The architecture's ``state_dict()`` order first, then the keys it lacks, sorted; all
    keys sorted when the architecture cannot be built.
    """
    keys = set(keys)
    order = _module_key_order(arch) or ()
    known = [k for k in order if k in keys]
    return known + sorted(keys - set(known))


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{source} does not match the {type(module).__name__} it is loaded into: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches "
            f"{shapes[:5]}. Rebuild the module from the checkpoint's own architecture "
            "(weightspace.zoo.checkpoint.read(path).build())"
        )
    module.load_state_dict(dict(state), strict=True)
