"""SetDatasetEncoder: symmetries, masks, class order, errors, config round trip."""

from __future__ import annotations

import pytest
import torch

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.dataset_encoder import DatasetEncoderConfig, SetDatasetEncoder

D = 6


def make(pooling: str = "ordered", max_classes: int = 5) -> SetDatasetEncoder:
    torch.manual_seed(0)
    cfg = DatasetEncoderConfig(
        feature_dim=D,
        dim=8,
        heads=2,
        n_inducing=3,
        depth=2,
        out_dim=4,
        class_pooling=pooling,
        max_classes=max_classes,
    )
    return SetDatasetEncoder(cfg).eval()


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_validation() -> None:
    cfg = DatasetEncoderConfig(feature_dim=512, class_pooling="invariant")
    assert DatasetEncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert DatasetEncoderConfig(feature_dim=3).class_pooling == "ordered"
    with pytest.raises(InvalidParameterError, match="class_pooling"):
        DatasetEncoderConfig(feature_dim=3, class_pooling="mean")
    with pytest.raises(InvalidParameterError, match="multiple of heads"):
        DatasetEncoderConfig(feature_dim=3, dim=10, heads=4)
    with pytest.raises(InvalidParameterError, match="unknown"):
        DatasetEncoderConfig.from_dict({"feature_dim": 3, "width": 2})


@pytest.mark.parametrize("pooling", ["ordered", "invariant"])
def test_shape_and_within_class_invariance(pooling: str) -> None:
    enc = make(pooling)
    x = torch.randn(2, 4, 5, D)
    out = enc(x)
    assert out.shape == (2, 4)
    shuffled = torch.stack([x[:, k, torch.randperm(5)] for k in range(4)], dim=1)
    close(enc(shuffled), out)
    # moving a sample to another class is not a within-class permutation
    moved = x.clone()
    moved[:, 0, 0], moved[:, 1, 0] = x[:, 1, 0], x[:, 0, 0]
    assert not torch.allclose(enc(moved), out, atol=1e-4)


def test_ordered_mode_is_sensitive_to_class_order() -> None:
    enc = make("ordered")
    x = torch.randn(2, 4, 3, D)
    swapped = x[:, [1, 0, 2, 3]]
    assert (enc(swapped) - enc(x)).abs().max() > 1e-3


def test_invariant_mode_ignores_class_order() -> None:
    enc = make("invariant")
    x = torch.randn(2, 4, 3, D)
    close(enc(x[:, torch.randperm(4)]), enc(x))


def test_variable_shots_via_mask_equal_unpadded_computation() -> None:
    enc = make("ordered")
    shots = [3, 1, 5]
    classes = [torch.randn(1, 1, s, D) for s in shots]
    x = 50 * torch.randn(1, 3, 5, D)  # garbage in the padded slots
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    for k, c in enumerate(classes):
        x[0, k, : shots[k]] = c[0, 0]
        mask[0, k, : shots[k]] = True
    per_class = torch.cat([enc.encode_classes(c) for c in classes], dim=1)  # (1, 3, dim)
    close(enc(x, mask), enc.pool_classes(per_class))
    assert not torch.allclose(enc(x), enc(x, mask), atol=1e-3)


@pytest.mark.parametrize("pooling", ["ordered", "invariant"])
def test_variable_class_counts_via_class_mask(pooling: str) -> None:
    enc = make(pooling)
    small = torch.randn(1, 2, 3, D)
    big = torch.randn(1, 4, 3, D)
    x = torch.cat([torch.cat([small, 99 * torch.randn(1, 2, 3, D)], dim=1), big])
    class_mask = torch.tensor([[True, True, False, False], [True] * 4])
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    mask[0, 2:] = False  # absent classes may have no samples at all
    out = enc(x, mask, class_mask)
    close(out[0], enc(small)[0])
    close(out[1], enc(big)[0])


def test_errors() -> None:
    enc = make(max_classes=3)
    with pytest.raises(InvalidParameterError, match="max_classes >= 4"):
        enc(torch.randn(1, 4, 2, D))
    with pytest.raises(ShapeError, match="feature_dim"):
        enc(torch.randn(1, 2, 2, D + 1))
    with pytest.raises(ShapeError, match=r"\(B, K, S, d\)"):
        enc(torch.randn(2, 2, D))
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    mask[0, 1] = False
    with pytest.raises(InvalidParameterError, match="class 1 of dataset 0"):
        enc(torch.randn(1, 2, 3, D), mask)
    with pytest.raises(ShapeError, match="mask"):
        enc(torch.randn(1, 2, 3, D), torch.ones(1, 2, 4, dtype=torch.bool))
    with pytest.raises(InvalidParameterError, match="no real class"):
        enc(torch.randn(1, 2, 3, D), None, torch.zeros(1, 2, dtype=torch.bool))


def test_cifar10_shaped_input_and_gradients() -> None:
    """The authors' example: (1, 10, 5, 512) CLIP features of CIFAR-10."""
    torch.manual_seed(0)
    enc = SetDatasetEncoder(
        DatasetEncoderConfig(feature_dim=512, dim=16, heads=2, n_inducing=4, out_dim=8)
    )
    out = enc(torch.randn(1, 10, 5, 512))
    assert out.shape == (1, 8)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
