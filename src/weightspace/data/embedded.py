"""Datasets that need no download: scikit-learn's digits and MNIST-1D.

Both are the embedded defaults that let every pipeline run on a laptop CPU in minutes.

- ``digits``: the 1,797 8x8 handwritten digits that ship inside the scikit-learn wheel
  (UCI optdigits test set), pixel values 0..16 scaled to [0, 1]; input shape ``(1, 8, 8)``.
  There is no official split, so train / val / test are a seeded stratified split of all
  samples; ``val_fraction`` and ``test_fraction`` are fractions of the whole set.
- ``mnist1d``: MNIST-1D (Greydanus & Kobak, 2020), 40-sample 1-D signals of the ten digit
  templates, generated procedurally with :func:`mnist1d.data.make_dataset`; input shape
  ``(1, 40)``, values standardized (mean 0, std 1 over the whole set), *not* in [0, 1].
  The package's own train/test split is kept and the validation split is carved, seeded
  and stratified, from its train part (``val_fraction`` is a fraction of that part).
  ``mnist1d.data.get_dataset`` is never called: it downloads from GitHub and writes a
  pickle into the working directory.

Caching and mutation: the generated datasets are cached in-process on their arguments
(MNIST-1D takes seconds to generate), and every call returns a fresh
:meth:`~weightspace.data.base.SplitDataset.clone`, so callers may modify what they get
without corrupting the cache. :func:`clear_cache` empties it.
"""

from __future__ import annotations

import functools
import logging
import random
import time

import numpy as np
import torch

from weightspace.data.base import Split, SplitDataset
from weightspace.data.splitting import check_fraction, stratified_split
from weightspace.errors import InvalidParameterError

logger = logging.getLogger(__name__)

DIGIT_CLASS_NAMES: tuple[str, ...] = tuple(str(i) for i in range(10))


def _split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y[idx], dtype=np.int64)),
    )


def load_digits(
    seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> SplitDataset:
    """Load scikit-learn's 8x8 digits with a seeded stratified train/val/test split.

    Parameters
    ----------
    seed : int
        Seed of the split; the same seed always gives the same split.
    val_fraction, test_fraction : float
        Fractions of all 1,797 samples put in the validation and test splits; each in
        (0, 1) and their sum below 1. The train split gets the rest.

    Returns
    -------
    SplitDataset
        Named ``"digits"``; ``x`` of shape ``(N, 1, 8, 8)`` in [0, 1], ten classes
        ``"0"``..``"9"``. Defaults give 1,078 / 360 / 359 samples.
    """
    val_fraction = check_fraction("val_fraction", val_fraction)
    test_fraction = check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise InvalidParameterError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}."
        )
    return _digits_cached(int(seed), val_fraction, test_fraction).clone()


@functools.lru_cache(maxsize=32)
def _digits_cached(seed: int, val_fraction: float, test_fraction: float) -> SplitDataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    rng = np.random.SeedSequence(seed).spawn(2)
    rest, test = stratified_split(y, test_fraction, seed=rng[0])
    # The validation fraction is of the whole set, hence of the rest rescaled.
    keep, val = stratified_split(y[rest], val_fraction / (1.0 - test_fraction), seed=rng[1])
    train, val = rest[keep], rest[val]
    return SplitDataset(
        name="digits",
        train=_split(x, y, train),
        val=_split(x, y, val),
        test=_split(x, y, test),
        n_classes=10,
        input_shape=(1, 8, 8),
        class_names=DIGIT_CLASS_NAMES,
    )


def load_mnist1d(
    seed: int = 0,
    n_samples: int = 5000,
    val_fraction: float = 0.2,
    generation_seed: int = 42,
) -> SplitDataset:
    """Generate MNIST-1D offline and split it into train / val / test.

    Parameters
    ----------
    seed : int
        Seed of the validation split carved from the generated train part.
    n_samples : int
        Total number of signals to generate, a positive multiple of 10 (equal count per
        class). MNIST-1D keeps 80% for train (before the validation carve) and 20% for
        test, as in the package.
    val_fraction : float
        Fraction of the train part moved to the validation split, in (0, 1).
    generation_seed : int
        Seed of the procedural generator; 42 is the package's default and gives the
        published MNIST-1D when ``n_samples=5000``.

    Returns
    -------
    SplitDataset
        Named ``"mnist1d"``; ``x`` of shape ``(N, 1, 40)`` float32 (standardized), ten
        classes ``"0"``..``"9"``. Defaults give 3,200 / 800 / 1,000 samples.

    Notes
    -----
    Generation uses NumPy's and Python's global random state (that is how the package
    is written); both are saved and restored around it, so callers' random streams are
    not disturbed. Nothing is downloaded and nothing is written to disk.
    """
    n_samples = int(n_samples)
    if n_samples < 20 or n_samples % 10:
        raise InvalidParameterError(
            f"n_samples must be a multiple of 10 and at least 20 (MNIST-1D draws the same "
            f"number of signals for each of the 10 digits), got {n_samples}."
        )
    val_fraction = check_fraction("val_fraction", val_fraction)
    return _mnist1d_cached(int(seed), n_samples, val_fraction, int(generation_seed)).clone()


def _generate_mnist1d(n_samples: int, generation_seed: int) -> dict[str, np.ndarray]:
    """Run MNIST-1D's procedural generator without touching the global RNG state."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_samples
    args.seed = generation_seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@functools.lru_cache(maxsize=8)
def _mnist1d_cached(
    seed: int, n_samples: int, val_fraction: float, generation_seed: int
) -> SplitDataset:
    start = time.perf_counter()
    data = _generate_mnist1d(n_samples, generation_seed)
    logger.info(
        "Generated MNIST-1D (%d signals, generation seed %d) in %.1f s",
        n_samples,
        generation_seed,
        time.perf_counter() - start,
    )
    x_all = np.asarray(data["x"], dtype=np.float32)[:, None, :]
    y_all = np.asarray(data["y"], dtype=np.int64)
    train, val = stratified_split(y_all, val_fraction, seed=seed)
    x_test = np.asarray(data["x_test"], dtype=np.float32)[:, None, :]
    y_test = np.asarray(data["y_test"], dtype=np.int64)
    return SplitDataset(
        name="mnist1d",
        train=_split(x_all, y_all, train),
        val=_split(x_all, y_all, val),
        test=_split(x_test, y_test, np.arange(len(y_test))),
        n_classes=10,
        input_shape=(1, x_all.shape[-1]),
        class_names=DIGIT_CLASS_NAMES,
    )


def clear_cache() -> None:
    """Forget every cached embedded dataset (the next load regenerates it)."""
    _digits_cached.cache_clear()
    _mnist1d_cached.cache_clear()
