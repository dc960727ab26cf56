"""Linear CKA (CLAFusion §3.1, Eq. 2-3) against an independent NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.fusion import cka_cost_matrix, linear_cka


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Feature-space linear CKA with the explicit centring matrix H = I - 11ᵀ/t."""
    t = x.shape[0]
    h = np.eye(t) - np.ones((t, t)) / t
    xc, yc = h @ x.reshape(t, -1), h @ y.reshape(t, -1)
    num = np.linalg.norm(yc.T @ xc, "fro") ** 2
    den = np.linalg.norm(xc.T @ xc, "fro") * np.linalg.norm(yc.T @ yc, "fro")
    return float(num / den)


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape) * rng.uniform(0.1, 10.0) + rng.uniform(-5, 5)


def _orthogonal(rng: np.random.Generator, p: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    return q


@pytest.mark.parametrize(
    ("t", "p_a", "p_b"),
    [(50, 3, 7), (40, 1, 5), (6, 30, 50), (5, 100, 2), (20, 10, 10), (2, 3, 4)],
)
def test_matches_reference(t: int, p_a: int, p_b: int) -> None:
    rng = np.random.default_rng(t * 1000 + p_a * 10 + p_b)
    x, y = _rand(rng, t, p_a), _rand(rng, t, p_b)
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert got.dtype == torch.float64
    assert got.dim() == 0
    assert abs(got.item() - reference_cka(x, y)) < 1e-10


def test_trailing_dims_flattened_and_float32_input() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 4)), rng.standard_normal((8, 5))
    got = linear_cka(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    ref = reference_cka(x.astype(np.float32).astype(np.float64), y.astype(np.float32))
    assert got.dtype == torch.float64
    assert abs(got.item() - ref) < 1e-10


@pytest.mark.parametrize(("t", "p"), [(30, 6), (6, 30)])
def test_invariances(t: int, p: int) -> None:
    rng = np.random.default_rng(p)
    x, y = _rand(rng, t, p), _rand(rng, t, p + 1)
    base = linear_cka(torch.from_numpy(x), torch.from_numpy(y)).item()
    qx, qy = _orthogonal(rng, p), _orthogonal(rng, p + 1)
    variants = [
        (x @ qx, y),
        (x, y @ qy),
        (x @ qx, y @ qy),
        (3.7 * x, y),
        (x, 0.02 * y),
        (x + 11.0, y - 4.0),  # centring removes offsets
    ]
    for xv, yv in variants:
        got = linear_cka(torch.from_numpy(xv), torch.from_numpy(yv)).item()
        assert got == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize(("t", "p"), [(30, 4), (4, 30)])
def test_self_symmetric_and_bounded(t: int, p: int) -> None:
    rng = np.random.default_rng(t)
    x = torch.from_numpy(_rand(rng, t, p))
    y = torch.from_numpy(_rand(rng, t, 2 * p))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    xy, yx = linear_cka(x, y).item(), linear_cka(y, x).item()
    assert xy == pytest.approx(yx, abs=1e-12)
    for _ in range(20):
        a = torch.from_numpy(_rand(rng, t, p))
        b = torch.from_numpy(_rand(rng, t, 3))
        assert 0.0 <= linear_cka(a, b).item() <= 1.0


def test_constant_input_gives_zero_not_nan() -> None:
    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.standard_normal((7, 4)))
    for const in (torch.full((7, 3), 0.1, dtype=torch.float64), torch.zeros(7, 5)):
        assert linear_cka(const, y).item() == 0.0
        assert linear_cka(y, const).item() == 0.0
    assert linear_cka(torch.ones(7, 2), torch.ones(7, 2)).item() == 0.0
    assert linear_cka(torch.randn(1, 4), torch.randn(1, 3)).item() == 0.0  # one sample


def test_tiny_and_huge_scales() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 3))
    ref = reference_cka(x, y)
    for s in (1e-200, 1e200):
        got = linear_cka(torch.from_numpy(x * s), torch.from_numpy(y / s)).item()
        assert got == pytest.approx(ref, abs=1e-10)


def test_mismatched_samples_raise_shape_error() -> None:
    with pytest.raises(ShapeError, match=r"\(5, 3\).*\(6, 3\)"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ShapeError, match="at least one sample"):
        linear_cka(torch.tensor(1.0), torch.randn(1, 3))


def test_non_finite_raises_invalid_parameter() -> None:
    x = torch.randn(5, 3)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(InvalidParameterError, match=r"^x contains NaN"):
        linear_cka(bad, x)
    bad[2, 1] = float("inf")
    with pytest.raises(InvalidParameterError, match=r"^y contains NaN or infinity.*\(2, 1\)"):
        linear_cka(x, bad)


def test_cost_matrix_matches_pairwise_cka() -> None:
    rng = np.random.default_rng(3)
    t = 12
    reps_a = [torch.from_numpy(_rand(rng, t, p)) for p in (3, 20, 5)]
    reps_a.append(torch.full((t, 4), 2.0, dtype=torch.float64))  # constant layer
    reps_b = [torch.from_numpy(_rand(rng, t, p)).float() for p in (7, 2)]
    reps_b.append(torch.from_numpy(_rand(rng, t, 2, 3)))  # trailing dims
    cost = cka_cost_matrix(reps_a, reps_b)
    assert cost.shape == (4, 3)
    assert cost.dtype == torch.float64
    for i, a in enumerate(reps_a):
        for j, b in enumerate(reps_b):
            expected = 1.0 - linear_cka(a, b).item()
            assert cost[i, j].item() == pytest.approx(expected, abs=1e-12)
    assert torch.all(cost[3] == 1.0)
    self_cost = cka_cost_matrix(reps_a[:3], reps_a[:3])
    assert torch.allclose(torch.diagonal(self_cost), torch.zeros(3, dtype=torch.float64))


def test_cost_matrix_errors_and_empty() -> None:
    with pytest.raises(ShapeError, match=r"reps_a\[0\].*reps_b\[1\]"):
        cka_cost_matrix([torch.randn(5, 2)], [torch.randn(5, 2), torch.randn(4, 2)])
    with pytest.raises(InvalidParameterError, match=r"reps_b\[0\]"):
        cka_cost_matrix([torch.randn(5, 2)], [torch.full((5, 2), float("nan"))])
    assert cka_cost_matrix([torch.randn(5, 2)], []).shape == (1, 0)
