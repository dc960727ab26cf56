"""Content fingerprints: what a result depends on, hashed, so a stored result is reused
only by the computation that made it.

A fingerprint covers JSON-able settings (key order does not matter), tensors (dtype,
shape and bytes) and the source code of the package that computes the result
(:func:`source_digest`): another setting, dataset or code version gives another
fingerprint. Used by the SuperWeights run journal
(:mod:`weightspace.evaluation.run_journal`) and the generators' training checkpoints
(:mod:`weightspace.generators.training_checkpoint`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["PACKAGE_ROOT", "fingerprint", "source_digest"]

PACKAGE_ROOT = Path(__file__).resolve().parent
_FORMAT = 1


@functools.cache
def source_digest(root: Path = PACKAGE_ROOT) -> str:
    """sha256 of every ``.py`` file below ``root`` (relative paths and bytes, sorted)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(
    settings: Mapping[str, Any], *tensors: torch.Tensor, source: Path = PACKAGE_ROOT
) -> str:
    """16 hex digits of a sha256 over ``settings``, ``tensors`` and ``source``'s code.

    Parameters
    ----------
    settings : mapping
        JSON-able (other values are hashed through ``str``); keys are sorted.
    *tensors : Tensor
        Hashed with dtype and shape (moved to the CPU, made contiguous).
    source : Path
        Package folder whose ``.py`` files the result depends on (default: the whole
        ``weightspace`` library).
    """
    h = hashlib.sha256()
    head = {"format": _FORMAT, "source": source_digest(source), **settings}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for t in tensors:
        c = t.detach().to("cpu").contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update((c.float() if c.dtype == torch.bfloat16 else c).numpy().tobytes())
    return h.hexdigest()[:16]
