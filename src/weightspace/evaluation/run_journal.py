"""A journal of finished runs, so a long experiment killed part-way resumes where it was.

An experiment made of many independent runs (a protocol's rows) writes each finished run's
JSON result to ``<directory>/<fingerprint>/<run key>.json`` atomically
(:func:`~weightspace.atomic.atomic_write_bytes`); a rerun with the same fingerprint reads
them back instead of training again. The fingerprint hashes everything the results depend
on (:func:`weightspace.fingerprint.fingerprint`: the protocol's settings, the data, and
the source code of the ``weightspace`` package): a changed setting, dataset or library
starts a new folder and never reuses an old result. Old folders are left in place
(nothing is deleted). A file that does not parse, or whose recorded key is not the
one asked for, is ignored and the run is redone (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace.atomic import atomic_write_bytes
from weightspace.fingerprint import fingerprint, source_digest

__all__ = ["RunJournal", "fingerprint", "source_digest"]

logger = logging.getLogger(__name__)


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
