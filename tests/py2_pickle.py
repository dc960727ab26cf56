"""Write pickles as Python 2 wrote the official CIFAR batches (test helper).

``Py2Str`` is a Python 2 ``str``; :class:`Py2Pickler` writes it, and every ``bytes``
payload (ndarray data), as ``(SHORT_)BINSTRING`` with protocol 2, so no
``_codecs.encode`` global appears. Read back with ``encoding="latin1"`` (torchvision,
our loader) these are ``str``; with ``encoding="bytes"`` (the CIFAR page's recipe)
``bytes``.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path


class Py2Str(bytes):
    """A Python 2 ``str``."""


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing ``Py2Str`` and ``bytes`` as Python 2 did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[Py2Str] = _save_py2_str
    dispatch[bytes] = _save_py2_str  # ndarray payloads too, exactly like the official files


def py2_str(text: str) -> Py2Str:
    """``text`` as a Python 2 ``str`` (latin-1 bytes)."""
    return Py2Str(text.encode("latin1"))


def py2_dump(path: Path, obj) -> None:
    """Pickle ``obj`` to ``path`` as Python 2 did (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        Py2Pickler(handle, protocol=2).dump(obj)
