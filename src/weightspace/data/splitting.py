"""Seeded, stratified splitting of labelled samples.

:func:`stratified_split` moves a fraction of the samples of every class to a held-out
part. The number held out per class follows the largest-remainder method, so the total
is exactly ``round(fraction * N)`` and every class is represented in proportion to its
size (up to one sample; which classes get the extra sample is drawn from the seed).
Unlike ``sklearn.model_selection.train_test_split`` it also works when the held-out part
is smaller than the number of classes (tiny datasets).
"""

from __future__ import annotations

import numpy as np

from weightspace.errors import InvalidParameterError


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float after checking ``0 < value < 1``.

    Raises
    ------
    InvalidParameterError
        If ``value`` is not a number strictly between 0 and 1.
    """
    try:
        fraction = float(value)
    except (TypeError, ValueError) as err:
        raise InvalidParameterError(f"{name} must be a number in (0, 1), got {value!r}.") from err
    if not 0.0 < fraction < 1.0:
        raise InvalidParameterError(f"{name} must lie strictly between 0 and 1, got {fraction}.")
    return fraction


def _held_out_per_class(
    counts: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Largest-remainder allocation of ``round(fraction * counts.sum())`` samples."""
    total = round(fraction * int(counts.sum()))
    ideal = fraction * counts
    take = np.floor(ideal).astype(np.int64)
    remainder = ideal - take
    # Classes with the largest fractional part get one more; classes that would lose
    # their last kept sample come last; ties are broken at random (seeded), so tiny
    # held-out sets do not always favour the lowest class ids.
    would_empty = (take + 1) >= counts
    order = np.lexsort((rng.permutation(len(counts)), -remainder, would_empty))
    missing = total - int(take.sum())
    for c in order:
        if missing <= 0:
            break
        if take[c] < counts[c]:
            take[c] += 1
            missing -= 1
    return take


def stratified_split(
    y: np.ndarray, fraction: float, seed: int | np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into a kept part and a held-out part, per class.

    Parameters
    ----------
    y : ndarray, shape (N,), int
        Class labels.
    fraction : float
        Fraction of the samples to hold out, in ``(0, 1)``.
    seed : int or numpy.random.SeedSequence
        Seed of the ``numpy.random.Generator`` that shuffles each class.

    Returns
    -------
    keep : ndarray, shape (N - M,), int64
        Sorted indices of the kept samples.
    held_out : ndarray, shape (M,), int64
        Sorted indices of the held-out samples, ``M = round(fraction * N)``.
        ``keep`` and ``held_out`` are disjoint and together cover ``range(N)``.
    """
    fraction = check_fraction("fraction", fraction)
    y = np.asarray(y).astype(np.int64, copy=False)
    if y.ndim != 1:
        raise InvalidParameterError(f"labels must have shape (N,), got {y.shape}.")
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take = _held_out_per_class(counts, fraction, rng)
    held_out = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        held_out.append(rng.permutation(members)[: take[c]])
    held = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held.astype(np.int64)
