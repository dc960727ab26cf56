"""Dataset cards: a small JSON-ready summary and content hash of a SplitDataset.

The card's ``sha256`` identifies the exact tensors a model was trained and evaluated on.
It is computed over, for each split in the order train, val, test: the split name, the
dtype and shape of ``x`` and ``y``, and their raw little-endian bytes (C order). It is
therefore stable across runs, processes and machines for the same values, and changes
when any value, shape, or the assignment of samples to splits changes. It replaces the
md5 check of the original download files (see :mod:`weightspace.data.torchvision_sets`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from torch import Tensor

from weightspace.data.base import SPLITS, SplitDataset


def _update(digest: Any, label: str, tensor: Tensor) -> None:
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    digest.update(f"{label}:{array.dtype.str}:{array.shape};".encode())
    digest.update(array.reshape(-1).view(np.uint8))


def content_hash(ds: SplitDataset) -> str:
    """SHA-256 (hex) of the inputs and labels of all three splits of ``ds``."""
    digest = hashlib.sha256()
    for name in SPLITS:
        split = ds.split(name)
        _update(digest, f"{name}.x", split.x)
        _update(digest, f"{name}.y", split.y)
    return digest.hexdigest()


def dataset_card(ds: SplitDataset) -> dict[str, Any]:
    """Summarize ``ds`` as a plain dict (JSON/YAML-ready).

    Parameters
    ----------
    ds : SplitDataset

    Returns
    -------
    dict
        ``name``, ``n_train``, ``n_val``, ``n_test``, ``n_classes``, ``input_shape``
        (list of int), ``class_names`` (list of str) and ``sha256`` (see
        :func:`content_hash`).
    """
    return {
        "name": ds.name,
        "n_train": len(ds.train),
        "n_val": len(ds.val),
        "n_test": len(ds.test),
        "n_classes": ds.n_classes,
        "input_shape": list(ds.input_shape),
        "class_names": list(ds.class_names),
        "sha256": content_hash(ds),
    }
