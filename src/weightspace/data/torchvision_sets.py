"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read from a folder the user names.

Weightspace never downloads anything. The folder layouts are torchvision's (see
:func:`expected_files`), e.g. ``<root>/MNIST/raw/train-images-idx3-ubyte`` (uncompressed)
or ``<root>/cifar-10-batches-py/data_batch_1``. When a file is missing,
:class:`~weightspace.errors.DatasetNotFoundError` names the folder looked in, the missing
files and the whole expected layout.

The files are parsed here, not by ``torchvision.datasets`` (whose CIFAR classes call
``pickle.load`` on the batches, so that a crafted file would run code):

* MNIST-style IDX files: the magic number (``0x00000803`` images, ``0x00000801``
  labels), the dimensions (N x 28 x 28), the exact file size, the label range and the
  image/label counts are checked.
* CIFAR batches are Python pickles, read by :class:`RestrictedUnpickler`, which admits only
  the globals that the official CIFAR-10/100 python pickles use (numpy's
  ``_reconstruct``, ``ndarray`` and ``dtype``, a few builtins, and latin-1
  ``_codecs.encode`` as written by Python 3 at protocol 2). Any other global (``os.system``,
  ``builtins.eval``, ...) raises :class:`UnsafeDatasetFileError` before anything is
  called. The content is then checked: keys ``data`` and ``labels`` (CIFAR-10) or
  ``fine_labels`` (CIFAR-100), ``data`` an N x 3072 uint8 array, N labels in range.

Every unreadable file raises :class:`DatasetFormatError` (a
:class:`~weightspace.errors.DatasetNotFoundError`) naming the file and what is wrong.
Unlike torchvision's CIFAR classes, the md5 checksums of the official files are not
verified (so that re-packed or tiny test files in the same format load too); content
identity is instead recorded by the SHA-256 of the loaded tensors in the dataset card
(:func:`weightspace.data.cards.dataset_card`), which every downstream artefact refers to.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.data.base import Split, SplitDataset
from weightspace.data.splitting import check_fraction, stratified_split
from weightspace.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    UnknownDatasetError,
    UnsafeDatasetFileError,
)

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

logger = logging.getLogger(__name__)


# --- restricted unpickling of CIFAR batches -------------------------------------------


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to what Python 3 pickles of ``bytes`` use (latin-1)."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode may only encode a str as latin1, got {type(text).__name__} "
            f"as {encoding!r}"
        )
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    """``bytes`` as Python 3 pickles use it (``bytes()`` for b""); no ``bytes(n)`` allocations."""
    if args and not isinstance(args[0], bytes | bytearray | list | tuple):
        raise pickle.UnpicklingError(
            f"bytes() of a {type(args[0]).__name__} is not admitted in a CIFAR batch"
        )
    return bytes(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{
        (module, obj.__name__): obj
        for module in ("builtins", "__builtin__")
        for obj in (dict, list, str, int)
    },
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytes"): _bytes,
}
"""Every global the official CIFAR-10/100 python pickles (Python 2, protocol 2, numpy
arrays) can reference, plus the spellings that numpy 2 and Python 3 write at protocol 2."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED_GLOBALS`; anything else is refused.

    Parameters
    ----------
    file : binary file
        The open pickle.
    path : str or PathLike
        Named in the error message.
    **kwargs
        Passed to :class:`pickle.Unpickler` (e.g. ``encoding="latin1"``).

    Raises
    ------
    UnsafeDatasetFileError
        From :meth:`load`, when the pickle references any other global. Nothing that the
        pickle asks for is imported or called.
    """

    def __init__(self, file: Any, path: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._path = os.fspath(path)

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafeDatasetFileError(
                f"{self._path} is not an official CIFAR batch: it references the Python "
                f"global {module}.{name}, which the official files never contain (loading "
                f"it could run arbitrary code). Refusing to read it; replace the file with "
                f"the official one."
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeDatasetFileError(
            f"{self._path} is not an official CIFAR batch: it holds a persistent id, which "
            "the official files never contain. Replace the file with the official one."
        )


# Errors the unpickler raises on truncated or garbage bytes (or on wrong values handed to
# the admitted numpy constructors).
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    MemoryError,
)


def _unpickle(path: Path) -> Any:
    """Read one CIFAR pickle with :class:`RestrictedUnpickler` (``encoding="latin1"``)."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, path, encoding="latin1").load()
    except DatasetFormatError:
        raise
    except _UNPICKLE_ERRORS as err:
        raise DatasetFormatError(
            f"{path} is not an official CIFAR batch: it cannot be unpickled "
            f"({type(err).__name__}: {err}); the file is truncated or not a CIFAR python "
            "pickle. Replace it with the official file."
        ) from err


def _text(value: Any) -> Any:
    """Keys and names as str (pickles written by Python 3 may hold bytes)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _cifar_dict(path: Path, obj: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetFormatError(
            f"{path} is not an official CIFAR batch: it holds a {type(obj).__name__}, not a dict."
        )
    entry = {_text(k): v for k, v in obj.items()}
    missing = [k for k in required if k not in entry]
    if missing:
        found = sorted(str(k) for k in entry)
        raise DatasetFormatError(
            f"{path} is not an official CIFAR batch: it lacks the key(s) {missing} "
            f"(found keys {found[:10]}); expected {list(required)}."
        )
    return entry


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR batch file."""
    entry = _cifar_dict(path, _unpickle(path), ("data", label_key))
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        kind = (
            f"a {data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else f"a {type(data).__name__}"
        )
        raise DatasetFormatError(f"{path}: 'data' must be an N x 3072 uint8 array, got {kind}.")
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"{path}: 'data' must be an N x 3072 uint8 array (3 x 32 x 32 pixels per row), "
            f"got shape {data.shape}."
        )
    raw_labels = entry[label_key]
    try:
        labels = np.asarray(raw_labels)
    except (ValueError, TypeError) as err:
        raise DatasetFormatError(f"{path}: {label_key!r} is not a list of ints ({err}).") from err
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DatasetFormatError(
            f"{path}: {label_key!r} must be a list of ints, got {labels.dtype} values of "
            f"shape {labels.shape}."
        )
    if len(labels) != len(data):
        raise DatasetFormatError(
            f"{path}: {len(data)} images in 'data' but {len(labels)} labels in "
            f"{label_key!r}; the counts must match."
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_meta(path: Path, names_key: str) -> list[str]:
    entry = _cifar_dict(path, _unpickle(path), (names_key,))
    names = entry[names_key]
    if not isinstance(names, list | tuple) or not names:
        raise DatasetFormatError(
            f"{path}: {names_key!r} must be a non-empty list of class names, got "
            f"{type(names).__name__}."
        )
    return [str(_text(n)) for n in names]


# --- IDX (MNIST-style) files ----------------------------------------------------------

_IDX_UINT8 = 0x08
_MNIST_CLASSES = tuple(
    f"{i} - {n}"
    for i, n in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    )
)
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an uncompressed uint8 IDX file of ``ndim`` dimensions, checking its size."""
    data = path.read_bytes()
    kind = "image" if ndim == 3 else "label"
    expected_magic = (_IDX_UINT8 << 8) | ndim
    if data[:2] == b"\x1f\x8b":
        raise DatasetFormatError(
            f"{path} is gzip-compressed; decompress it (gunzip -c {path.name} > "
            f"{path.name}.tmp && mv {path.name}.tmp {path.name})."
        )
    if len(data) < 4:
        raise DatasetFormatError(
            f"{path} is truncated: {len(data)} bytes, too short for an IDX header."
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DatasetFormatError(
            f"{path} has the magic number 0x{magic:08X}, expected 0x{expected_magic:08X} "
            f"(an uncompressed uint8 IDX {kind} file); it is not an official MNIST-style file."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(
            f"{path} is truncated: {len(data)} bytes, the IDX header alone takes {header}."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and shape[1:] != (28, 28):
        raise DatasetFormatError(
            f"{path} holds images of {shape[1]} x {shape[2]} pixels; MNIST-style images are "
            "28 x 28."
        )
    payload = len(data) - header
    expected = math.prod(shape)
    if payload != expected:
        what = "truncated" if payload < expected else "too long"
        raise DatasetFormatError(
            f"{path} is {what}: its header announces {' x '.join(map(str, shape))} = "
            f"{expected} bytes of {kind} data, but the file holds {payload}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_mnist_style(
    folder: Path, train: bool, classes: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    image_path = folder / f"{prefix}-images-idx3-ubyte"
    label_path = folder / f"{prefix}-labels-idx1-ubyte"
    images = _read_idx(image_path, 3)
    labels = _read_idx(label_path, 1)
    if len(images) != len(labels):
        raise DatasetFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} "
            "labels; the counts must match (use the official image and label files of the "
            "same split)."
        )
    if labels.size and int(labels.max()) >= len(classes):
        raise DatasetFormatError(
            f"{label_path} holds the label {int(labels.max())}; labels must be in "
            f"[0, {len(classes) - 1}]."
        )
    return (
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


# --- layouts --------------------------------------------------------------------------


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


def _read(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read one official split as uint8 images (N, C, H, W), int64 labels, class names.

    Raises
    ------
    DatasetFormatError
        Naming the file and what is wrong with it, if a file cannot be parsed.
    """
    try:
        return _read_files(name, root / _source(name).folder, train)
    except DatasetFormatError as err:  # same class (Unsafe... stays Unsafe...), with context
        split = "train" if train else "test"
        raise type(err)(
            f"Could not read the {split} split of {name!r} from {root / _source(name).folder}: "
            f"{err} The files must be the official ones (see {_source(name).url})."
        ) from err


def _read_files(
    name: str, folder: Path, train: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if name in ("mnist", "fashion_mnist"):
        classes = _MNIST_CLASSES if name == "mnist" else _FASHION_CLASSES
        images, labels = _read_mnist_style(folder, train, classes)
        return images.contiguous(), labels, list(classes)
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        files = ["train"] if train else ["test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    batches = [_read_cifar_batch(folder / f, label_key) for f in files]
    classes = _read_cifar_meta(folder / meta_file, names_key)
    for file, (_, labels) in zip(files, batches, strict=True):
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DatasetFormatError(
                f"{folder / file}: {label_key!r} holds labels in [{int(labels.min())}, "
                f"{int(labels.max())}], but {folder / meta_file} names {len(classes)} "
                f"classes; labels must be in [0, {len(classes) - 1}]."
            )
    images = torch.from_numpy(np.concatenate([b[0] for b in batches]))
    labels = torch.from_numpy(np.concatenate([b[1] for b in batches]))
    return images.contiguous(), labels, classes


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
        If ``root`` or a file is missing (the message gives the expected layout).
    DatasetFormatError
        (a ``DatasetNotFoundError``) if a file cannot be parsed: wrong magic number or
        size, missing keys, wrong shapes, image/label count mismatch.
    UnsafeDatasetFileError
        (a ``DatasetFormatError``) if a CIFAR pickle references a global that the official
        files never contain; nothing in it is run.
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
