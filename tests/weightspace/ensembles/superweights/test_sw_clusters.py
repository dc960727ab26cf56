"""Algorithm 1 (group merging), depth bins, cropped cosine similarity, thresholds."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from weightspace.ensembles.superweights import (
    check_threshold,
    cropped_cosine,
    depth_bins,
    group_pairs,
)
from weightspace.errors import InvalidParameterError, ShapeError


def _random_pairs(n: int, seed: int) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    return [(rng.uniform(-1, 1), a, b) for a, b in itertools.combinations(range(n), 2)]


def _partition(groups) -> set[frozenset]:
    return set(groups)


def test_transitive_merge():
    groups = group_pairs(["a", "b", "c"], [(0.8, "a", "b"), (0.9, "b", "c")], 0.5)
    assert groups == [frozenset({"a", "b", "c"})]


def test_partition_is_independent_of_pair_order():
    items = list(range(9))
    pairs = _random_pairs(9, 0)
    # ties: several pairs with the same similarity
    pairs += [(0.8, 0, 5), (0.8, 5, 7), (0.8, 2, 8)]
    reference = _partition(group_pairs(items, pairs, 0.75))
    assert 1 < len(reference) < 9  # a non-trivial partition
    rng = random.Random(1)
    for _ in range(50):
        shuffled = [(p, *((a, b) if rng.random() < 0.5 else (b, a))) for p, a, b in pairs]
        rng.shuffle(shuffled)
        assert _partition(group_pairs(items, shuffled, 0.75)) == reference
    # exhaustively on a small case
    small = [(0.7, 0, 1), (0.7, 1, 2), (0.2, 2, 3), (0.9, 3, 4)]
    ref_small = _partition(group_pairs(range(5), small, 0.5))
    assert ref_small == {frozenset({0, 1, 2}), frozenset({3, 4})}
    for perm in itertools.permutations(small):
        assert _partition(group_pairs(range(5), list(perm), 0.5)) == ref_small


def test_partition_covers_items_and_singletons_stay_alone():
    groups = group_pairs([0, 1, 2, 3], [(0.1, 0, 1), (0.95, 2, 3)], 0.5)
    assert sorted(map(sorted, groups)) == [[0], [1], [2, 3]]
    assert group_pairs([0, 1], [], 0.0) == [frozenset({0}), frozenset({1})]


@pytest.mark.parametrize("seed", range(5))
def test_lowering_tau_never_increases_the_number_of_clusters(seed):
    pairs = _random_pairs(12, seed)
    counts = [len(group_pairs(range(12), pairs, t)) for t in torch.linspace(1, -1, 41).tolist()]
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert counts[0] == 12 and counts[-1] == 1
    # coarsening: every group at a lower threshold is a union of groups at a higher one
    fine = group_pairs(range(12), pairs, 0.4)
    coarse = group_pairs(range(12), pairs, 0.0)
    assert all(any(g <= c for c in coarse) for g in fine)


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), "0.1", None, True])
def test_thresholds_outside_minus_one_one_are_rejected(bad):
    with pytest.raises(InvalidParameterError, match=r"\[-1, 1\]"):
        group_pairs([0, 1], [(0.5, 0, 1)], bad, "tau")
    with pytest.raises(InvalidParameterError, match="beta"):
        check_threshold(bad, "beta")


def test_group_pairs_rejects_unknown_items_and_non_finite_similarities():
    with pytest.raises(InvalidParameterError, match="not among the items"):
        group_pairs([0, 1], [(0.5, 0, 2)], 0.1)
    with pytest.raises(InvalidParameterError, match="finite"):
        group_pairs([0, 1], [(float("nan"), 0, 1)], 0.1)


def test_cropped_cosine_uses_the_common_top_left_block():
    a = torch.randn(4, 3, 3)
    b = torch.randn(2, 5, 3)
    b[:, :3] = a[:2, :3] * 2.0
    # extra rows of a and columns of b, beyond the common block (2, 3), are ignored
    assert cropped_cosine(a, b) == pytest.approx(1.0, abs=1e-12)
    assert cropped_cosine(a, -b) == pytest.approx(-1.0, abs=1e-12)
    assert cropped_cosine(torch.zeros(2, 2), torch.ones(2, 2)) == 0.0
    # a Linear weight compares with a 1x1 convolution
    assert cropped_cosine(torch.ones(3, 2), torch.ones(3, 2, 1, 1)) == pytest.approx(1.0)
    with pytest.raises(ShapeError):
        cropped_cosine(torch.ones(2, 2, 3), torch.ones(2, 2, 1))


def test_depth_bins_four_bins_kernels_apart():
    keys = depth_bins([9, 9, 9, 1, 9, 9, 9, 9], 4)
    assert [k[0] for k in keys] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert keys[2] != keys[3]  # 3x3 and 1x1 in the same bin stay apart
    assert depth_bins([9, 9], 4) == [(0, 9), (2, 9)]
    with pytest.raises(InvalidParameterError):
        depth_bins([9], 0)
