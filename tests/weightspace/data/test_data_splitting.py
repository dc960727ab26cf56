"""Seeded stratified splitting."""

import numpy as np
import pytest

from weightspace.data import stratified_split
from weightspace.errors import InvalidParameterError


def test_partition_deterministic_and_proportional():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    keep, held = stratified_split(y, 0.2, seed=3)
    assert len(held) == 20
    assert np.intersect1d(keep, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(y)))
    assert np.bincount(y[held], minlength=4).tolist() == [10, 6, 3, 1]
    keep2, held2 = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2)
    _, held3 = stratified_split(y, 0.2, seed=4)
    assert not np.array_equal(held, held3)


def test_fewer_held_out_than_classes():
    y = np.arange(20) % 10  # two per class, hold out 2: sklearn's stratify would refuse
    keep, held = stratified_split(y, 0.1, seed=0)
    assert len(held) == 2 and len(keep) == 18
    assert len(set(y[held].tolist())) == 2  # two different classes


def test_total_is_rounded_fraction():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=333)
    for fraction in (0.05, 0.1, 0.33, 0.5, 0.9):
        _, held = stratified_split(y, fraction, seed=1)
        assert len(held) == round(fraction * 333)
        counts, held_counts = np.bincount(y, minlength=7), np.bincount(y[held], minlength=7)
        assert np.all(np.abs(held_counts - fraction * counts) < 1 + 1e-9)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "a"])
def test_bad_fraction(fraction):
    with pytest.raises(InvalidParameterError, match="fraction"):
        stratified_split(np.zeros(10, dtype=int), fraction, seed=0)
