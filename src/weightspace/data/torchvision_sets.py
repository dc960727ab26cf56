"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read from a folder the user names.

The files are read through ``torchvision.datasets`` with ``download=False``: Weightspace
never downloads anything. The folder layouts are torchvision's (see
:func:`expected_files`), e.g. ``<root>/MNIST/raw/train-images-idx3-ubyte`` (uncompressed)
or ``<root>/cifar-10-batches-py/data_batch_1``. When a file is missing,
:class:`~weightspace.errors.DatasetNotFoundError` names the folder looked in, the missing
files and the whole expected layout.

torchvision's CIFAR classes verify the md5 checksum of every official file; here the
check is reduced to presence (so that re-packed or tiny test files in the same format
load too). Content identity is instead recorded by the SHA-256 of the loaded tensors in
the dataset card (:func:`weightspace.data.cards.dataset_card`), which every downstream
artefact refers to. For MNIST-style datasets torchvision itself only checks presence.

CIFAR batches are Python pickles: only point ``root`` at files you trust. torchvision is
imported on first load only, so ``import weightspace.data`` stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightspace.data.base import Split, SplitDataset
from weightspace.data.splitting import check_fraction, stratified_split
from weightspace.errors import DatasetNotFoundError, UnknownDatasetError

logger = logging.getLogger(__name__)


class _PresenceCheckMixin:
    """Replace torchvision's md5 verification of CIFAR files by a presence check."""

    root: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        return all(
            os.path.isfile(os.path.join(folder, name))
            for name, _ in self.train_list + self.test_list
        )

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not os.path.isfile(path):
            raise RuntimeError(f"Dataset metadata file {path} not found.")
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="latin1")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


@functools.cache
def _dataset_classes() -> dict[str, type]:
    """torchvision's dataset classes, imported on first use (torchvision is slow to import)."""
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

    class PresenceCheckedCIFAR10(_PresenceCheckMixin, CIFAR10):
        """CIFAR-10 without the md5 check."""

    class PresenceCheckedCIFAR100(_PresenceCheckMixin, CIFAR100):
        """CIFAR-100 (fine labels) without the md5 check."""

    return {
        "mnist": MNIST,
        "fashion_mnist": FashionMNIST,
        "cifar10": PresenceCheckedCIFAR10,
        "cifar100": PresenceCheckedCIFAR100,
    }


@dataclass(frozen=True)
class _Source:
    """Where torchvision 0.29 looks for one dataset, relative to ``root``.

    Mirrors ``MNIST.resources`` (uncompressed names under ``<class name>/raw``) and
    ``CIFAR10.base_folder`` / ``train_list`` / ``test_list`` / ``meta``; a test checks
    that these stay in sync with the installed torchvision.
    """

    folder: str
    files: tuple[str, ...]
    url: str
    archive: str | None = None


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_SOURCES: dict[str, _Source] = {
    "mnist": _Source("MNIST/raw", _MNIST_FILES, "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion_mnist": _Source(
        "FashionMNIST/raw",
        _MNIST_FILES,
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    "cifar10": _Source(
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": _Source(
        "cifar-100-python",
        ("train", "test", "meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive="cifar-100-python.tar.gz",
    ),
}

TORCHVISION_DATASETS: tuple[str, ...] = tuple(_SOURCES)
"""Names accepted by :func:`load_torchvision_dataset`."""


def expected_files(name: str) -> tuple[str, ...]:
    """Paths, relative to ``root``, that must exist for dataset ``name``.

    Returns
    -------
    tuple of str
        e.g. ``("MNIST/raw/train-images-idx3-ubyte", ...)`` for ``"mnist"``.
    """
    source = _source(name)
    return tuple(f"{source.folder}/{f}" for f in source.files)


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise UnknownDatasetError(
            f"Unknown torchvision dataset {name!r}; known: {', '.join(TORCHVISION_DATASETS)}."
        )
    return _SOURCES[name]


def _check_files(name: str, root: Path) -> None:
    """Raise DatasetNotFoundError, explaining the layout, if any file is missing."""
    source = _source(name)
    layout = "\n".join(f"  <root>/{path}" for path in expected_files(name))
    advice = (
        f"Expected layout (the official files, uncompressed):\n{layout}\n"
        f"Nothing is downloaded: place the files there (they are published at "
        f"{source.url}) and run again."
    )
    if not root.is_dir():
        raise DatasetNotFoundError(f"Dataset folder {root} for {name!r} does not exist.\n{advice}")
    missing = [root / path for path in expected_files(name) if not (root / path).is_file()]
    if not missing:
        return
    hints = []
    for path in missing:
        if path.with_name(path.name + ".gz").is_file():
            hints.append(f"Found {path}.gz: decompress it (gunzip -k).")
    if source.archive and (root / source.archive).is_file():
        hints.append(f"Found {root / source.archive}: extract it into {root} (tar -xzf).")
    listing = "\n".join(f"  {path}" for path in missing)
    hint_text = "".join(f"\n{h}" for h in hints)
    raise DatasetNotFoundError(
        f"{name!r} is incomplete in {root}; missing files:\n{listing}{hint_text}\n{advice}"
    )


# What torchvision raises on unreadable files: failed asserts on a bad IDX magic number,
# pickle errors, or a missing key in a CIFAR batch.
_READ_ERRORS = (
    RuntimeError,
    AssertionError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
)


def _read(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read one official split as uint8 images (N, C, H, W), int64 labels, class names."""
    source = _source(name)
    try:
        dataset = _dataset_classes()[name](str(root), train=train, download=False)
    except _READ_ERRORS as err:
        raise DatasetNotFoundError(
            f"Could not read the {'train' if train else 'test'} split of {name!r} from "
            f"{root / source.folder}: {type(err).__name__}: {err}. The files must be the "
            f"official ones (see {source.url})."
        ) from err
    if isinstance(dataset.data, torch.Tensor):  # MNIST-style: (N, H, W) uint8 tensor
        images = dataset.data.unsqueeze(1)
        labels = dataset.targets.to(torch.int64)
    else:
        hwc = torch.from_numpy(np.ascontiguousarray(dataset.data))  # CIFAR: (N, H, W, C)
        images = hwc.permute(0, 3, 1, 2)
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return images.contiguous(), labels, [str(c) for c in dataset.classes]


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


def load_torchvision_dataset(
    name: str, root: str | os.PathLike, seed: int = 0, val_fraction: float = 0.1
) -> SplitDataset:
    """Load a torchvision dataset from ``root`` with a seeded stratified validation split.

    Parameters
    ----------
    name : {"mnist", "fashion_mnist", "cifar10", "cifar100"}
    root : str or PathLike
        Folder holding the dataset in torchvision's layout (see :func:`expected_files`).
    seed : int
        Seed of the validation split.
    val_fraction : float
        Fraction of the official train split moved to the validation split, in (0, 1).
        The official test split is kept as is.

    Returns
    -------
    SplitDataset
        Named ``name``; ``x`` float32 in [0, 1] of shape ``(N, 1, 28, 28)`` (MNIST,
        Fashion-MNIST) or ``(N, 3, 32, 32)`` (CIFAR); CIFAR-100 uses the 100 fine labels.

    Raises
    ------
    DatasetNotFoundError
        If ``root`` or a file is missing (the message gives the expected layout) or a
        file cannot be parsed.
    UnknownDatasetError
        If ``name`` is not one of the four.
    """
    _source(name)
    val_fraction = check_fraction("val_fraction", val_fraction)
    root = Path(root).expanduser().absolute()
    _check_files(name, root)
    train_images, train_labels, class_names = _read(name, root, train=True)
    test_images, test_labels, _ = _read(name, root, train=False)
    keep, val = stratified_split(train_labels.numpy(), val_fraction, seed=seed)
    keep_t, val_t = torch.from_numpy(keep), torch.from_numpy(val)
    dataset = SplitDataset(
        name=name,
        train=Split(_to_float(train_images[keep_t]), train_labels[keep_t]),
        val=Split(_to_float(train_images[val_t]), train_labels[val_t]),
        test=Split(_to_float(test_images), test_labels),
        n_classes=len(class_names),
        input_shape=tuple(train_images.shape[1:]),
        class_names=tuple(class_names),
    )
    logger.info(
        "Loaded %s from %s: %d train / %d val / %d test",
        name,
        root,
        len(dataset.train),
        len(dataset.val),
        len(dataset.test),
    )
    return dataset
