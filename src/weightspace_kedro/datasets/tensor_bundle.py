"""A safetensors file holding named tensors plus JSON metadata, written atomically."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset
from kedro.io.core import get_filepath_str, get_protocol_and_path
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from weightspace.atomic import atomic_write_bytes

Bundle = dict[str, dict[str, Any]]
_KEY = "bundle"


class TensorBundleDataset(AbstractDataset[Bundle, Bundle]):
    """``{"tensors": {name: Tensor}, "metadata": {key: JSON-able}}`` as one safetensors file.

    The metadata are stored as one canonical JSON string (identical bundles are identical
    bytes) and decoded on load.
    """

    def __init__(self, filepath: str, metadata: dict | None = None):
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self.metadata = metadata

    def load(self) -> Bundle:
        """Read tensors and decode metadata."""
        path = Path(get_filepath_str(self._filepath, self._protocol))
        data = path.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        return {"tensors": dict(st_load(data)), "metadata": json.loads(meta.get(_KEY, "{}"))}

    def save(self, data: Bundle) -> None:
        """Write atomically."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in data["tensors"].items()}
        # One key of canonical JSON: safetensors' metadata map has no stable order.
        meta = {_KEY: json.dumps(data.get("metadata", {}), sort_keys=True)}
        path = Path(get_filepath_str(self._filepath, self._protocol))
        atomic_write_bytes(path, st_save(tensors, metadata=meta))

    def _exists(self) -> bool:
        return Path(get_filepath_str(self._filepath, self._protocol)).exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
