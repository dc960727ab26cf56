"""A journal of finished runs, so a long experiment killed part-way resumes where it was.

An experiment made of many independent runs (a protocol's rows) writes each finished run's
JSON result to ``<directory>/<fingerprint>/<run key>.json`` atomically
(:func:`~weightspace.atomic.atomic_write_bytes`); a rerun with the same fingerprint reads
them back instead of training again. The fingerprint hashes everything the results depend
on (the protocol's settings, the data, and the source code of the ``weightspace``
package): a changed setting, dataset or library starts a new folder and never reuses an
old result. Old folders are left in
place (nothing is deleted). A file that does not parse, or whose recorded key is not the
one asked for, is ignored and the run is redone (logged).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weightspace.atomic import atomic_write_bytes

__all__ = ["RunJournal", "fingerprint", "source_digest"]

logger = logging.getLogger(__name__)

_FORMAT = 1


@functools.cache
def source_digest() -> str:
    """sha256 of every ``.py`` file of the installed ``weightspace`` package (sorted paths)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(settings: Mapping[str, Any], *tensors: torch.Tensor) -> str:
    """A short hex hash of JSON-able ``settings``, the bytes of ``tensors`` and the
    library's source (:func:`source_digest`).

    Parameters
    ----------
    settings : mapping
        JSON-able; keys are sorted, so the order of a dict does not matter.
    *tensors : Tensor
        Hashed with their dtype and shape (moved to the CPU, made contiguous).

    Returns
    -------
    str
        The first 16 hex digits of a sha256.
    """
    h = hashlib.sha256()
    head = {"format": _FORMAT, "source": source_digest(), **settings}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for t in tensors:
        c = t.detach().to("cpu").contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update((c.float() if c.dtype == torch.bfloat16 else c).numpy().tobytes())
    return h.hexdigest()[:16]


class RunJournal:
    """Finished runs of one experiment, one JSON file each.

    Parameters
    ----------
    directory : str or PathLike or None
        Parent folder; ``None`` keeps nothing (every :meth:`get` misses).
    fingerprint : str
        See :func:`fingerprint`; the journal lives in ``directory / fingerprint``.
    """

    def __init__(self, directory: str | Path | None, fingerprint: str) -> None:
        self.folder = None if directory is None else Path(directory) / fingerprint

    @staticmethod
    def _name(key: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_=." else "_" for c in key)
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"{safe[:80]}-{digest}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The result saved under ``key``, or None (nothing saved, or unreadable)."""
        if self.folder is None:
            return None
        path = self.folder / self._name(key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable run record %s (%s); running it again", path, err)
            return None
        if not isinstance(record, dict) or record.get("key") != key or "value" not in record:
            logger.warning("ignoring run record %s: it is not the record of %r", path, key)
            return None
        return record["value"]

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Save ``value`` (JSON-able) under ``key``, atomically; no-op without a directory."""
        if self.folder is None:
            return
        data = json.dumps({"key": key, "value": value}, allow_nan=True).encode()
        atomic_write_bytes(self.folder / self._name(key), data)

    def __len__(self) -> int:
        return 0 if self.folder is None else len(list(self.folder.glob("*.json")))
