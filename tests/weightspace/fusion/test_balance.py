"""CLAFusion layer balancing (§3.2): identity layers, ReLU-mask estimates, merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import InvalidParameterError, ShapeError, UnsupportedLayerError
from weightspace.fusion.balance import add_identity_layer, balance_by_adding
from weightspace.fusion.merge import balance_by_merging, merge_hidden_layer, relu_mask_estimate
from weightspace.fusion.structure import describe
from weightspace.nets.mlp import build_mlp
from weightspace.nets.resnet import ResNet
from weightspace.nets.vgg import VGG

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (and, for BatchNorm, random affine parameters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def _warm_bn(model: nn.Module, shape: tuple[int, ...], seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm running statistics from a few training-mode forwards."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((8, *shape), generator=gen) * 2 + 0.5)
    return model.eval()


def _inputs(shape: tuple[int, ...], n: int = 16, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)) * 2


def _assert_same_function(a: nn.Module, b: nn.Module, x: torch.Tensor, exact: bool) -> None:
    a.eval()
    _assert_outputs(b, x, _outputs(a, x), exact)


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _assert_outputs(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, exact: bool) -> None:
    model.eval()
    y = _outputs(model, x)
    if exact:
        assert torch.equal(y, ref)
    else:
        assert (y - ref).abs().max().item() <= 1e-6


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# --------------------------------------------------------------------------------------
# add_identity_layer
# --------------------------------------------------------------------------------------


def test_identity_layers_preserve_mlp_after_every_hidden_layer():
    model = _randomize(build_mlp((1, 8, 8), 10, hidden=[16, 8])).eval()
    before = _state(model)
    x = _inputs((1, 8, 8))
    for after in describe(model).align_groups[0].units:
        out = add_identity_layer(model, after)
        assert isinstance(out, nn.Sequential)
        assert describe(out).depths == (3,)
        _assert_same_function(model, out, x, exact=True)
    assert _unchanged(model, before)
    widths = [m.out_features for m in add_identity_layer(model, "1") if isinstance(m, nn.Linear)]
    assert widths == [16, 16, 8, 10]


def test_identity_layer_in_plain_user_sequential_and_without_bias():
    model = _randomize(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))
    out = add_identity_layer(model, "0")
    assert [type(m).__name__ for m in out] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert torch.equal(out[2].weight, torch.eye(7)) and torch.equal(out[2].bias, torch.zeros(7))
    _assert_same_function(model, out, _inputs((5,)), exact=True)

    nobias = _randomize(build_mlp((4,), 2, hidden=[6], bias=False))
    out = add_identity_layer(nobias, "1")
    assert out[3].bias is None
    _assert_same_function(nobias, out, _inputs((4,)), exact=True)


def test_identity_layer_keeps_dtype():
    model = _randomize(build_mlp((4,), 2, hidden=[6])).double()
    out = add_identity_layer(model, "1")
    assert all(p.dtype == torch.float64 for p in out.parameters())
    _assert_same_function(model, out, _inputs((4,)).double(), exact=True)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_identity_layers_preserve_vgg_2d(norm):
    shape = (1, 8, 8)
    model = _warm_bn(_randomize(VGG(shape, 10, stages=[[4], [6, 6]], hidden=[5], norm=norm)), shape)
    before = _state(model)
    groups = describe(model).align_groups
    assert describe(model).depths == (1, 2, 1)
    x = _inputs(shape)
    afters = [*groups[0].units, *groups[1].units, "classifier.0", *groups[2].units]
    ref = _outputs(model, x)
    for after in afters:
        out = add_identity_layer(model, after)
        assert sum(describe(out).depths) == 5
        _assert_outputs(out, x, ref, exact=norm == "none")
        assert not any(m.training for m in out.modules())
    assert _unchanged(model, before)
    # The new conv sits before the first pooling, in the first group.
    out = add_identity_layer(model, "features.0")
    assert describe(out).depths == (2, 2, 1)
    new_conv = out.features[3 if norm == "batch" else 2]
    assert torch.count_nonzero(new_conv.weight) == 4
    assert new_conv.weight[1, 1, 1, 1] == 1.0
    if norm == "batch":
        bn = out.features[4]
        assert torch.equal(torch.sqrt(bn.running_var + bn.eps), torch.ones(4))
        assert bn.num_batches_tracked.item() == 0
    # "classifier.0" adds the first hidden head layer, of the head's input width.
    head = add_identity_layer(model, "classifier.0").classifier
    assert isinstance(head[1], nn.Linear) and head[1].in_features == head[1].out_features == 6


def test_identity_layers_preserve_vgg_1d():
    shape = (1, 40)
    model = _randomize(VGG(shape, 10, stages=[[4], [6]]))
    x = _inputs(shape)
    for after in ["features.0", "features.3", "classifier.0"]:
        out = add_identity_layer(model, after)
        _assert_same_function(model, out, x, exact=True)
    assert describe(add_identity_layer(model, "classifier.0")).depths == (1, 1, 1)


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_zero_blocks_preserve_resnet(shape, norm):
    model = ResNet(shape, 10, stem_channels=4, stages=[[4, 1], [6, 2]], norm=norm)
    model = _warm_bn(_randomize(model), shape)
    before = _state(model)
    x = _inputs(shape)
    ref = _outputs(model, x)
    assert describe(model).depths == (1, 2)
    for after, depths in [("layers.0", (2, 2)), ("layers.1", (1, 3)), ("layers.2", (1, 3))]:
        out = add_identity_layer(model, after)
        assert describe(out).depths == depths
        _assert_outputs(out, x, ref, exact=True)
    assert _unchanged(model, before)


def test_add_identity_layer_rejects_non_units():
    mlp = build_mlp((4,), 2, hidden=[6])
    with pytest.raises(InvalidParameterError, match=r"'3'.*valid unit paths are \['1'\]"):
        add_identity_layer(mlp, "3")
    vgg = VGG((1, 8, 8), 10, stages=[[4]])
    with pytest.raises(InvalidParameterError, match=r"features.1"):
        add_identity_layer(vgg, "features.1")
    resnet = ResNet((1, 8, 8), 10, stem_channels=4, stages=[[4, 1]])
    with pytest.raises(InvalidParameterError, match=r"'stem.0'.*layers.0"):
        add_identity_layer(resnet, "stem.0")
    with pytest.raises(UnsupportedLayerError):
        add_identity_layer(nn.Conv2d(1, 1, 3), "0")


# --------------------------------------------------------------------------------------
# balance_by_adding
# --------------------------------------------------------------------------------------


def test_balance_by_adding_figure_3a():
    # Model B with hidden widths 3, 2, 1 aligned to a 4-hidden-layer model A by [0, 2, 3].
    model = _randomize(build_mlp((2,), 2, hidden=[3, 2, 1]))
    out = balance_by_adding(model, [[0, 2, 3]], [4])
    assert describe(out).depths == (4,)
    widths = [m.out_features for m in out if isinstance(m, nn.Linear)]
    assert widths == [3, 3, 2, 1, 2]
    assert torch.equal(out[3].weight, torch.eye(3))
    _assert_same_function(model, out, _inputs((2,)), exact=True)


def test_balance_by_adding_mlp_gaps_and_tail():
    model = _randomize(build_mlp((1, 8, 8), 10, hidden=[16, 8]))
    out = balance_by_adding(model, [[0, 3]], [6])
    assert describe(out).depths == (6,)
    widths = [m.out_features for m in out if isinstance(m, nn.Linear)]
    assert widths == [16, 16, 16, 8, 8, 8, 10]
    _assert_same_function(model, out, _inputs((1, 8, 8)), exact=True)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_balance_by_adding_vgg(norm):
    shape = (1, 8, 8)
    model = _warm_bn(_randomize(VGG(shape, 10, stages=[[4], [6, 6]], norm=norm)), shape)
    assert describe(model).depths == (1, 2, 0)
    out = balance_by_adding(model, [[0], [0, 2], []], [3, 4, 2])
    assert describe(out).depths == (3, 4, 2)
    _assert_same_function(model, out, _inputs(shape), exact=norm == "none")


def test_balance_by_adding_resnet():
    shape = (1, 40)
    model = ResNet(shape, 10, stem_channels=4, stages=[[4, 2], [6, 1]], norm="batch")
    model = _warm_bn(_randomize(model), shape)
    out = balance_by_adding(model, [[0, 2], [0]], [4, 3])
    assert describe(out).depths == (4, 3)
    _assert_same_function(model, out, _inputs(shape), exact=True)


def test_balance_by_adding_errors():
    mlp = build_mlp((4,), 2, hidden=[6, 5])
    with pytest.raises(InvalidParameterError, match=r"mappings\[0\]\[0\] must be 0"):
        balance_by_adding(mlp, [[1, 2]], [3])
    with pytest.raises(InvalidParameterError, match="1 alignment groups"):
        balance_by_adding(mlp, [[0, 1], [0]], [2, 1])
    with pytest.raises(InvalidParameterError, match="strictly increasing"):
        balance_by_adding(mlp, [[0, 0]], [3])
    with pytest.raises(InvalidParameterError, match="smaller than"):
        balance_by_adding(mlp, [[0, 1]], [1])
    with pytest.raises(InvalidParameterError, match="must lie in"):
        balance_by_adding(mlp, [[0, 3]], [3])
    with pytest.raises(InvalidParameterError, match="has 1 entries"):
        balance_by_adding(mlp, [[0]], [3])
    linear = build_mlp((4,), 2, hidden=[])
    with pytest.raises(InvalidParameterError, match="no units"):
        balance_by_adding(linear, [[]], [1])


# --------------------------------------------------------------------------------------
# ReLU mask estimates and merging
# --------------------------------------------------------------------------------------


def test_relu_mask_estimate_hand_case():
    z = torch.tensor([[1.0, -2.0, 0.0], [-3.0, 1.0, -1.0], [1.0, 1.0, -1.0]])
    # column sums -1, 0, -2; positives 2, 2, 0 of 3; non-negatives 2, 2, 1 of 3.
    assert torch.equal(relu_mask_estimate(z, "sign_of_sum"), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(relu_mask_estimate(z, "majority"), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(relu_mask_estimate(z, "average"), torch.tensor([2 / 3, 2 / 3, 1 / 3]))
    # Spatial positions count as samples: (t, p, L) -> (p,).
    conv = z[:, :, None].expand(3, 3, 4)
    assert torch.equal(relu_mask_estimate(conv, "majority"), torch.tensor([1.0, 1.0, 0.0]))
    # Majority with an even count: "at least t/2" positive.
    assert torch.equal(relu_mask_estimate(torch.tensor([[1.0], [-1.0]]), "majority"), torch.ones(1))


def test_relu_mask_estimate_errors():
    with pytest.raises(InvalidParameterError, match=r"sign_of_sum.*majority.*average"):
        relu_mask_estimate(torch.zeros(2, 3), "median")
    with pytest.raises(ShapeError, match=r"\(t, p\)"):
        relu_mask_estimate(torch.zeros(3), "average")


def _positive_mlp(hidden: list[int], seed: int = 0) -> nn.Sequential:
    """An MLP whose hidden pre-activations are all positive on inputs in [0, 1]."""
    model = _randomize(build_mlp((4,), 3, hidden=hidden), seed)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.abs_()
                m.bias.abs_().add_(1.0)
    return model


def _hidden_preacts(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    out, h = [], x
    with torch.no_grad():
        for name, m in model.named_children():
            h = m(h)
            if name in describe(model).align_groups[0].units:
                out.append(h.clone())
    return out


@pytest.mark.parametrize("estimate", ["sign_of_sum", "majority", "average"])
def test_merge_is_exact_when_removed_layer_is_active(estimate):
    model = _positive_mlp([6, 5])
    x = torch.rand(64, 4, generator=torch.Generator().manual_seed(3))
    z = _hidden_preacts(model, x)
    assert all((p > 0).all() for p in z)
    before = _state(model)
    out = merge_hidden_layer(model, "1", z[0], estimate)
    assert [type(m).__name__ for m in out] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert out[1].weight.shape == (5, 4)
    with torch.no_grad():
        assert torch.allclose(out(x), model(x), atol=1e-5, rtol=0)
    assert _unchanged(model, before)


def test_merge_uses_the_mask_estimate():
    model = _randomize(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    z = torch.tensor([[1.0, -1.0, 2.0, -3.0]])
    out = merge_hidden_layer(model, "0", z)
    d = torch.tensor([1.0, 0.0, 1.0, 0.0])
    w1, b1, w2, b2 = model[0].weight, model[0].bias, model[2].weight, model[2].bias
    assert len(out) == 1
    assert torch.allclose(out[0].weight, w2 @ torch.diag(d) @ w1, atol=1e-6)
    assert torch.allclose(out[0].bias, w2 @ (d * b1) + b2, atol=1e-6)


def test_balance_by_merging_positive_chain():
    model = _positive_mlp([6, 5, 4, 3], seed=1)
    x = torch.rand(64, 4, generator=torch.Generator().manual_seed(4))
    z = _hidden_preacts(model, x)
    out = balance_by_merging(model, [0, 3], z)
    assert describe(out).depths == (2,)
    widths = [m.out_features for m in out if isinstance(m, nn.Linear)]
    assert widths == [6, 3, 3]
    with torch.no_grad():
        assert torch.allclose(out(x), model(x), atol=1e-4 * model(x).abs().max().item(), rtol=0)
    # Keeping every layer is the identity transformation.
    same = balance_by_merging(model, [0, 1, 2, 3], z)
    assert describe(same).depths == (4,)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def test_merging_errors():
    vgg = VGG((1, 8, 8), 10, stages=[[4]], hidden=[5])
    with pytest.raises(UnsupportedLayerError, match=r"MLPs only.*'add'"):
        merge_hidden_layer(vgg, "classifier.1", torch.zeros(2, 5))
    resnet = ResNet((1, 8, 8), 10, stem_channels=4, stages=[[4, 1]])
    with pytest.raises(UnsupportedLayerError, match="MLPs only"):
        balance_by_merging(resnet, [0], [torch.zeros(2, 4)])
    mlp = build_mlp((4,), 2, hidden=[6, 5])
    with pytest.raises(ShapeError, match=r"\(2, 5\).*out_features=6"):
        merge_hidden_layer(mlp, "1", torch.zeros(2, 5))
    with pytest.raises(InvalidParameterError, match="output layer cannot be merged"):
        merge_hidden_layer(mlp, "5", torch.zeros(2, 2))
    with pytest.raises(InvalidParameterError, match="sign_of_sum"):
        merge_hidden_layer(mlp, "1", torch.zeros(2, 6), estimate="vote")
    with pytest.raises(InvalidParameterError, match=r"1 pre-activation tensors.*2 hidden"):
        balance_by_merging(mlp, [0], [torch.zeros(2, 6)])
    with pytest.raises(InvalidParameterError, match="strictly increasing"):
        balance_by_merging(mlp, [1, 0], [torch.zeros(2, 6), torch.zeros(2, 5)])
