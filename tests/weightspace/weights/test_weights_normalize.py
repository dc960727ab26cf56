"""Tests of weightspace.weights.normalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.weights import PARAMETER, LayerNormalizer, ParameterSpec


def cnn_spec() -> ParameterSpec:
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)
    )
    return ParameterSpec.from_module(module)


def zoo_matrix(spec: ParameterSpec, n: int, dtype=torch.float32) -> torch.Tensor:
    """Layers on very different scales and offsets."""
    g = torch.Generator().manual_seed(0)
    matrix = torch.empty(n, spec.numel, dtype=torch.float64)
    for i, layer in enumerate(spec.layers):
        sl = spec.layer_slices[layer]
        scale, shift = 10.0 ** (i - 2), 3.0 * i - 1.0
        block = torch.randn(n, sl.stop - sl.start, generator=g, dtype=torch.float64)
        matrix[:, sl] = block * scale + shift
    return matrix.to(dtype)


@pytest.mark.parametrize("mode", ["layer", "element"])
def test_round_trip_float32_to_round_off(mode) -> None:
    spec = cnn_spec()
    x = zoo_matrix(spec, 20)
    norm = LayerNormalizer.fit(x, spec, mode=mode)
    y = norm.apply(x)
    assert y.dtype == torch.float32
    back = norm.invert(y)
    assert back.dtype == torch.float32
    # invert(apply(x)) is exact up to float32 rounding of the normalized values: the
    # error is at most a couple of ulps of |x - mean|, itself of the order of |x|.
    ulp = torch.finfo(torch.float32).eps
    bound = 4 * ulp * (x.abs() + norm.mean.abs().max().float())
    assert torch.all((back - x).abs() <= bound)


def test_round_trip_float64_is_tighter() -> None:
    spec = cnn_spec()
    x = zoo_matrix(spec, 8, torch.float64)
    norm = LayerNormalizer.fit(x, spec)
    torch.testing.assert_close(norm.invert(norm.apply(x)), x, rtol=1e-13, atol=1e-13)


def test_layer_mode_standardizes_every_layer() -> None:
    spec = cnn_spec()
    x = zoo_matrix(spec, 30)
    norm = LayerNormalizer.fit(x, spec)
    assert norm.mean.shape == (len(spec.layers),)
    assert norm.mean.dtype == torch.float64
    y = norm.apply(x).double()
    for layer in spec.layers:
        block = y[:, spec.layer_slices[layer]]
        assert abs(float(block.mean())) < 1e-5
        assert abs(float(block.std(correction=0)) - 1.0) < 1e-5
    # One statistic per layer, over all models and all elements of the layer.
    sl = spec.layer_slices[spec.layers[2]]
    assert torch.allclose(norm.mean[2], x[:, sl].double().mean())


def test_element_mode_standardizes_every_column() -> None:
    spec = cnn_spec()
    x = zoo_matrix(spec, 30)
    norm = LayerNormalizer.fit(x, spec, mode="element")
    assert norm.mean.shape == (spec.numel,)
    y = norm.apply(x).double()
    zeros = torch.zeros(spec.numel, dtype=torch.float64)
    assert torch.allclose(y.mean(0), zeros, atol=1e-5)
    assert torch.allclose(y.std(0, correction=0), zeros + 1, atol=1e-5)


@pytest.mark.parametrize("mode", ["layer", "element"])
def test_degenerate_statistics_do_not_produce_nan(mode) -> None:
    spec = ParameterSpec.from_entries([("a.w", (3,), PARAMETER), ("b.w", (2,), PARAMETER)])
    single = torch.tensor([[1.0, 2.0, 3.0, 5.0, 5.0]])  # one model; layer b constant
    norm = LayerNormalizer.fit(single, spec, mode=mode)
    y = norm.apply(single)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(norm.invert(y), single, rtol=0, atol=1e-6)
    assert torch.equal(norm.invert(y)[0, 3:], single[0, 3:])  # centring only: exact
    if mode == "layer":
        assert norm.std[1] == 0 and norm.scale[1] == 1
        assert torch.equal(y[0, 3:], torch.zeros(2))
    else:
        assert torch.equal(norm.scale, torch.ones(5))  # every column has std 0
        assert torch.equal(y, torch.zeros(1, 5))


def test_state_dict_round_trip_through_safetensors(tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    spec = cnn_spec()
    x = zoo_matrix(spec, 6)
    for mode in ("layer", "element"):
        norm = LayerNormalizer.fit(x, spec, eps=1e-6, mode=mode)
        path = tmp_path / f"norm_{mode}.safetensors"
        state = norm.state_dict()
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        safetensors_torch.save_file(state, str(path))
        again = LayerNormalizer.from_state_dict(safetensors_torch.load_file(str(path)))
        assert again.mode == mode
        assert again.eps == 1e-6
        assert again.spec_fingerprint == spec.fingerprint
        assert again.layer_numel == norm.layer_numel
        assert torch.equal(again.mean, norm.mean) and torch.equal(again.std, norm.std)
        assert torch.equal(again.apply(x), norm.apply(x))
        again.check_spec(spec)


def test_errors() -> None:
    spec = cnn_spec()
    x = zoo_matrix(spec, 4)
    norm = LayerNormalizer.fit(x, spec)
    with pytest.raises(ShapeError, match=f"\\(N, {spec.numel}\\)"):
        norm.apply(x[:, :-1])
    with pytest.raises(ShapeError):
        LayerNormalizer.fit(x[0], spec)
    with pytest.raises(EmptyZooError):
        LayerNormalizer.fit(x[:0], spec)
    with pytest.raises(InvalidParameterError, match="mode"):
        LayerNormalizer.fit(x, spec, mode="global")
    bad = x.clone()
    bad[1, 5] = float("nan")
    with pytest.raises(NonFiniteWeightsError):
        LayerNormalizer.fit(bad, spec)
    other = ParameterSpec.from_module(nn.Linear(3, 2))
    with pytest.raises(CheckpointMismatchError, match="refit"):
        norm.check_spec(other)
    with pytest.raises(CheckpointMismatchError, match="lacks"):
        LayerNormalizer.from_state_dict({"mean": norm.mean})
