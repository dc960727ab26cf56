"""LatentBE merge: both averaging forms against hand computations and the members."""

import copy

import pytest
import torch
from torch import nn

from weightspace.ensembles.batchensemble import BatchEnsemble, BEConv, BELinear
from weightspace.ensembles.latentbe import MERGE_METHODS, merge, merge_layer_weights
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.nets.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

M = 3
B = 5

MODELS = {
    "mlp": ("mlp", {"hidden": [16, 8]}, (1, 8, 8)),
    "vgg1d": ("vgg", {"stages": [[4], [8]]}, (1, 40)),
    "resnet": ("resnet", {}, (1, 8, 8)),
    "vgg2d_bn": ("vgg", {"stages": [[4], [8]], "norm": "batch"}, (1, 8, 8)),
}


def _be(key: str, m: int = M, seed: int = 0) -> tuple[BatchEnsemble, tuple[int, ...]]:
    """A BatchEnsemble of a registry model with random fast weights and BN statistics."""
    name, config, shape = MODELS[key]
    torch.manual_seed(seed)
    model = build_model(name, config, shape, 10)
    be = BatchEnsemble(model, m)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in be.fast_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
        for mod in be.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return be.eval(), shape


def _be_layers(be: BatchEnsemble) -> list[nn.Module]:
    return [mod for mod in be.modules() if isinstance(mod, BELinear | BEConv)]


def _at_mean_fast_weights(be: BatchEnsemble) -> BatchEnsemble:
    """A copy of ``be`` whose every member has r = r̄ and s = s̄."""
    out = copy.deepcopy(be)
    with torch.no_grad():
        for layer in _be_layers(out):
            layer.r.copy_(layer.r.mean(0, keepdim=True).expand_as(layer.r))
            layer.s.copy_(layer.s.mean(0, keepdim=True).expand_as(layer.s))
    return out


def _eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- maths
@pytest.mark.parametrize("how", MERGE_METHODS)
@pytest.mark.parametrize("key", sorted(MODELS))
def test_identical_members_merge_to_that_member(key, how):
    be = _at_mean_fast_weights(_be(key)[0])  # all r_m equal, all s_m equal, random values
    x = torch.randn(B, *MODELS[key][2])
    merged = merge(be, how)
    with torch.no_grad():
        logits = be.member_logits(x)
        for i in range(M):
            torch.testing.assert_close(merged(x), logits[i], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_product_of_means_is_the_ensemble_at_the_mean_fast_weights(key):
    be, shape = _be(key)
    x = torch.randn(B, *shape)
    merged = merge(be, "product_of_means")
    with torch.no_grad():
        expected = _at_mean_fast_weights(be).member_logits(x)[0]
    torch.testing.assert_close(_eval(merged, x), expected, atol=1e-6, rtol=1e-5)


def test_product_of_means_layer_tensors_by_hand():
    be, _ = _be("vgg1d")
    merged = merge(be, "product_of_means")
    fc = be.module.classifier[1]
    r_bar, s_bar = fc.r.mean(0), fc.s.mean(0)
    torch.testing.assert_close(
        merged.classifier[1].weight, fc.weight * torch.outer(s_bar, r_bar), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(merged.classifier[1].bias, fc.bias * s_bar, atol=1e-7, rtol=0)
    assert (merged.classifier[1].bias - fc.bias).abs().max() > 1e-3  # the bias is scaled
    conv = be.module.features[0]
    expected = conv.weight * conv.s.mean(0)[:, None, None] * conv.r.mean(0)[None, :, None]
    torch.testing.assert_close(merged.features[0].weight, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(merged.features[0].bias, conv.bias * conv.s.mean(0))


@pytest.mark.parametrize("key", ["vgg1d", "resnet"])
def test_mean_of_products_averages_the_members_weights(key):
    be, _ = _be(key)
    merged = merge(be, "mean_of_products")
    members = [be.member(i) for i in range(M)]
    merged_params = dict(merged.named_parameters())
    n_checked = 0
    for name, layer in be.module.named_modules():
        if not isinstance(layer, BELinear | BEConv):
            continue
        for attr in ("weight", "bias"):
            key_ = f"{name}.{attr}"
            if key_ not in merged_params:
                continue
            mean = torch.stack([dict(m.named_parameters())[key_] for m in members]).mean(0)
            torch.testing.assert_close(merged_params[key_], mean, atol=1e-6, rtol=0)
            n_checked += 1
    assert n_checked >= 4


def test_the_two_forms_differ_when_the_members_differ():
    be, shape = _be("mlp")
    pom, mop = merge(be, "product_of_means"), merge(be, "mean_of_products")
    layer = be.module[1]
    w_pom = layer.weight * torch.outer(layer.s.mean(0), layer.r.mean(0))
    w_mop = layer.weight * (layer.s.T @ layer.r) / M
    assert (w_pom - w_mop).abs().max() > 1e-3
    torch.testing.assert_close(pom[1].weight, w_pom, atol=1e-7, rtol=0)
    torch.testing.assert_close(mop[1].weight, w_mop, atol=1e-7, rtol=0)
    torch.testing.assert_close(pom[1].bias, mop[1].bias, atol=0, rtol=0)  # both b ∘ s̄
    x = torch.randn(B, *shape)
    assert (_eval(pom, x) - _eval(mop, x)).abs().max() > 1e-4


def test_the_forms_agree_when_only_the_r_are_shared():
    be, shape = _be("vgg1d")
    with torch.no_grad():
        for layer in _be_layers(be):
            layer.r.copy_(layer.r[:1].expand_as(layer.r))  # s_m still differ
    x = torch.randn(B, *shape)
    torch.testing.assert_close(
        _eval(merge(be, "product_of_means"), x),
        _eval(merge(be, "mean_of_products"), x),
        atol=1e-6,
        rtol=1e-5,
    )


def test_merge_layer_weights_on_one_conv_layer():
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    r, s = torch.rand(M, 3) + 0.5, torch.rand(M, 4) + 0.5
    wm, bm = merge_layer_weights(w, b, r, s, "mean_of_products")
    members = [w * s[i][:, None, None, None] * r[i][None, :, None, None] for i in range(M)]
    torch.testing.assert_close(wm, torch.stack(members).mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(bm, b * s.mean(0), atol=1e-7, rtol=0)
    wp, bp = merge_layer_weights(w, None, r, s)
    assert bp is None
    expected = w * s.mean(0)[:, None, None, None] * r.mean(0)[None, :, None, None]
    torch.testing.assert_close(wp, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- state and modes
def test_batchnorm_running_statistics_are_copied_unchanged():
    be, _ = _be("resnet")
    merged = merge(be)
    be_bufs = dict(be.module.named_buffers())
    merged_bufs = dict(merged.named_buffers())
    assert be_bufs.keys() == merged_bufs.keys() and len(be_bufs) > 0
    for k, v in be_bufs.items():
        assert torch.equal(merged_bufs[k], v), k
    bn_weights = {k: v for k, v in be.module.named_parameters() if k.startswith("stem.1")}
    for k, v in bn_weights.items():
        assert torch.equal(dict(merged.named_parameters())[k], v)


def test_merge_returns_a_plain_network_in_eval_mode_and_leaves_the_ensemble_alone():
    be, _ = _be("vgg2d_bn")
    be.train()
    fast_before = [p.detach().clone() for p in be.fast_parameters()]
    merged = merge(be)
    assert not any(mod.training for mod in merged.modules())
    assert all(mod.training for mod in be.modules())
    assert not any(isinstance(mod, BELinear | BEConv) for mod in merged.modules())
    assert not any(name.endswith((".r", ".s")) for name in merged.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fast_before, be.fast_parameters(), strict=True))
    with torch.no_grad():
        merged.classifier[1].weight.zero_()
    assert be.module.classifier[1].weight.abs().sum() > 0


@pytest.mark.parametrize("how", MERGE_METHODS)
def test_merge_of_one_member_is_that_member(how):
    be, shape = _be("resnet", m=1)
    merged, member = merge(be, how), be.member(0).eval()
    for k, v in member.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[k], v, atol=1e-7, rtol=0)
    x = torch.randn(B, *shape)
    torch.testing.assert_close(_eval(merged, x), _eval(member, x), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- errors
def test_unknown_how_lists_the_choices():
    be, _ = _be("mlp")
    with pytest.raises(InvalidParameterError, match=r"how must be one of.*product_of_means"):
        merge(be, "mean")
    with pytest.raises(InvalidParameterError, match="mean_of_products"):
        merge_layer_weights(torch.ones(2, 2), None, torch.ones(1, 2), torch.ones(1, 2), "x")


def test_merge_needs_a_batchensemble():
    with pytest.raises(InvalidParameterError, match=r"merge takes a BatchEnsemble, got Linear"):
        merge(nn.Linear(3, 2))


def test_merge_layer_weights_checks_shapes():
    w = torch.ones(4, 3)
    with pytest.raises(ShapeError, match=r"r \(M, 3\) and s \(M, 4\).*got r \(2, 4\)"):
        merge_layer_weights(w, None, torch.ones(2, 4), torch.ones(2, 3))
    with pytest.raises(ShapeError, match="same M"):
        merge_layer_weights(w, None, torch.ones(2, 3), torch.ones(3, 4))
