"""OTFusion (Singh & Jaggi 2020), the layer-wise fusion step of CLAFusion (§2.3, §3).

The key property (DESIGN.md): a model fused with a copy of itself whose hidden units are
permuted is the same function, for every family, ground metric and target.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from conftest import eval_outputs, max_abs_diff
from weightspace.errors import ArchitectureMismatchError, InvalidParameterError
from weightspace.fusion.otfusion import (
    OTFusionConfig,
    align_models,
    otfusion,
    recompute_batchnorm_stats,
    transport_map,
    vanilla_average,
)
from weightspace.nets.mlp import build_mlp
from weightspace.nets.resnet import ResNet
from weightspace.nets.vgg import VGG

pytestmark = pytest.mark.usefixtures("one_thread")

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONV = (nn.Conv1d, nn.Conv2d)
_BN_VECTORS = ("weight", "bias", "running_mean", "running_var")


# --------------------------------------------------------------------------------------
# helpers: random models and permuted copies (written independently of structure.py)
# --------------------------------------------------------------------------------------


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm affine parameters, then warm running statistics (train mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    return model


def _warm(model: nn.Module, shape: tuple[int, ...], seed: int = 1) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn((16, *shape), generator=gen) * 1.5 + 0.3)
    return model.eval()


def _inputs(shape: tuple[int, ...], n: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


class _Permuter:
    """Applies hidden-unit permutations to a state dict, layer by layer."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.model = model
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.gen = torch.Generator().manual_seed(seed)

    def perm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen)

    def layer(
        self,
        path: str,
        p_in: torch.Tensor | None,
        p_out: torch.Tensor | None,
        norm: str | None = None,
    ) -> None:
        sd = self.state
        w = sd[f"{path}.weight"]
        if p_in is not None:
            w = w[:, p_in]
        if p_out is not None:
            w = w[p_out]
            if f"{path}.bias" in sd:
                sd[f"{path}.bias"] = sd[f"{path}.bias"][p_out]
            if norm is not None:
                for name in _BN_VECTORS:
                    sd[f"{norm}.{name}"] = sd[f"{norm}.{name}"][p_out]
        sd[f"{path}.weight"] = w

    def result(self) -> nn.Module:
        out = copy.deepcopy(self.model)
        out.load_state_dict(self.state)
        return out.eval()


def _permute_sequential(model: nn.Sequential, seed: int) -> nn.Module:
    pm = _Permuter(model, seed)
    linears = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
    prev = None
    for j, (name, lin) in enumerate(linears):
        p = pm.perm(lin.out_features) if j < len(linears) - 1 else None
        pm.layer(name, prev, p)
        prev = p
    return pm.result()


def _permute_vgg(model: VGG, seed: int) -> nn.Module:
    pm = _Permuter(model, seed)
    feats = list(model.features.named_children())
    prev = None
    for i, (name, mod) in enumerate(feats):
        if isinstance(mod, _CONV):
            nxt = feats[i + 1] if i + 1 < len(feats) else None
            norm = f"features.{nxt[0]}" if nxt and isinstance(nxt[1], _BN) else None
            p = pm.perm(mod.out_channels)
            pm.layer(f"features.{name}", prev, p, norm)
            prev = p
    linears = [(n, m) for n, m in model.classifier.named_children() if isinstance(m, nn.Linear)]
    for j, (name, lin) in enumerate(linears):
        p = pm.perm(lin.out_features) if j < len(linears) - 1 else None
        pm.layer(f"classifier.{name}", prev, p)
        prev = p
    return pm.result()


def _bn(block_norm: nn.Module, path: str) -> str | None:
    return path if isinstance(block_norm, _BN) else None


def _permute_resnet(model: ResNet, seed: int) -> nn.Module:
    """One permutation per residual stream (stem / shortcut / conv2 writers, all readers)
    and one per block-internal channel set."""
    pm = _Permuter(model, seed)
    stream = pm.perm(model.stem[0].out_channels)
    pm.layer("stem.0", None, stream, _bn(model.stem[1], "stem.1"))
    for i, block in enumerate(model.layers):
        p = f"layers.{i}"
        new = stream
        if not isinstance(block.shortcut, nn.Identity):
            new = pm.perm(block.conv2.out_channels)
            sc_norm = _bn(block.shortcut[1], f"{p}.shortcut.1")
            pm.layer(f"{p}.shortcut.0", stream, new, sc_norm)
        inner = pm.perm(block.conv1.out_channels)
        pm.layer(f"{p}.conv1", stream, inner, _bn(block.bn1, f"{p}.bn1"))
        pm.layer(f"{p}.conv2", inner, new, _bn(block.bn2, f"{p}.bn2"))
        stream = new
    pm.layer("fc", stream, None)
    return pm.result()


def _permute(model: nn.Module, seed: int = 7) -> nn.Module:
    if isinstance(model, VGG):
        return _permute_vgg(model, seed)
    if isinstance(model, ResNet):
        return _permute_resnet(model, seed)
    return _permute_sequential(model, seed)


def _mlp() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    return build_mlp((1, 8, 8), 10, hidden=[16, 8]), (1, 8, 8)


def _user_sequential() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))
    return seq, (6,)


def _vgg_2d_bn() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(2)
    shape = (3, 8, 8)
    model = VGG(shape, 4, stages=[[6, 5], [8]], hidden=[7], norm="batch")
    return _warm(_randomize_bn(model, 3), shape), shape


def _vgg_1d() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(3)
    return VGG((2, 16), 3, stages=[[6], [8, 5]], hidden=[6], norm="none").eval(), (2, 16)


def _resnet(shape: tuple[int, ...], norm: str) -> Callable[[], tuple[nn.Module, tuple]]:
    def build() -> tuple[nn.Module, tuple[int, ...]]:
        torch.manual_seed(4)
        model = ResNet(shape, 3, stem_channels=6, stages=[[6, 2], [8, 1]], norm=norm)
        if norm == "batch":
            model = _warm(_randomize_bn(model, 5), shape)
        return model.eval(), shape

    return build


MODELS = {
    "mlp": _mlp,
    "user_sequential": _user_sequential,
    "vgg2d_batch": _vgg_2d_bn,
    "vgg1d": _vgg_1d,
    "resnet2d_batch": _resnet((2, 8, 8), "batch"),
    "resnet2d_none": _resnet((2, 8, 8), "none"),
    "resnet1d_batch": _resnet((2, 16), "batch"),
    "resnet1d_none": _resnet((2, 16), "none"),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_copy(request) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    model, shape = MODELS[request.param]()
    permuted = _permute(model)
    x = _inputs(shape)
    # the helper is right: same function, different weights
    assert max_abs_diff(model, permuted, x) <= 1e-5
    a, b = model.state_dict(), permuted.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    return model, permuted, x


# --------------------------------------------------------------------------------------
# permutation invariance
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["activation", "weight"])
@pytest.mark.parametrize("target", [0, 1])
def test_fusing_a_permuted_copy_gives_the_same_function(model_and_copy, metric, target) -> None:
    model, permuted, x = model_and_copy
    before = {k: v.clone() for k, v in permuted.state_dict().items()}
    fused = otfusion([model, permuted], x, target=target, ground_metric=metric, solver="emd")
    assert fused is not model and fused is not permuted
    assert max_abs_diff(fused, model, x) <= 1e-5
    # inputs are left untouched
    assert all(torch.equal(before[k], v) for k, v in permuted.state_dict().items())


@pytest.mark.parametrize("metric", ["activation", "weight"])
def test_transport_to_a_permuted_copy_is_the_permutation(model_and_copy, metric) -> None:
    model, permuted, x = model_and_copy
    config = OTFusionConfig(ground_metric=metric, solver="emd")
    for target, (ref, other) in enumerate([(model, permuted), (permuted, model)]):
        models = [ref, other] if target == 0 else [other, ref]
        states = align_models(models, x, target=target, config=config)
        aligned = states[1 - target]
        for key, value in ref.state_dict().items():
            assert aligned[key].shape == value.shape, key
            if value.is_floating_point():
                diff = (aligned[key] - value.double()).abs().max().item()
                assert diff <= 1e-6, (key, diff)
        assert all(torch.equal(states[target][k], v.double()) for k, v in ref.state_dict().items())


def test_three_copies_fuse_back_to_the_model() -> None:
    model, shape = _mlp()
    x = _inputs(shape)
    models = [model, _permute(model, 11), _permute(model, 12)]
    fused = otfusion(models, x, target=1, weights=[0.5, 0.3, 0.2])
    assert max_abs_diff(fused, model, x) <= 1e-5


# --------------------------------------------------------------------------------------
# transport_map
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_a", "n_t"), [(5, 7), (7, 5), (6, 6)])
@pytest.mark.parametrize(("solver", "tol"), [("emd", 1e-12), ("sinkhorn", 1e-6)])
def test_transport_map_marginals(n_a: int, n_t: int, solver: str, tol: float) -> None:
    gen = torch.Generator().manual_seed(n_a * 10 + n_t)
    cost = torch.rand((n_a, n_t), generator=gen) * 3
    plan = transport_map(cost, solver=solver, reg=0.05)
    assert plan.shape == (n_a, n_t)
    assert plan.dtype == torch.float64
    assert (plan >= 0).all()
    assert torch.allclose(plan.sum(1), torch.full((n_a,), 1 / n_a, dtype=torch.float64), atol=tol)
    assert torch.allclose(plan.sum(0), torch.full((n_t,), 1 / n_t, dtype=torch.float64), atol=tol)


def test_transport_map_recovers_a_unique_zero_cost_permutation() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 9
    perm = torch.randperm(n, generator=gen)
    cost = torch.rand((n, n), generator=gen) + 0.5
    cost[torch.arange(n), perm] = 0.0
    plan = transport_map(cost, solver="emd")
    expected = torch.zeros((n, n), dtype=torch.float64)
    expected[torch.arange(n), perm] = 1.0 / n
    assert torch.equal(plan, expected)


def test_sinkhorn_at_small_reg_is_close_to_the_permutation() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 6
    perm = torch.randperm(n, generator=gen)
    cost = torch.rand((n, n), generator=gen) + 0.5
    cost[torch.arange(n), perm] = 0.0
    plan = transport_map(cost, solver="sinkhorn", reg=1e-3)
    assert torch.isfinite(plan).all()
    assert torch.equal(plan.argmax(1), perm)
    assert plan[torch.arange(n), perm].min().item() > 0.99 / n


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_transport_map_rejects_non_finite_costs(bad: float) -> None:
    cost = torch.rand(3, 4)
    cost[1, 2] = bad
    with pytest.raises(InvalidParameterError, match=r"NaN or inf"):
        transport_map(cost)


def test_transport_map_rejects_unknown_solver() -> None:
    with pytest.raises(InvalidParameterError, match=r"solver must be one of"):
        transport_map(torch.rand(3, 3), solver="greedy")


# --------------------------------------------------------------------------------------
# different widths, K > 2
# --------------------------------------------------------------------------------------


def _widths(model: nn.Sequential) -> list[int]:
    return [m.out_features for m in model if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("metric", ["activation", "weight"])
@pytest.mark.parametrize("target", [0, 1])
def test_different_widths_fuse_to_the_target_widths(metric: str, target: int) -> None:
    torch.manual_seed(0)
    models = [build_mlp((1, 8, 8), 10, [16, 8]), build_mlp((1, 8, 8), 10, [12, 6])]
    x = _inputs((1, 8, 8))
    fused = otfusion(models, x, target=target, ground_metric=metric)
    assert _widths(fused) == _widths(models[target])
    assert fused.state_dict().keys() == models[target].state_dict().keys()
    y = eval_outputs(fused, x)
    assert y.shape == (len(x), 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_three_models_of_different_widths(solver: str) -> None:
    torch.manual_seed(1)
    hidden = [[16, 8], [12, 6], [20, 10]]
    models = [build_mlp((1, 8, 8), 10, h) for h in hidden]
    x = _inputs((1, 8, 8))
    for target in range(3):
        fused = otfusion(models, x, target=target, solver=solver)
        assert _widths(fused) == [*hidden[target], 10]
        assert torch.isfinite(eval_outputs(fused, x)).all()


def test_vgg_and_resnet_of_different_widths_fuse() -> None:
    torch.manual_seed(2)
    shape = (3, 8, 8)
    x = _inputs(shape)
    vggs = [VGG(shape, 4, stages=[[c], [c + 2]], hidden=[5], norm="batch") for c in (4, 6)]
    fused = otfusion(vggs, x, target=1)
    assert fused.features[0].out_channels == 6
    assert eval_outputs(fused, x).shape == (len(x), 4)
    nets = [ResNet(shape, 4, stem_channels=c, stages=[[c, 1], [c + 2, 1]]) for c in (4, 6)]
    fused = otfusion(nets, x, target=0, ground_metric="weight")
    assert fused.fc.in_features == 6
    assert torch.isfinite(eval_outputs(fused, x)).all()


# --------------------------------------------------------------------------------------
# vanilla averaging and errors
# --------------------------------------------------------------------------------------


def test_vanilla_average_is_the_elementwise_mean() -> None:
    torch.manual_seed(3)
    models = [VGG((3, 8, 8), 4, stages=[[4], [6]], norm="batch") for _ in range(3)]
    for m in models:
        _warm(m, (3, 8, 8))
    for weights in (None, [0.2, 0.3, 0.5]):
        w = [1 / 3] * 3 if weights is None else weights
        avg = vanilla_average(models, weights).state_dict()
        for key, value in models[0].state_dict().items():
            if value.is_floating_point():
                expected = sum(
                    wi * m.state_dict()[key].double() for wi, m in zip(w, models, strict=True)
                )
                assert torch.allclose(avg[key].double(), expected, atol=1e-6), key
            else:
                assert torch.equal(avg[key], value)


def test_vanilla_average_shape_mismatch_names_the_key() -> None:
    a, b = build_mlp((1, 4, 4), 3, [5]), build_mlp((1, 4, 4), 3, [6])
    with pytest.raises(ArchitectureMismatchError, match=r"'1.weight' has shape \(6, 16\)"):
        vanilla_average([a, b])
    c = build_mlp((1, 4, 4), 3, [5], bias=False)
    with pytest.raises(ArchitectureMismatchError, match=r"1.bias"):
        vanilla_average([a, c])


def test_fusion_weights_must_sum_to_one() -> None:
    torch.manual_seed(4)
    models = [build_mlp((1, 4, 4), 3, [5]) for _ in range(2)]
    x = _inputs((1, 4, 4))
    for bad in ([0.5, 0.6], [1.5, -0.5], [1.0], [float("nan"), 1.0]):
        with pytest.raises(InvalidParameterError, match=r"summing to 1"):
            vanilla_average(models, bad)
        with pytest.raises(InvalidParameterError, match=r"summing to 1"):
            otfusion(models, x, weights=bad)


def test_activation_metric_needs_samples() -> None:
    models = [build_mlp((1, 4, 4), 3, [5]) for _ in range(2)]
    with pytest.raises(InvalidParameterError, match=r"needs samples: pass x"):
        otfusion(models)
    otfusion(models, ground_metric="weight")  # no samples needed


def test_config_object_and_keyword_options_agree() -> None:
    torch.manual_seed(5)
    models = [build_mlp((1, 4, 4), 3, [6, 5]) for _ in range(2)]
    x = _inputs((1, 4, 4))
    config = OTFusionConfig(ground_metric="weight", solver="sinkhorn", reg=0.05)
    by_config = otfusion(models, x, config=config)
    by_keywords = otfusion(models, x, ground_metric="weight", solver="sinkhorn", reg=0.05)
    for k, v in by_config.state_dict().items():
        assert torch.equal(v, by_keywords.state_dict()[k])
    # keywords replace the config's fields; the default (activation) cost differs
    assert not torch.equal(
        otfusion(models, x, config=config, ground_metric="activation").state_dict()["1.weight"],
        by_config.state_dict()["1.weight"],
    )
    with pytest.raises(InvalidParameterError, match=r"unknown options \['solvr'\]"):
        otfusion(models, x, solvr="emd")


def test_bad_configuration() -> None:
    models = [build_mlp((1, 4, 4), 3, [5]) for _ in range(2)]
    x = _inputs((1, 4, 4))
    with pytest.raises(InvalidParameterError, match=r"target must index one of the 2"):
        otfusion(models, x, target=2)
    with pytest.raises(InvalidParameterError, match=r"ground_metric"):
        otfusion(models, x, ground_metric="cka")
    with pytest.raises(InvalidParameterError, match=r"solver"):
        OTFusionConfig(solver="exact")
    with pytest.raises(InvalidParameterError, match=r"distance"):
        OTFusionConfig(distance="cosine")
    with pytest.raises(InvalidParameterError, match=r"reg must be > 0"):
        OTFusionConfig(reg=0.0)
    with pytest.raises(InvalidParameterError, match=r"n_samples must be >= 2"):
        OTFusionConfig(n_samples=1)
    with pytest.raises(ArchitectureMismatchError, match=r"use clafusion"):
        otfusion([models[0], build_mlp((1, 4, 4), 3, [5, 5])], x)


# --------------------------------------------------------------------------------------
# trained models: fusion beats vanilla averaging
# --------------------------------------------------------------------------------------


def test_fusion_beats_vanilla_averaging_on_trained_models() -> None:
    from weightspace.data.registry import load_dataset
    from weightspace.nets.registry import build_model
    from weightspace.zoo.finetune import finetune_stack

    ds = load_dataset("digits")
    # Two hidden layers: with one hidden layer of 32 the digits MLPs are close to linear
    # and vanilla averaging is already within ~0.1 of the parents.
    template = build_model("mlp", {"hidden": [32, 32]}, ds.input_shape, ds.n_classes)
    res = finetune_stack(
        template, ds, epochs=3, lr=0.01, batch_size=64, seeds=torch.tensor([0, 1]),
        optimizer="adam",
    )  # fmt: skip
    models = []
    for i in range(2):
        m = copy.deepcopy(template)
        m.load_state_dict({k: v[i] for k, v in res.best.items()})
        models.append(m.eval())

    def accuracy(m: nn.Module) -> float:
        return (eval_outputs(m, ds.test.x).argmax(-1) == ds.test.y).float().mean().item()

    parents = [accuracy(m) for m in models]
    assert min(parents) > 0.8
    vanilla = accuracy(vanilla_average(models))
    for metric in ("activation", "weight"):
        fused = accuracy(otfusion(models, ds.train.x, ground_metric=metric))
        assert fused > vanilla + 0.1, (metric, fused, vanilla, parents)
    assert np.isfinite(vanilla)


def test_recompute_batchnorm_stats_matches_the_data_and_keeps_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    model[1].running_mean.fill_(7.0)
    model[1].running_var.fill_(9.0)
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    weights.pop("1.num_batches_tracked")
    x = torch.randn(300, 5)
    recompute_batchnorm_stats(model, x, batch_size=64)
    z = model[0](x).detach()
    # Cumulative average over batches of 64 (the last of 44): per-batch means averaged
    # with equal weight, as BatchNorm's momentum=None does.
    means = torch.stack([z[i : i + 64].mean(0) for i in range(0, 300, 64)])
    assert torch.allclose(model[1].running_mean, means.mean(0), atol=1e-5)
    assert not model.training and model[1].momentum == 0.1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # A model without BatchNorm is returned untouched.
    plain = nn.Sequential(nn.Linear(5, 3))
    assert recompute_batchnorm_stats(plain, x) is plain
