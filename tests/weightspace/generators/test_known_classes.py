"""The known-class test of class-wise D2NWG: distances, calibration, matching."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.known_classes import (
    fit_known_classes,
    known_tasks,
    match_known,
    metric_distances,
)


def test_metric_distances_by_hand():
    means = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])  # (1, 2, 2)
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 2.0]])
    metric = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    # (1,2)-(0,0): 2*1 + 0.5*4 = 4; -(1,0): 0 + 0.5*4 = 2; -(3,2): 2*4 + 0 = 8
    # (0,0)-(0,0): 0; -(1,0): 2; -(3,2): 2*9 + 0.5*4 = 20
    want = torch.tensor([[[4.0, 2.0, 8.0], [0.0, 2.0, 20.0]]])
    torch.testing.assert_close(metric_distances(means, centres, metric), want)
    with pytest.raises(ShapeError, match="centres"):
        metric_distances(means, centres[:, :1], metric)


def _brute_force(dist: torch.Tensor, tau: float) -> bool:
    """Some injective class -> known-class map keeps every distance within tau."""
    k, p = dist.shape
    return any(
        all(float(dist[i, j]) <= tau for i, j in enumerate(perm))
        for perm in itertools.permutations(range(p), k)
    )


def test_known_tasks_is_a_perfect_matching_within_tau_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 2, generator=gen) * 2
    metric = torch.eye(2)
    means = torch.randn(300, 3, 2, generator=gen) * 2
    dist = metric_distances(means, centres, metric)
    for tau in (0.5, 2.0, 6.0):
        got = known_tasks(means, centres, metric, tau)
        want = torch.tensor([_brute_force(d, tau) for d in dist])
        assert torch.equal(got, want)
        assert 0 < int(want.sum()) < len(want) or tau != 2.0  # both outcomes occur
    # two classes near one known class only: not a new combination of known classes
    twin = torch.stack([centres[0], centres[0] + 0.01, centres[1]])[None]
    near = metric_distances(twin, centres, metric) <= 0.1
    assert near[0, :2, 0].all() and int(near[0].sum()) == 3  # each near one centre
    assert not bool(known_tasks(twin, centres, metric, 0.1)[0])
    assert bool(known_tasks(centres[[4, 0, 2]][None], centres, metric, 1e-6)[0])
    # more classes than known classes: never known
    assert not bool(known_tasks(means[:1], centres[:2], metric, 1e9)[0])


def _brute_force_match(dist: torch.Tensor, tau: float) -> tuple[float, tuple[int, ...]] | None:
    """The least total distance over injective maps with every pair within tau."""
    k, p = dist.shape
    best = None
    for perm in itertools.permutations(range(p), k):
        if all(float(dist[i, j]) <= tau for i, j in enumerate(perm)):
            cost = sum(float(dist[i, j]) for i, j in enumerate(perm))
            if best is None or cost < best[0]:
                best = (cost, perm)
    return best


def test_match_known_is_the_least_distance_map_within_tau_against_brute_force():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(6, 3, generator=gen) * 2
    metric = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 0.5]])
    means = torch.randn(200, 3, 3, generator=gen) * 2
    dist = metric_distances(means, centres, metric)
    n_known = 0
    for tau in (1.0, 4.0, 1e9):
        known, match = match_known(means, centres, metric, tau)
        assert torch.equal(known, known_tasks(means, centres, metric, tau))
        for d, ok, m in zip(dist, known, match, strict=True):
            want = _brute_force_match(d, tau)
            assert bool(ok) == (want is not None)
            if want is None:
                assert torch.equal(m, torch.full((3,), -1))
                continue
            n_known += 1
            got_cost = float(d[torch.arange(3), m].sum())
            assert got_cost == pytest.approx(want[0], rel=1e-6, abs=1e-6)
            assert len(set(m.tolist())) == 3 and bool((d[torch.arange(3), m] <= tau).all())
    assert 0 < n_known < 600  # both outcomes occur
    # the nearest centre is not always the answer: two classes nearest one centre
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    means2 = torch.tensor([[[0.2, 0.0], [0.9, 0.0]]])  # both nearest centre 0
    known2, match2 = match_known(means2, c, torch.eye(2), 10.0)
    assert bool(known2[0]) and match2[0].tolist() == [0, 1]  # 0.04 + 4.41 < 0.81 + 7.84


def test_fit_known_classes_calibrates_on_the_known_classes():
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(200)
    feats = centres[labels] + torch.randn(600, 2, generator=gen)
    metric = torch.eye(2)
    got, tau = fit_known_classes(feats, labels, metric, shots=5, quantile=0.9, seed=0)
    torch.testing.assert_close(got, torch.stack([feats[labels == c].mean(0) for c in range(3)]))
    # the mean of 5 unit-variance samples: 5 * D ~ chi2(2), whose 0.9 quantile is 4.61
    assert tau == pytest.approx(4.61 / 5, rel=0.2)
    # fresh known-class support means pass at about the quantile's rate; a far class fails
    pick = torch.randint(200, (400, 5), generator=gen)
    means = torch.stack([feats[labels == c][pick].mean(1) for c in range(3)], 1)  # (400, 3, 2)
    rate = float(
        (metric_distances(means, got, metric).diagonal(dim1=1, dim2=2) <= tau).float().mean()
    )
    assert 0.8 < rate < 0.97
    far = torch.tensor([[[30.0, 30.0], [10.0, 0.0], [0.0, 0.0]]])
    assert not bool(known_tasks(far, got, metric, tau)[0])
    assert bool(known_tasks(got[[2, 0, 1]][None], got, metric, tau)[0])
    again, tau2 = fit_known_classes(feats, labels, metric, shots=5, quantile=0.9, seed=0)
    assert tau2 == tau and torch.equal(again, got)  # seeded
    with pytest.raises(InvalidParameterError, match="quantile"):
        fit_known_classes(feats, labels, metric, shots=5, quantile=1.0, seed=0)
    # a task of 3 known classes passes at the task-level rate: per-class level 0.9^(1/3)
    _, tau3 = fit_known_classes(feats, labels, metric, shots=5, quantile=0.9, seed=0, way=3)
    q3 = 0.9 ** (1 / 3)  # 0.9655; chi2(2) quantile -2 ln(1 - q3) = 6.73
    assert tau3 == pytest.approx(-2 * math.log(1 - q3) / 5, rel=0.2) and tau3 > tau
    tasks = known_tasks(means, got, metric, tau3)  # fresh (400, 3) known tasks
    assert 0.85 < float(tasks.float().mean()) < 0.97
    assert float(known_tasks(means, got, metric, tau).float().mean()) < 0.85  # ~0.9^3
    with pytest.raises(InvalidParameterError, match="way"):
        fit_known_classes(feats, labels, metric, shots=5, quantile=0.9, seed=0, way=0)
