"""CLAFusion (§3): cross-layer alignment, layer balancing, then OTFusion."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from conftest import eval_outputs, max_abs_diff
from weightspace.errors import ArchitectureMismatchError, InvalidParameterError
from weightspace.fusion.balance import balance_by_adding
from weightspace.fusion.clafusion import CLAFusionConfig, CLAFusionResult, clafusion
from weightspace.fusion.otfusion import OTFusionConfig, vanilla_average
from weightspace.fusion.structure import describe
from weightspace.nets.mlp import build_mlp
from weightspace.nets.resnet import ResNet
from weightspace.nets.vgg import VGG

pytestmark = pytest.mark.usefixtures("one_thread")

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
SHAPE = (1, 8, 8)


def _inputs(shape: tuple[int, ...], n: int = 64, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def _widths(model: nn.Sequential) -> list[int]:
    """Hidden widths of an MLP (without the output layer)."""
    return [m.out_features for m in model if isinstance(m, nn.Linear)][:-1]


def _warm(model: nn.Module, shape: tuple[int, ...], seed: int = 1) -> nn.Module:
    """Random BatchNorm affine parameters and warm running statistics, then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn((16, *shape), generator=gen) * 1.5 + 0.3)
    return model.eval()


def _assert_valid_mapping(mapping: list[int], n: int, m: int) -> None:
    assert len(mapping) == n
    assert mapping[0] == 0
    assert mapping[-1] == m - 1
    assert all(a < b for a, b in itertools.pairwise(mapping))


def _expanded_widths(widths: list[int], mapping: list[int], m: int) -> list[int]:
    """Widths of a shallow MLP after identity layers follow each unit up to the next match."""
    return [widths[max(j for j, a in enumerate(mapping) if a <= i)] for i in range(m)]


@pytest.fixture(scope="module")
def mlp_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    deep = build_mlp(SHAPE, 10, hidden=[16, 14, 12, 10, 8])
    shallow = build_mlp(SHAPE, 10, hidden=[12, 9, 6])
    return deep.eval(), shallow.eval(), _inputs(SHAPE)


# --------------------------------------------------------------------------------------
# MLPs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_mlp_fused_has_the_deeper_depth_and_target_widths(mlp_pair, order) -> None:
    deep, shallow, x = mlp_pair
    models = [(deep, shallow)[i] for i in order]
    d, s = order.index(0), order.index(1)
    result = clafusion(models, x)
    assert isinstance(result, CLAFusionResult)
    assert result.initial == d and result.target == d
    assert result.seconds > 0
    assert describe(result.fused).depths == (5,)
    assert _widths(result.fused) == [16, 14, 12, 10, 8]
    assert result.mappings[d] is None
    (mapping,) = result.mappings[s]
    _assert_valid_mapping(mapping, 3, 5)
    assert len(result.depth_aligned) == 2
    assert result.depth_aligned[d] is models[d]
    aligned = result.depth_aligned[s]
    assert describe(aligned).depths == (5,)
    assert _widths(aligned) == _expanded_widths([12, 9, 6], mapping, 5)
    # identity layers: the depth-aligned shallow model is the same function
    assert max_abs_diff(aligned, shallow, x) <= 1e-6
    assert max_abs_diff(aligned, shallow, _inputs(SHAPE, seed=9) * 3) <= 1e-6
    y = eval_outputs(result.fused, x)
    assert y.shape == (len(x), 10) and torch.isfinite(y).all()


def test_mlp_target_shallow_gives_its_widths_at_the_deeper_depth(mlp_pair) -> None:
    deep, shallow, x = mlp_pair
    result = clafusion([deep, shallow], x, target=1)
    assert result.initial == 0 and result.target == 1
    (mapping,) = result.mappings[1]
    assert describe(result.fused).depths == (5,)
    assert _widths(result.fused) == _expanded_widths([12, 9, 6], mapping, 5)
    assert _widths(result.fused) == _widths(result.depth_aligned[1])


@pytest.mark.parametrize("estimate", ["sign_of_sum", "majority", "average"])
def test_mlp_merge_gives_the_shallower_depth(mlp_pair, estimate: str) -> None:
    deep, shallow, x = mlp_pair
    config = CLAFusionConfig(balancing="merge", merge_estimate=estimate)
    result = clafusion([deep, shallow], x, config)
    assert result.initial == 1 and result.target == 1
    assert result.mappings[1] is None
    (mapping,) = result.mappings[0]
    _assert_valid_mapping(mapping, 3, 5)
    assert describe(result.fused).depths == (3,)
    assert _widths(result.fused) == [12, 9, 6]
    merged = result.depth_aligned[0]
    assert _widths(merged) == [[16, 14, 12, 10, 8][i] for i in mapping]
    assert torch.isfinite(eval_outputs(result.fused, x)).all()
    wide = clafusion([deep, shallow], x, config, target=0)
    assert _widths(wide.fused) == _widths(merged)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_figure_2_neuron_count_cost(order) -> None:
    torch.manual_seed(1)
    a = build_mlp(SHAPE, 10, hidden=[5, 4, 3, 1])
    b = build_mlp(SHAPE, 10, hidden=[3, 2, 1])
    models = [(a, b)[i] for i in order]
    result = clafusion(models, _inputs(SHAPE), CLAFusionConfig(layer_cost="neurons"))
    assert result.mappings[order.index(1)] == [[0, 2, 3]]
    assert _widths(result.depth_aligned[order.index(1)]) == [3, 3, 2, 1]
    assert describe(result.fused).depths == (4,)


def test_four_models_alternating_depths() -> None:
    torch.manual_seed(2)
    hidden = [[16, 12, 10, 8], [10, 6], [14, 12, 9, 7], [8, 8, 5]]
    models = [build_mlp(SHAPE, 10, h).eval() for h in hidden]
    x = _inputs(SHAPE)
    result = clafusion(models, x, weights=[0.4, 0.2, 0.2, 0.2])
    assert result.initial == 0 and result.target == 0
    assert describe(result.fused).depths == (4,)
    assert _widths(result.fused) == hidden[0]
    assert result.mappings[0] is None
    for k in range(1, 4):
        (mapping,) = result.mappings[k]
        _assert_valid_mapping(mapping, len(hidden[k]), 4)
        aligned = result.depth_aligned[k]
        assert describe(aligned).depths == (4,)
        assert max_abs_diff(aligned, models[k], x) <= 1e-6
    assert result.mappings[2] == [[0, 1, 2, 3]]
    # the shallowest-depth choice in merge mode
    merged = clafusion(models, x, CLAFusionConfig(balancing="merge"))
    assert merged.initial == 1
    assert describe(merged.fused).depths == (2,)


def test_model_fused_with_itself_is_itself(mlp_pair) -> None:
    deep, _, x = mlp_pair
    result = clafusion([deep, copy.deepcopy(deep)], x)
    assert result.mappings[1] == [[0, 1, 2, 3, 4]]
    assert max_abs_diff(result.fused, deep, x) <= 1e-5


def test_model_fused_with_a_depth_expanded_copy_is_itself() -> None:
    # D = S with identity layers after S's first and second hidden layers: CKA finds S's
    # layers inside D, so the depth-aligned S is D and the fusion is S's function.
    torch.manual_seed(3)
    s = build_mlp(SHAPE, 10, hidden=[12, 9, 6]).eval()
    d = balance_by_adding(s, [[0, 2, 4]], [5]).eval()
    x = _inputs(SHAPE)
    assert max_abs_diff(d, s, x) <= 1e-6
    config = CLAFusionConfig(ot=OTFusionConfig(ground_metric="weight"))
    result = clafusion([s, d], x, config)
    assert result.initial == 1
    assert result.mappings[0] == [[0, 2, 4]]
    assert max_abs_diff(result.fused, s, x) <= 1e-5


def test_trained_mlps_of_different_depths() -> None:
    from weightspace.data.registry import load_dataset
    from weightspace.nets.registry import build_model
    from weightspace.zoo.finetune import finetune_stack

    ds = load_dataset("digits")

    def train(hidden: list[int], seed: int) -> nn.Module:
        template = build_model("mlp", {"hidden": hidden}, ds.input_shape, ds.n_classes)
        res = finetune_stack(
            template, ds, epochs=5, lr=0.01, batch_size=64, seeds=torch.tensor([seed]),
            optimizer="adam",
        )  # fmt: skip
        template.load_state_dict({k: v[0] for k, v in res.best.items()})
        return template.eval()

    def accuracy(m: nn.Module) -> float:
        return (eval_outputs(m, ds.test.x).argmax(-1) == ds.test.y).float().mean().item()

    deep, shallow = train([32, 32, 32], 0), train([32, 32], 1)
    assert min(accuracy(deep), accuracy(shallow)) > 0.8
    result = clafusion([deep, shallow], ds.train.x)
    assert describe(result.fused).depths == (3,)
    assert accuracy(result.depth_aligned[1]) == accuracy(shallow)
    fused = accuracy(result.fused)
    # the OT step matters: averaging the depth-aligned models without it is far worse
    naive = accuracy(vanilla_average(result.depth_aligned))
    assert fused > 0.6
    assert fused > naive + 0.1, (fused, naive)
    merged = clafusion([deep, shallow], ds.train.x, CLAFusionConfig(balancing="merge"))
    assert describe(merged.fused).depths == (2,)
    assert accuracy(merged.fused) > 0.6


# --------------------------------------------------------------------------------------
# CNNs
# --------------------------------------------------------------------------------------


def test_vgg_pair() -> None:
    shape = (3, 8, 8)
    torch.manual_seed(4)
    deep = _warm(VGG(shape, 4, stages=[[4, 4], [6, 6]], norm="batch"), shape)
    shallow = _warm(VGG(shape, 4, stages=[[4], [6]], norm="batch"), shape, seed=2)
    x = _inputs(shape, n=32)
    result = clafusion([shallow, deep], x)
    assert result.initial == 1
    assert describe(deep).depths == (2, 2, 0)
    assert describe(result.fused).depths == (2, 2, 0)
    assert result.mappings[0] == [[0], [0], []]
    aligned = result.depth_aligned[0]
    assert describe(aligned).depths == (2, 2, 0)
    assert max_abs_diff(aligned, shallow, x) <= 1e-5
    assert eval_outputs(result.fused, x).shape == (32, 4)
    assert torch.isfinite(eval_outputs(result.fused, x)).all()


@pytest.mark.parametrize("head", [[7], []])
def test_vgg_pair_with_classifier_hidden_layers(head: list[int]) -> None:
    # 1-D VGG; the shallow head has one hidden layer or none (identity layers after Flatten)
    shape = (2, 16)
    torch.manual_seed(5)
    deep = VGG(shape, 3, stages=[[4, 4], [6]], hidden=[8, 6]).eval()
    shallow = VGG(shape, 3, stages=[[5], [6]], hidden=head).eval()
    x = _inputs(shape, n=32)
    result = clafusion([deep, shallow], x, target=1)
    assert describe(result.fused).depths == (2, 1, 2)
    assert result.mappings[1] == [[0], [0], [0] if head else []]
    assert result.fused.features[0].out_channels == 5
    widths = [m.out_features for m in result.fused.classifier if isinstance(m, nn.Linear)]
    assert widths == ([7, 7, 3] if head else [6, 6, 3])
    assert max_abs_diff(result.depth_aligned[1], shallow, x) <= 1e-5


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_resnet_pair(norm: str) -> None:
    shape = (2, 8, 8)
    torch.manual_seed(6)
    deep = ResNet(shape, 3, stem_channels=4, stages=[[4, 2], [6, 2]], norm=norm)
    shallow = ResNet(shape, 3, stem_channels=4, stages=[[4, 1], [6, 1]], norm=norm)
    if norm == "batch":
        deep, shallow = _warm(deep, shape), _warm(shallow, shape, seed=2)
    deep, shallow = deep.eval(), shallow.eval()
    x = _inputs(shape, n=32)
    result = clafusion([deep, shallow], x)
    assert result.initial == 0
    assert describe(result.fused).depths == (2, 2)
    assert result.mappings[1] == [[0], [0]]
    aligned = result.depth_aligned[1]
    assert describe(aligned).depths == (2, 2)
    assert len(aligned.layers) == 4
    # the added zero blocks leave the function unchanged
    assert max_abs_diff(aligned, shallow, x) <= 1e-5
    assert max_abs_diff(aligned, shallow, _inputs(shape, n=8, seed=5) * 3) <= 1e-5
    assert torch.isfinite(eval_outputs(result.fused, x)).all()


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


def test_merge_is_for_mlps_only() -> None:
    shape = (3, 8, 8)
    models = [VGG(shape, 4, stages=[[4, 4], [6]]), VGG(shape, 4, stages=[[4], [6]])]
    with pytest.raises(InvalidParameterError, match=r"MLPs only .* use balancing='add'"):
        clafusion(models, _inputs(shape), CLAFusionConfig(balancing="merge"))


def test_incompatible_models() -> None:
    x = _inputs((3, 8, 8))
    mlp = build_mlp((3, 8, 8), 4, [5, 5])
    with pytest.raises(ArchitectureMismatchError, match=r"family"):
        clafusion([mlp, VGG((3, 8, 8), 4)], x)
    with pytest.raises(ArchitectureMismatchError, match=r"outputs"):
        clafusion([mlp, build_mlp((3, 8, 8), 5, [5])], x)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"balancing": "remove"}, r"balancing must be one of"),
        ({"merge_estimate": "median"}, r"merge_estimate must be one of"),
        ({"layer_cost": "svcca"}, r"layer_cost must be one of"),
    ],
)
def test_bad_config_names(kwargs: dict, pattern: str) -> None:
    with pytest.raises(InvalidParameterError, match=pattern):
        CLAFusionConfig(**kwargs)


def test_bad_target(mlp_pair) -> None:
    deep, shallow, x = mlp_pair
    with pytest.raises(InvalidParameterError, match=r"target must index one of the 2"):
        clafusion([deep, shallow], x, target=2)


def test_no_model_deepest_in_every_group() -> None:
    shape = (3, 8, 8)
    a = VGG(shape, 4, stages=[[4, 4], [6]])
    b = VGG(shape, 4, stages=[[4], [6, 6]])
    with pytest.raises(ArchitectureMismatchError, match=r"no model is the deepest in every"):
        clafusion([a, b], _inputs(shape))
