"""The layer structure fusion reads off a model: neuron groups, alignment groups, checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import ArchitectureMismatchError, UnsupportedLayerError
from weightspace.fusion.structure import (
    OUTPUT,
    AlignGroup,
    NeuronLayer,
    check_compatible,
    describe,
)
from weightspace.nets.mlp import build_mlp
from weightspace.nets.resnet import ResNet
from weightspace.nets.vgg import VGG


def _io(structure) -> list[tuple[str, str | None, str]]:
    return [(lay.path, lay.in_group, lay.out_group) for lay in structure.layers]


# --------------------------------------------------------------------------------------
# MLPs
# --------------------------------------------------------------------------------------


def test_describe_build_mlp() -> None:
    s = describe(build_mlp((1, 4, 4), 3, hidden=[5, 6]))
    assert s.family == "mlp"
    assert _io(s) == [("1", None, "h0"), ("3", "h0", "h1"), ("5", "h1", OUTPUT)]
    assert all(lay.kind == "linear" and lay.norm is None for lay in s.layers)
    assert [lay.preact for lay in s.layers] == ["1", "3", "5"]
    assert s.groups == ("h0", "h1")
    assert s.align_groups == (AlignGroup("linear", ("1", "3"), ("1", "3")),)
    assert s.depths == (2,)
    assert s.writers("h1") == (NeuronLayer("3", "linear", "h0", "h1", None, "3"),)
    assert [lay.path for lay in s.writers(OUTPUT)] == ["5"]


def test_describe_linear_classifier_has_an_empty_group() -> None:
    s = describe(build_mlp((1, 4, 4), 3, hidden=[]))
    assert _io(s) == [("1", None, OUTPUT)]
    assert s.groups == ()
    assert s.depths == (0,)


def test_describe_user_sequential_without_flatten() -> None:
    s = describe(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
    assert s.family == "mlp"
    assert _io(s) == [("0", None, "h0"), ("2", "h0", OUTPUT)]
    assert s.align_groups == (AlignGroup("linear", ("0",), ("0",)),)


# --------------------------------------------------------------------------------------
# VGG
# --------------------------------------------------------------------------------------


def test_describe_vgg_2d_batch_norm_with_hidden_head() -> None:
    model = VGG((3, 8, 8), 4, stages=[[4, 4], [6]], hidden=[5], norm="batch")
    # features: conv bn relu conv bn relu pool | conv bn relu pool | gap
    s = describe(model)
    assert s.family == "vgg"
    assert _io(s) == [
        ("features.0", None, "c0"),
        ("features.3", "c0", "c1"),
        ("features.7", "c1", "c2"),
        ("classifier.1", "c2", "f0"),
        ("classifier.3", "f0", OUTPUT),
    ]
    assert [lay.kind for lay in s.layers] == ["conv"] * 3 + ["linear"] * 2
    assert [lay.norm for lay in s.layers] == ["features.1", "features.4", "features.8", None, None]
    assert [lay.preact for lay in s.layers] == [
        "features.1",
        "features.4",
        "features.8",
        "classifier.1",
        "classifier.3",
    ]
    assert s.align_groups == (
        AlignGroup("conv", ("features.0", "features.3"), ("features.1", "features.4")),
        AlignGroup("conv", ("features.7",), ("features.8",)),
        AlignGroup("linear", ("classifier.1",), ("classifier.1",)),
    )
    assert s.depths == (2, 1, 1)
    assert s.groups == ("c0", "c1", "c2", "f0")


def test_describe_vgg_1d_without_norm() -> None:
    model = VGG((2, 16), 3, stages=[[4], [6, 6]], norm="none")
    # features: conv relu pool | conv relu conv relu pool | gap
    s = describe(model)
    assert _io(s) == [
        ("features.0", None, "c0"),
        ("features.3", "c0", "c1"),
        ("features.5", "c1", "c2"),
        ("classifier.1", "c2", OUTPUT),
    ]
    assert all(lay.norm is None and lay.preact == lay.path for lay in s.layers)
    assert s.align_groups == (
        AlignGroup("conv", ("features.0",), ("features.0",)),
        AlignGroup("conv", ("features.3", "features.5"), ("features.3", "features.5")),
        AlignGroup("linear", (), ()),
    )
    assert s.depths == (1, 2, 0)


@pytest.mark.parametrize("shape", [(2, 16), (2, 8, 8)])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_describe_vgg_dims_and_norms(shape: tuple[int, ...], norm: str) -> None:
    model = VGG(shape, 3, stages=[[4], [6, 6]], hidden=[5], norm=norm)
    s = describe(model)
    modules = dict(model.named_modules())
    convs = [lay for lay in s.layers if lay.kind == "conv"]
    assert len(convs) == 3 and len(s.layers) == 5
    assert all(type(modules[lay.path]).__name__ == f"Conv{len(shape) - 1}d" for lay in convs)
    if norm == "batch":
        assert all(type(modules[lay.norm]).__name__.startswith("BatchNorm") for lay in convs)
        assert all(lay.preact == lay.norm for lay in convs)
    else:
        assert all(lay.norm is None and lay.preact == lay.path for lay in convs)
    assert s.depths == (1, 2, 1)
    assert [g.kind for g in s.align_groups] == ["conv", "conv", "linear"]
    assert [g.preacts for g in s.align_groups[:2]] == [
        (convs[0].preact,),
        (convs[1].preact, convs[2].preact),
    ]


def test_describe_vgg_groups_split_only_at_pools() -> None:
    # A 2x2 input allows one max pool: stages 2 and 3 share an alignment group.
    s = describe(VGG((1, 2, 2), 3, stages=[[4], [5], [6]]))
    assert s.depths == (1, 2, 0)


# --------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_describe_resnet_streams(norm: str) -> None:
    model = ResNet((3, 8, 8), 4, stem_channels=4, stages=[[4, 2], [6, 1]], norm=norm)
    s = describe(model)
    assert s.family == "resnet"
    assert _io(s) == [
        ("stem.0", None, "s0"),
        ("layers.0.conv1", "s0", "layers.0.conv1"),
        ("layers.0.conv2", "layers.0.conv1", "s0"),
        ("layers.1.conv1", "s0", "layers.1.conv1"),
        ("layers.1.conv2", "layers.1.conv1", "s0"),
        ("layers.2.shortcut.0", "s0", "s1"),
        ("layers.2.conv1", "s0", "layers.2.conv1"),
        ("layers.2.conv2", "layers.2.conv1", "s1"),
        ("fc", "s1", OUTPUT),
    ]
    # stem and identity-shortcut blocks write one stream; the projection starts another
    assert [lay.path for lay in s.writers("s0")] == ["stem.0", "layers.0.conv2", "layers.1.conv2"]
    assert [lay.path for lay in s.writers("s1")] == ["layers.2.shortcut.0", "layers.2.conv2"]
    assert s.groups == ("s0", "layers.0.conv1", "layers.1.conv1", "s1", "layers.2.conv1")
    assert s.align_groups == (
        AlignGroup("block", ("layers.0", "layers.1"), ("layers.0.bn2", "layers.1.bn2")),
        AlignGroup("block", ("layers.2",), ("layers.2.bn2",)),
    )
    assert s.depths == (2, 1)
    norms = {lay.path: lay.norm for lay in s.layers}
    if norm == "batch":
        assert norms["stem.0"] == "stem.1"
        assert norms["layers.0.conv1"] == "layers.0.bn1"
        assert norms["layers.2.conv2"] == "layers.2.bn2"
        assert norms["layers.2.shortcut.0"] == "layers.2.shortcut.1"
        assert {lay.path: lay.preact for lay in s.layers}["layers.1.conv2"] == "layers.1.bn2"
    else:
        assert all(lay.norm is None and lay.preact == lay.path for lay in s.layers)
    assert norms["fc"] is None


def test_describe_resnet_projection_first_block_and_1d() -> None:
    # stem 8 -> stage of 4 channels: the very first block already projects.
    s = describe(ResNet((2, 16), 3, stem_channels=8, stages=[[4, 1], [6, 2]]))
    assert [lay.path for lay in s.writers("s0")] == ["stem.0"]
    assert [lay.path for lay in s.writers("s1")] == ["layers.0.shortcut.0", "layers.0.conv2"]
    assert [lay.path for lay in s.writers("s2")] == [
        "layers.1.shortcut.0",
        "layers.1.conv2",
        "layers.2.conv2",
    ]
    assert s.layers[-1] == NeuronLayer("fc", "linear", "s2", OUTPUT, None, "fc")
    assert [g.units for g in s.align_groups] == [("layers.0",), ("layers.1", "layers.2")]
    assert s.depths == (1, 2)


# --------------------------------------------------------------------------------------
# unsupported layers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), r"layer '1' is a Tanh"),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3)),
            r"layer '0' is a Conv2d",
        ),
        (
            nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Dropout(), nn.Linear(5, 3)),
            r"layer '2' is a Dropout",
        ),
        (
            nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(5, 3)),
            r"layer '2' is a Flatten",
        ),
        (nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)), r"layer '1' is a Linear"),
    ],
)
def test_unsupported_layers_are_named(model: nn.Module, pattern: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=pattern):
        describe(model)


def test_sequential_must_end_with_linear() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"must end with a Linear output layer"):
        describe(nn.Sequential(nn.Linear(4, 5), nn.ReLU()))
    with pytest.raises(UnsupportedLayerError, match=r"must end with a Linear"):
        describe(nn.Sequential())


def test_arbitrary_module_is_rejected() -> None:
    class TwoLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(UnsupportedLayerError, match=r"cannot fuse a TwoLayer"):
        describe(TwoLayer())


def test_check_compatible_names_the_model_with_an_unsupported_layer() -> None:
    good = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    bad = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3))
    with pytest.raises(UnsupportedLayerError, match=r"model 1: layer '1' is a Sigmoid"):
        check_compatible([good, bad])


# --------------------------------------------------------------------------------------
# check_compatible
# --------------------------------------------------------------------------------------


def test_check_compatible_returns_structures_and_accepts_different_widths() -> None:
    a, b = build_mlp((1, 4, 4), 3, [5, 6]), build_mlp((1, 4, 4), 3, [7, 2])
    structures = check_compatible([a, b])
    assert structures == [describe(a), describe(b)]
    vgg = [VGG((3, 8, 8), 4, stages=[[c], [2 * c]], norm="batch") for c in (4, 6)]
    assert len(check_compatible(vgg)) == 2
    res = [ResNet((3, 8, 8), 4, stem_channels=c, stages=[[c, 1], [c + 2, 1]]) for c in (4, 5)]
    assert len(check_compatible(res)) == 2


def test_check_compatible_family_mismatch() -> None:
    mlp = build_mlp((3, 8, 8), 4, [5])
    vgg = VGG((3, 8, 8), 4)
    with pytest.raises(ArchitectureMismatchError, match=r"model 1 is a vgg .* model 0 is a mlp"):
        check_compatible([mlp, vgg])
    with pytest.raises(ArchitectureMismatchError, match=r"family"):
        check_compatible([vgg, ResNet((3, 8, 8), 4)])


def test_check_compatible_input_and_output_sizes() -> None:
    a = build_mlp((1, 4, 4), 3, [5])
    with pytest.raises(ArchitectureMismatchError, match=r"model 1 maps 25 inputs to 3 outputs"):
        check_compatible([a, build_mlp((1, 5, 5), 3, [5])])
    with pytest.raises(ArchitectureMismatchError, match=r"maps 16 inputs to 7 outputs .* 16 to 3"):
        check_compatible([a, build_mlp((1, 4, 4), 7, [5])])
    vgg = VGG((3, 8, 8), 4)
    with pytest.raises(ArchitectureMismatchError, match=r"maps 2 inputs .* model 0 maps 3"):
        check_compatible([vgg, VGG((2, 8, 8), 4)])
    res = ResNet((3, 8, 8), 4)
    with pytest.raises(ArchitectureMismatchError, match=r"to 5 outputs"):
        check_compatible([res, ResNet((3, 8, 8), 5)])


def test_check_compatible_vgg_pooling_stages() -> None:
    a = VGG((1, 8, 8), 3, stages=[[4], [6]])
    b = VGG((1, 8, 8), 3, stages=[[4], [6], [8]])
    with pytest.raises(ArchitectureMismatchError, match=r"3 pooling stages but model 0 has 2"):
        check_compatible([a, b], same_depth=False)


def test_check_compatible_resnet_stages() -> None:
    a = ResNet((1, 8, 8), 3, stem_channels=4, stages=[[4, 1], [6, 1]])
    b = ResNet((1, 8, 8), 3, stem_channels=4, stages=[[4, 1], [6, 1], [8, 1]])
    with pytest.raises(ArchitectureMismatchError, match=r"3 stages but model 0 has 2"):
        check_compatible([a, b], same_depth=False)


def test_check_compatible_same_depth() -> None:
    a, b = build_mlp((1, 4, 4), 3, [5]), build_mlp((1, 4, 4), 3, [5, 5])
    with pytest.raises(ArchitectureMismatchError, match=r"3 weight layers .* use clafusion"):
        check_compatible([a, b])
    assert [s.depths for s in check_compatible([a, b], same_depth=False)] == [(1,), (2,)]
    deep = VGG((1, 8, 8), 3, stages=[[4, 4], [6]])
    shallow = VGG((1, 8, 8), 3, stages=[[4], [6]])
    with pytest.raises(ArchitectureMismatchError, match=r"use clafusion"):
        check_compatible([shallow, deep])
    assert len(check_compatible([shallow, deep], same_depth=False)) == 2


def test_check_compatible_same_depth_layer_signature() -> None:
    a = VGG((1, 8, 8), 3, stages=[[4], [6]], norm="batch")
    b = VGG((1, 8, 8), 3, stages=[[4], [6]], norm="none")
    with pytest.raises(ArchitectureMismatchError, match=r"only widths may differ"):
        check_compatible([a, b])
    c = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    d = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ArchitectureMismatchError, match=r"layer '0' differs"):
        check_compatible([c, d])


def test_check_compatible_needs_a_model() -> None:
    with pytest.raises(ArchitectureMismatchError, match=r"at least one model"):
        check_compatible([])
