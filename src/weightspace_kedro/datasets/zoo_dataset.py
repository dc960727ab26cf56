"""A zoo on disk: ``index.parquet`` plus ``checkpoints/*.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from weightspace.zoo import Zoo
from weightspace.zoo.folder import zoo_lock
from weightspace.zoo.zoo import INDEX_FILE


class ZooDataset(AbstractDataset[Zoo, Zoo]):
    """Load and save a :class:`weightspace.zoo.Zoo`.

    Parameters
    ----------
    path : str
        Zoo folder.
    allow_missing : bool
        Load an empty zoo (rooted at ``path``) instead of failing when none exists yet:
        the resume input of the zoo pipeline.
    """

    def __init__(self, path: str, allow_missing: bool = False, metadata: dict | None = None):
        self._path = Path(path)
        self._allow_missing = allow_missing
        self.metadata = metadata

    def load(self) -> Zoo:
        """Open the zoo (checkpoints are read lazily and verified by sha256)."""
        if self._allow_missing and not (self._path / INDEX_FILE).exists():
            return Zoo.empty(root=self._path)
        return Zoo.load(self._path)

    def save(self, data: Zoo) -> None:
        """Write new checkpoints and the index atomically, under the zoo folder's lock.

        A zoo the run already wrote through to this folder is left as it is; checkpoint
        files the index does not list are kept (see :meth:`Zoo.save`).
        """
        if data.is_saved_at(self._path):
            return
        with zoo_lock(self._path):
            data.save(self._path)

    def _exists(self) -> bool:
        return (self._path / INDEX_FILE).exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "allow_missing": self._allow_missing}
