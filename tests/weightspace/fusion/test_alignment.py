"""Cross-layer alignment (CLAFusion §3.1, Definition 1, Algorithm 1) vs brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from weightspace.errors import InvalidParameterError
from weightspace.fusion import cross_layer_alignment
from weightspace.fusion.alignment import (
    alignment_cost,
    brute_force_alignment,
    cost_from_widths,
)


def _assert_valid(mapping: list[int], m: int, n: int) -> None:
    assert len(mapping) == n
    assert all(isinstance(i, int) for i in mapping)
    assert mapping[0] == 0
    if n >= 2:
        assert mapping[-1] == m - 1
    assert all(a < b for a, b in itertools.pairwise(mapping))
    assert all(0 <= i < m for i in mapping)


def _all_optima(cost: np.ndarray) -> list[list[int]]:
    """Every optimal mapping, enumerated independently of the library (integer costs)."""
    m, n = cost.shape
    if n == 1:
        return [[0]]
    maps = [[0, *mid, m - 1] for mid in itertools.combinations(range(1, m - 1), n - 2)]
    totals = [sum(cost[i, j] for j, i in enumerate(a)) for a in maps]
    return [a for a, s in zip(maps, totals, strict=True) if s == min(totals)]


def _random_cases(seed: int, count: int, integer: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        m = int(rng.integers(1, 9))
        n = int(rng.integers(1, m + 1))
        if integer:
            cases.append(rng.integers(0, 3, size=(m, n)).astype(np.float64))
        else:
            cases.append(rng.uniform(-1.0, 1.0, size=(m, n)))
    return cases


def test_dp_matches_brute_force_on_random_float_costs() -> None:
    for cost in _random_cases(seed=0, count=300, integer=False):
        m, n = cost.shape
        got = cross_layer_alignment(cost)
        _assert_valid(got, m, n)
        best = alignment_cost(cost, brute_force_alignment(cost))
        assert alignment_cost(cost, got) == pytest.approx(best, abs=1e-12)


def test_dp_matches_brute_force_with_ties() -> None:
    for cost in _random_cases(seed=1, count=300, integer=True):
        m, n = cost.shape
        got = cross_layer_alignment(cost)
        _assert_valid(got, m, n)
        optima = _all_optima(cost)
        assert got in optima
        # Documented tie-break: smallest a[n-2], then a[n-3], ... among the optima.
        assert got == min(optima, key=lambda a: a[::-1])
        assert brute_force_alignment(cost) == got


def test_paper_toy_example_figure_2() -> None:
    cost = cost_from_widths([5, 4, 3, 1], [3, 2, 1])
    assert cost.shape == (4, 3)
    assert cost[0, 0] == 4.0 and cost[2, 1] == 1.0 and cost[3, 2] == 0.0
    assert cross_layer_alignment(cost) == [0, 2, 3]  # a(1)=1, a(2)=3, a(3)=4 in the paper
    assert alignment_cost(cost, [0, 2, 3]) == 5.0


def test_accepts_tensor_and_nested_list() -> None:
    cost = cost_from_widths([5, 4, 3, 1], [3, 2, 1])
    assert cross_layer_alignment(torch.from_numpy(cost).float()) == [0, 2, 3]
    assert cross_layer_alignment(cost.tolist()) == [0, 2, 3]


@pytest.mark.parametrize("m", [1, 2, 3, 7])
def test_square_gives_identity(m: int) -> None:
    rng = np.random.default_rng(m)
    assert cross_layer_alignment(rng.uniform(size=(m, m))) == list(range(m))


@pytest.mark.parametrize("m", [1, 2, 5])
def test_single_shallow_layer_maps_to_first(m: int) -> None:
    cost = np.zeros((m, 1))
    cost[0, 0] = 100.0  # the first-layer constraint wins even when it is expensive
    assert cross_layer_alignment(cost) == [0]


def test_two_shallow_layers_map_to_ends() -> None:
    assert cross_layer_alignment(np.ones((6, 2))) == [0, 5]


def test_larger_problem_runs_fast_and_is_valid() -> None:
    rng = np.random.default_rng(7)
    cost = rng.uniform(size=(200, 120))
    got = cross_layer_alignment(cost)
    _assert_valid(got, 200, 120)


@pytest.mark.parametrize(
    ("cost", "match"),
    [
        (np.zeros(3), r"2-D .*got 1-D"),
        (np.zeros((2, 2, 2)), r"2-D .*got 3-D"),
        (np.zeros((0, 0)), "at least one row and one column"),
        (np.zeros((3, 0)), "at least one row and one column"),
        (np.zeros((2, 3)), "deeper model's layers as rows; transpose it"),
        ([[1.0, 2.0], [3.0]], "numeric"),
        ("abc", "numeric"),
    ],
)
def test_invalid_cost_raises(cost: object, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        cross_layer_alignment(cost)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_cost_raises_with_index(bad: float) -> None:
    cost = np.zeros((4, 3))
    cost[2, 1] = bad
    cost[3, 2] = bad
    with pytest.raises(InvalidParameterError, match=r"non-finite.*first at index \(2, 1\)"):
        cross_layer_alignment(cost)


def test_alignment_cost_validates_mapping() -> None:
    cost = np.arange(12.0).reshape(4, 3)
    assert alignment_cost(cost, [0, 1, 3]) == 0.0 + 4.0 + 11.0
    with pytest.raises(InvalidParameterError, match="one row index per column"):
        alignment_cost(cost, [0, 3])
    with pytest.raises(InvalidParameterError, match=r"mapping\[2\] = 4"):
        alignment_cost(cost, [0, 1, 4])


def test_cost_from_widths_rejects_non_1d() -> None:
    with pytest.raises(InvalidParameterError, match="1-D"):
        cost_from_widths([[1, 2]], [1])
