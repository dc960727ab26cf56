"""BatchEnsemble: layers against hand computations, whole networks against their members."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightspace.ensembles.batchensemble import (
    BatchEnsemble,
    BEConv,
    BELinear,
    effective_weights,
    tile,
    untile,
)
from weightspace.errors import InvalidParameterError, ShapeError, UnsupportedLayerError
from weightspace.nets.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

M = 3
B = 4

MODELS = {
    "mlp": ("mlp", {"hidden": [16, 8]}, (1, 8, 8)),
    "vgg1d": ("vgg", {"stages": [[4], [8]]}, (1, 40)),
    "resnet": ("resnet", {}, (1, 8, 8)),
    "vgg2d_bn": ("vgg", {"stages": [[4], [8]], "norm": "batch"}, (1, 8, 8)),
}


def _model(key: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    name, config, shape = MODELS[key]
    torch.manual_seed(seed)
    model = build_model(name, config, shape, 10)
    # Non-trivial BatchNorm running statistics, so that copying them is checked.
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return model, shape


def _randomize_fast(be: BatchEnsemble, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in be.fast_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))


def _random_fast(layer: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.r.copy_(0.5 + torch.rand(layer.r.shape, generator=g))
        layer.s.copy_(0.5 + torch.rand(layer.s.shape, generator=g))


# --------------------------------------------------------------------------- tile / untile
def test_tile_puts_x_in_every_block_and_untile_inverts_it():
    x = torch.randn(B, 2, 5)
    t = tile(x, M)
    assert t.shape == (M * B, 2, 5)
    for i in range(M):
        assert torch.equal(t[i * B : (i + 1) * B], x)
    u = untile(t, M)
    assert u.shape == (M, B, 2, 5)
    assert all(torch.equal(u[i], x) for i in range(M))


def test_untile_rejects_a_batch_not_divisible_by_m():
    with pytest.raises(ShapeError, match=r"batch of 7 rows.*M=3.*tile\(x, M\)"):
        untile(torch.zeros(7, 2), 3)


# --------------------------------------------------------------------------- BELinear
def test_belinear_parameters_and_shapes():
    layer = nn.Linear(5, 3)
    be = BELinear(layer, M)
    params = dict(be.named_parameters())
    assert set(params) == {"weight", "bias", "r", "s"}
    assert params["r"].shape == (M, 5) and params["s"].shape == (M, 3)
    assert torch.equal(be.r, torch.ones(M, 5)) and torch.equal(be.s, torch.ones(M, 3))
    assert be.weight is layer.weight and be.bias is layer.bias
    no_bias = BELinear(nn.Linear(5, 3, bias=False), M)
    assert set(dict(no_bias.named_parameters())) == {"weight", "r", "s"}
    assert no_bias(torch.randn(M * B, 5)).shape == (M * B, 3)


def test_belinear_with_unit_fast_weights_is_the_plain_layer_exactly():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    be = BELinear(copy.deepcopy(layer), M)
    x = torch.randn(M * B, 5)
    assert torch.equal(be(x), layer(x))


@pytest.mark.parametrize("bias", [True, False])
def test_belinear_block_m_is_the_rank_one_scaled_layer(bias):
    torch.manual_seed(0)
    layer = nn.Linear(5, 3, bias=bias)
    be = BELinear(copy.deepcopy(layer), M)
    _random_fast(be)
    x = torch.randn(M * B, 5)
    y = untile(be(x), M)
    W, b = layer.weight.detach(), layer.bias
    for m in range(M):
        xm = x[m * B : (m + 1) * B]
        r, s = be.r[m].detach(), be.s[m].detach()
        w_m = W * torch.outer(s, r)
        b_m = None if b is None else b.detach() * s
        torch.testing.assert_close(y[m], F.linear(xm, w_m, b_m), atol=1e-6, rtol=0)
        by_hand = (xm * r) @ W.T
        if b is not None:
            by_hand = by_hand + b.detach()  # bias before the output scaling
        torch.testing.assert_close(y[m], by_hand * s, atol=1e-6, rtol=0)


def test_belinear_accepts_extra_middle_dimensions():
    torch.manual_seed(0)
    be = BELinear(nn.Linear(5, 3), 2)
    _random_fast(be)
    x = torch.randn(2 * B, 7, 5)
    y = be(x)
    for m in range(2):
        xm = x[m * B : (m + 1) * B]
        expected = ((xm * be.r[m]) @ be.weight.T + be.bias) * be.s[m]
        torch.testing.assert_close(y[m * B : (m + 1) * B], expected, atol=1e-6, rtol=0)


def test_belinear_rejects_a_batch_not_divisible_by_m():
    be = BELinear(nn.Linear(5, 3), 3)
    with pytest.raises(ShapeError, match=r"BELinear got a batch of 4 rows.*M=3.*tile"):
        be(torch.randn(4, 5))


# --------------------------------------------------------------------------- BEConv
CONVS = {
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), (3, 11), 1),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=1, padding=1), (3, 6, 5), 2),
    "conv2d_strided_nobias": (
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2, bias=False),
        (3, 7, 7),
        2,
    ),
}


@pytest.mark.parametrize("key", sorted(CONVS))
def test_beconv_with_unit_fast_weights_is_the_plain_layer_exactly(key):
    make, shape, _ = CONVS[key]
    torch.manual_seed(0)
    layer = make()
    be = BEConv(copy.deepcopy(layer), M)
    assert be.r.shape == (M, 3) and be.s.shape == (M, 4)
    x = torch.randn(M * B, *shape)
    assert torch.equal(be(x), layer(x))


@pytest.mark.parametrize("key", sorted(CONVS))
def test_beconv_block_m_is_the_rank_one_scaled_conv(key):
    make, shape, nd = CONVS[key]
    torch.manual_seed(0)
    layer = make()
    be = BEConv(copy.deepcopy(layer), M)
    _random_fast(be)
    x = torch.randn(M * B, *shape)
    y = untile(be(x), M)
    conv = F.conv1d if nd == 1 else F.conv2d
    args = (layer.stride, layer.padding, layer.dilation)
    W = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    spatial = (1,) * nd
    for m in range(M):
        xm = x[m * B : (m + 1) * B]
        r, s = be.r[m].detach(), be.s[m].detach()
        w_m = W * s.reshape(-1, 1, *spatial) * r.reshape(1, -1, *spatial)
        b_m = None if b is None else b * s
        torch.testing.assert_close(y[m], conv(xm, w_m, b_m, *args), atol=1e-6, rtol=0)
        by_hand = conv(xm * r.reshape(1, -1, *spatial), W, None, *args)
        if b is not None:
            by_hand = by_hand + b.reshape(1, -1, *spatial)
        torch.testing.assert_close(y[m], by_hand * s.reshape(1, -1, *spatial), atol=1e-6, rtol=0)


def test_beconv_rejects_grouped_and_non_zero_padded_convolutions():
    with pytest.raises(UnsupportedLayerError, match=r"groups=1.*got groups=3"):
        BEConv(nn.Conv2d(3, 6, 3, groups=3), 2)
    with pytest.raises(UnsupportedLayerError, match=r"padding_mode='zeros'.*'reflect'"):
        BEConv(nn.Conv1d(3, 6, 3, padding=1, padding_mode="reflect"), 2)


def test_beconv_rejects_a_batch_not_divisible_by_m():
    be = BEConv(nn.Conv2d(3, 4, 3), 2)
    with pytest.raises(ShapeError, match=r"BEConv got a batch of 5 rows.*M=2"):
        be(torch.randn(5, 3, 6, 6))


# --------------------------------------------------------------------------- BatchEnsemble
@pytest.mark.parametrize("key", sorted(MODELS))
def test_unit_fast_weights_give_the_plain_network_exactly(key):
    model, shape = _model(key)
    model.eval()
    be = BatchEnsemble(model, M).eval()
    x = torch.randn(B, *shape)
    with torch.no_grad():
        assert torch.equal(be(tile(x, M)), model(tile(x, M)))
        logits = be.member_logits(x)
        assert logits.shape == (M, B, 10)
        for i in range(M):
            torch.testing.assert_close(logits[i], model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("key", ["resnet", "vgg2d_bn"])
def test_batchnorm_is_shared_over_the_whole_tiled_batch_in_train_mode(key):
    model, shape = _model(key)
    model.train()
    be = BatchEnsemble(model, M).train()
    plain = copy.deepcopy(model)
    x = torch.randn(B, *shape)
    with torch.no_grad():
        assert torch.equal(be(tile(x, M)), plain(tile(x, M)))
    bn_be = [m for m in be.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bn_plain = [m for m in plain.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for a, b in zip(bn_be, bn_plain, strict=True):
        assert torch.equal(a.running_mean, b.running_mean)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_member_i_equals_block_i_of_the_ensemble(key):
    model, shape = _model(key)
    be = BatchEnsemble(model, M).eval()
    _randomize_fast(be)
    x = torch.randn(B, *shape)
    with torch.no_grad():
        logits = be.member_logits(x)
        outs = []
        for i in range(M):
            member = be.member(i)
            assert not any(isinstance(mod, BELinear | BEConv) for mod in member.modules())
            assert type(member) is type(model)
            assert member.state_dict().keys() == model.state_dict().keys()
            outs.append(member(x))
            torch.testing.assert_close(outs[i], logits[i], atol=1e-5, rtol=1e-5)
    assert (outs[0] - outs[1]).abs().max() > 1e-3  # the members really differ


def test_member_holds_the_scaled_weights_and_copies_batchnorm():
    model, _ = _model("vgg2d_bn")
    be = BatchEnsemble(model, M)
    _randomize_fast(be)
    member = be.member(2)
    conv = be.module.features[0]
    expected = conv.weight * (conv.s[2][:, None, None, None] * conv.r[2][None, :, None, None])
    torch.testing.assert_close(member.features[0].weight, expected, atol=1e-7, rtol=0)
    fc = be.module.classifier[1]
    torch.testing.assert_close(
        member.classifier[1].weight, fc.weight * torch.outer(fc.s[2], fc.r[2]), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(member.classifier[1].bias, fc.bias * fc.s[2], atol=1e-7, rtol=0)
    for key in ("running_mean", "running_var", "weight", "bias"):
        assert torch.equal(getattr(member.features[1], key), getattr(model.features[1], key))
    # The member is independent of the ensemble.
    assert all(p.grad_fn is None for p in member.parameters())
    with torch.no_grad():
        member.classifier[1].weight.zero_()
    assert fc.weight.abs().sum() > 0


def test_state_dict_keys_keep_the_original_names_plus_r_and_s():
    model, _ = _model("vgg1d")
    be = BatchEnsemble(model, M)
    keys = set(be.module.state_dict())
    assert set(model.state_dict()) <= keys
    assert {"features.0.r", "features.0.s", "classifier.1.r", "classifier.1.s"} <= keys
    assert keys - set(model.state_dict()) == {
        f"{layer}.{v}" for layer in ("features.0", "features.3", "classifier.1") for v in ("r", "s")
    }
    assert isinstance(be.module.features[0], BEConv)
    assert isinstance(be.module.classifier[1], BELinear)


def test_fast_and_slow_parameters_partition_the_parameters():
    model, _ = _model("vgg2d_bn")
    be = BatchEnsemble(model, M)
    fast, slow = be.fast_parameters(), be.slow_parameters()
    assert len(fast) == 2 * 3  # two convs and one linear layer
    assert {id(p) for p in fast}.isdisjoint(id(p) for p in slow)
    assert {id(p) for p in fast} | {id(p) for p in slow} == {id(p) for p in be.parameters()}
    assert all(p.shape[0] == M and p.ndim == 2 for p in fast)
    assert any(p is be.module.features[1].weight for p in slow)  # BN affine is slow


def test_the_original_module_is_left_untouched():
    model, _ = _model("mlp")
    before = copy.deepcopy(model.state_dict())
    be = BatchEnsemble(model, M)
    _randomize_fast(be)
    with torch.no_grad():
        for p in be.slow_parameters():
            p.add_(1.0)
    assert isinstance(model[1], nn.Linear) and not isinstance(model[1], BELinear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gradients_reach_fast_and_slow_weights():
    model, shape = _model("resnet")
    be = BatchEnsemble(model, 2).train()
    _randomize_fast(be)
    be.member_logits(torch.randn(B, *shape)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in be.fast_parameters())
    assert all(p.grad is not None for p in be.slow_parameters())


def test_m_equal_one_is_the_plain_network():
    model, shape = _model("resnet")
    be = BatchEnsemble(model, 1).eval()
    model.eval()
    x = torch.randn(B, *shape)
    with torch.no_grad():
        assert torch.equal(be.member_logits(x)[0], model(x))


def test_a_wrapped_linear_at_the_root_and_tied_layers_are_supported():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    root = BatchEnsemble(lin, 2)
    assert isinstance(root.module, BELinear)
    assert isinstance(root.member(1), nn.Linear)
    tied = BatchEnsemble(nn.Sequential(lin, nn.ReLU(), lin), 2)
    assert tied.module[0] is tied.module[2]
    assert len(tied.fast_parameters()) == 2
    member = tied.member(0)
    assert isinstance(member[0], nn.Linear) and member[0] is member[2]


def test_forward_rejects_a_batch_not_divisible_by_m():
    model, shape = _model("mlp")
    be = BatchEnsemble(model, 3)
    with pytest.raises(ShapeError, match=r"batch of 5 rows.*M=3.*tile\(x, M\)"):
        be(torch.randn(5, *shape))


@pytest.mark.parametrize("m", [0, -2, 1.5, True, "2", None])
def test_m_must_be_an_integer_at_least_one(m):
    model, _ = _model("mlp")
    with pytest.raises(InvalidParameterError, match="must be an integer >= 1"):
        BatchEnsemble(model, m)


def test_member_index_is_checked():
    be = BatchEnsemble(_model("mlp")[0], 2)
    for i in (2, -1, 0.0, True):
        with pytest.raises(InvalidParameterError, match=r"member index.*\[0, 2\)"):
            be.member(i)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.Sequential(nn.Flatten(), nn.Conv3d(1, 2, 3)), r"'1' of type Conv3d"),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))),
            r"'1\.0' \(Conv2d, groups=2",
        ),
        (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), r"'0' of type Embedding"),
        (nn.Sequential(nn.ConvTranspose2d(1, 2, 3)), r"'0' of type ConvTranspose2d"),
        (nn.Sequential(nn.LSTM(4, 4), nn.Linear(4, 2)), r"'0' of type LSTM"),
        (nn.Sequential(nn.Flatten(), nn.ReLU()), r"no nn\.Linear, nn\.Conv1d or nn\.Conv2d"),
    ],
)
def test_unsupported_layers_are_named(module, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        BatchEnsemble(module, 2)


def test_effective_weights_checks_shapes():
    w = torch.randn(4, 3, 2)
    with pytest.raises(ShapeError, match=r"scale must have shape \(out, in\) = \(4, 3\)"):
        effective_weights(w, None, torch.ones(3, 4), torch.ones(4))
    with pytest.raises(ShapeError, match=r"bias_scale must have shape \(4,\)"):
        effective_weights(w, torch.ones(4), torch.ones(4, 3), torch.ones(3))
