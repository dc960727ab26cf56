"""Architectures: registry, builders, validation, ArchSpec, batched functional calls."""

import json

import pytest
import torch
from torch import nn

from weightspace.errors import InvalidParameterError, UnknownArchitectureError
from weightspace.nets import (
    ARCHITECTURES,
    ArchSpec,
    batched_forward,
    build_model,
    float_buffers,
    register_architecture,
    stack_modules,
)
from weightspace.nets.mlp import build_mlp
from weightspace.nets.resnet import BasicBlock

TINY = {
    "mlp": {"hidden": [8]},
    "vgg": {"stages": [[4]]},
    "resnet": {"stem_channels": 4, "stages": [[4, 1]]},
}
# Variants that exercise every code path: BatchNorm / no norm, several stages, head layers.
VARIANTS = [
    ("mlp", {"hidden": [8]}),
    ("mlp", {"hidden": []}),
    ("mlp", {"hidden": [8, 6], "bias": False}),
    ("vgg", {"stages": [[4]]}),
    ("vgg", {"stages": [[4], [6, 6]], "hidden": [5], "norm": "batch"}),
    ("resnet", {"stem_channels": 4, "stages": [[4, 1]]}),
    ("resnet", {"stem_channels": 4, "stages": [[4, 1], [6, 2]], "norm": "none"}),
]
SHAPES = [(1, 40), (1, 8, 8)]


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random parameters and (for BatchNorm) non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in float_buffers(module).items():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            else:
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return module


# ---- building ---------------------------------------------------------------------------


def test_registry_holds_the_documented_architectures():
    assert {"mlp", "vgg", "resnet"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("input_shape", SHAPES, ids=["1d", "2d"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_gives_logits(name, input_shape):
    model = build_model(name, TINY.get(name, {}), input_shape, n_classes=7)
    x = torch.rand(5, *input_shape)
    out = model(x)
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()
    # The default config builds as well.
    assert build_model(name, None, input_shape, 3)(x).shape == (5, 3)


@pytest.mark.parametrize("input_shape", SHAPES, ids=["1d", "2d"])
@pytest.mark.parametrize(("name", "config"), VARIANTS)
def test_variants_build_with_expected_layers(name, config, input_shape):
    model = build_model(name, config, input_shape, n_classes=4).eval()
    out = model(torch.rand(3, *input_shape))
    assert out.shape == (3, 4)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    wants_bn = name == "resnet" and config.get("norm", "batch") == "batch"
    wants_bn |= name == "vgg" and config.get("norm") == "batch"
    assert has_bn == wants_bn
    nd = len(input_shape) - 1
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    if name == "mlp":
        assert not convs
    else:
        assert convs
        assert all(isinstance(c, nn.Conv1d if nd == 1 else nn.Conv2d) for c in convs)


def test_mlp_parameter_count_and_layout():
    model = build_model("mlp", {"hidden": [8, 6]}, (1, 8, 8), 10)
    assert sum(p.numel() for p in model.parameters()) == 64 * 8 + 8 + 8 * 6 + 6 + 6 * 10 + 10
    assert list(model.state_dict()) == [
        "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias",
    ]  # fmt: skip
    assert sum(p.numel() for p in build_mlp((1, 40), 3, hidden=()).parameters()) == 40 * 3 + 3


def test_vgg_features_count_pools_by_spatial_size():
    # An 8x8 input allows three 2x poolings (8 -> 4 -> 2 -> 1), not a fourth.
    model = build_model("vgg", {"stages": [[4], [4], [4], [4]]}, (1, 8, 8), 10)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_blocks_and_projection_shortcuts():
    model = build_model("resnet", {"stem_channels": 4, "stages": [[4, 2], [6, 1]]}, (1, 8, 8), 3)
    blocks = list(model.layers)
    assert len(blocks) == 3
    assert isinstance(blocks[0].shortcut, nn.Identity)
    assert isinstance(blocks[1].shortcut, nn.Identity)
    assert isinstance(blocks[2].shortcut, nn.Sequential)  # stride 2 and 4 -> 6 channels
    assert blocks[2].conv1.stride == (2, 2)
    # BatchNorm variant: convs carry no bias; none variant: they do.
    assert blocks[0].conv1.bias is None
    plain = build_model("resnet", {"stem_channels": 4, "stages": [[4, 1]], "norm": "none"})
    assert plain.layers[0].conv1.bias is not None


# ---- validation ------------------------------------------------------------------------


def test_unknown_architecture_lists_registered_names():
    with pytest.raises(UnknownArchitectureError) as info:
        build_model("transformer", {}, (1, 8, 8), 10)
    message = str(info.value)
    assert "transformer" in message
    for name in ARCHITECTURES:
        assert name in message
    assert isinstance(info.value, KeyError)  # generic handlers keep working


def test_unknown_config_key():
    with pytest.raises(InvalidParameterError, match="widths"):
        build_model("mlp", {"widths": [8]}, (1, 8, 8), 10)
    with pytest.raises(InvalidParameterError, match="allowed"):
        build_model("vgg", {"stages": [[4]], "depth": 3}, (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("name", "config", "input_shape", "match"),
    [
        ("mlp", {"hidden": [-1]}, (1, 8, 8), "positive"),
        ("mlp", {"hidden": [8, 0]}, (1, 8, 8), "positive"),
        ("vgg", {"stages": []}, (1, 8, 8), "stages"),
        ("vgg", {"stages": [[]]}, (1, 8, 8), "stages"),
        ("vgg", {"stages": [[4, -2]]}, (1, 8, 8), "stages"),
        ("vgg", {"stages": [[4]], "norm": "foo"}, (1, 8, 8), "norm"),
        ("vgg", {"stages": [[4]]}, (1, 2, 3, 4), "inputs"),
        ("vgg", {"stages": [[4]]}, (64,), "inputs"),
        ("resnet", {"stages": [[4]]}, (1, 8, 8), "pairs"),
        ("resnet", {"stages": [[4, 1, 1]]}, (1, 8, 8), "pairs"),
        ("resnet", {"stages": [[4, 0]]}, (1, 8, 8), "pairs"),
        ("resnet", {"stages": [[-4, 1]]}, (1, 8, 8), "pairs"),
        ("resnet", {"stages": []}, (1, 8, 8), "pairs"),
        ("resnet", {"norm": "foo"}, (1, 8, 8), "norm"),
        ("resnet", {}, (1, 2, 3, 4), "inputs"),
    ],
)
def test_bad_config_values_raise(name, config, input_shape, match):
    with pytest.raises(InvalidParameterError, match=match):
        build_model(name, config, input_shape, 10)


def test_bad_class_count_raises():
    with pytest.raises(InvalidParameterError, match="n_classes"):
        build_model("mlp", {"hidden": [8]}, (1, 8, 8), 0)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize(
    "config",
    [
        ("vgg", {"stages": [4, 8]}),
        ("vgg", {"stages": [[4]], "hidden": [-3]}),
        ("resnet", {"stages": [4, 1]}),
        ("resnet", {"stem_channels": -4, "stages": [[4, 1]]}),
        ("resnet", {"stem_channels": 0, "stages": [[4, 1]]}),
    ],
    ids=["vgg-flat-stages", "vgg-negative-head", "resnet-flat-stage", "resnet-stem-neg", "stem0"],
)
def test_malformed_configs_raise_invalid_parameter(config):
    name, cfg = config
    with pytest.raises(InvalidParameterError):
        build_model(name, cfg, (1, 8, 8), 10)


def test_register_architecture():
    def tiny(input_shape, n_classes, width=3):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Linear(width, n_classes))

    register_architecture("test_nets_tiny", tiny)
    try:
        model = build_model("test_nets_tiny", {"width": 5}, (1, 8, 8), 4)
        assert model[1].out_features == 5
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
        with pytest.raises(InvalidParameterError, match="already registered"):
            register_architecture("test_nets_tiny", tiny)
        with pytest.raises(InvalidParameterError, match="unknown config keys"):
            build_model("test_nets_tiny", {"depth": 2}, (1, 8, 8), 4)
    finally:
        ARCHITECTURES.pop("test_nets_tiny", None)
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_architecture("mlp", tiny)


# ---- ArchSpec --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "config"), VARIANTS)
def test_archspec_round_trip_and_build(name, config):
    spec = ArchSpec(name, config, (1, 8, 8), 6)
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able
    back = ArchSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec
    assert back.key == spec.key
    assert hash(back) == hash(spec)
    assert json.loads(spec.key) == d
    built = spec.build()
    ref = build_model(name, config, (1, 8, 8), 6)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert built(torch.rand(2, 1, 8, 8)).shape == (2, 6)


def test_archspec_key_is_canonical_and_discriminating():
    a = ArchSpec("vgg", {"stages": ((4,),), "norm": "none"}, (1, 8, 8), 10)
    b = ArchSpec("vgg", {"norm": "none", "stages": [[4]]}, [1, 8, 8], 10)
    assert a.key == b.key and a == b
    assert a.key == (
        '{"config":{"norm":"none","stages":[[4]]},"input_shape":[1,8,8],"n_classes":10,'
        '"name":"vgg"}'
    )
    assert a != ArchSpec("vgg", {"stages": [[4]], "norm": "none"}, (1, 8, 8), 3)
    assert a != ArchSpec("vgg", {"stages": [[5]], "norm": "none"}, (1, 8, 8), 10)
    assert a != ArchSpec("vgg", {"stages": [[4]], "norm": "none"}, (1, 40), 10)
    assert a != ArchSpec("resnet", {"stages": [[4]], "norm": "none"}, (1, 8, 8), 10)
    assert len({a, b}) == 1


# ---- batched calls ---------------------------------------------------------------------


@pytest.mark.parametrize("input_shape", SHAPES, ids=["1d", "2d"])
@pytest.mark.parametrize(("name", "config"), VARIANTS)
def test_batched_forward_matches_loop(name, config, input_shape):
    modules = [_randomize(build_model(name, config, input_shape, 5), s).eval() for s in range(3)]
    stacked = stack_modules(modules)
    template = build_model(name, config, input_shape, 5).eval()
    x = torch.rand(3, 4, *input_shape)
    out = batched_forward(template, stacked, x)
    assert out.shape == (3, 4, 5)
    # vmap may pick other kernels than the per-module call: float rounding only.
    for b, m in enumerate(modules):
        torch.testing.assert_close(out[b], m(x[b]), atol=1e-4, rtol=1e-4)
    shared = torch.rand(6, *input_shape)
    out = batched_forward(template, stacked, shared, shared_input=True)
    assert out.shape == (3, 6, 5)
    for b, m in enumerate(modules):
        torch.testing.assert_close(out[b], m(shared), atol=1e-4, rtol=1e-4)
    # The models really differ: the comparison is not vacuous.
    assert not torch.allclose(out[0], out[1])


def test_batched_forward_batchnorm_eval_uses_stacked_running_stats():
    cfg = {"stem_channels": 4, "stages": [[4, 1]]}
    modules = [_randomize(build_model("resnet", cfg, (1, 8, 8), 3), s).eval() for s in range(2)]
    stacked = stack_modules(modules)
    assert "stem.1.running_mean" in stacked and "stem.1.num_batches_tracked" not in stacked
    template = build_model("resnet", cfg, (1, 8, 8), 3).eval()
    x = torch.rand(5, 1, 8, 8)
    out = batched_forward(template, stacked, x, shared_input=True)
    for b, m in enumerate(modules):
        torch.testing.assert_close(out[b], m(x), atol=1e-5, rtol=1e-5)
    # Changing a stacked running mean changes that model's output only.
    stacked["stem.1.running_mean"][1] += 1.0
    out2 = batched_forward(template, stacked, x, shared_input=True)
    torch.testing.assert_close(out2[0], out[0])
    assert not torch.allclose(out2[1], out[1])


def test_batched_forward_batchnorm_train_mode_uses_batch_stats():
    cfg = {"stages": [[4]], "norm": "batch"}
    modules = [_randomize(build_model("vgg", cfg, (1, 8, 8), 3), s).train() for s in range(2)]
    stacked = stack_modules(modules)
    template = build_model("vgg", cfg, (1, 8, 8), 3).train()
    x = torch.rand(2, 6, 1, 8, 8)
    out = batched_forward(template, stacked, x)
    for b, m in enumerate(modules):
        torch.testing.assert_close(out[b], m(x[b]), atol=1e-5, rtol=1e-5)


def test_stack_modules_shapes_and_values():
    modules = [
        _randomize(build_model("vgg", {"stages": [[4]], "norm": "batch"}), s) for s in (0, 1)
    ]
    stacked = stack_modules(modules)
    assert set(stacked) == {n for n, _ in modules[0].named_parameters()} | set(
        float_buffers(modules[0])
    )
    for name, t in stacked.items():
        assert t.shape[0] == 2
        assert torch.equal(t[1], modules[1].state_dict()[name])


# ---- ResNet identity block (CLAFusion layer balancing) ---------------------------------


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_resnet_block_with_zero_last_layer_is_identity_on_nonnegative_input(nd, norm):
    """CLAFusion balances depth by inserting identity layers (Sect. 3.2); for a ResNet that
    is a BasicBlock whose conv2 (and bn2) weight is zero: ``relu(0 + x) = x`` for x >= 0."""
    block = _randomize(BasicBlock(nd, 4, 4, stride=1, norm=norm), 3)
    with torch.no_grad():
        block.conv2.weight.zero_()
        if norm == "batch":
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
        else:
            block.conv2.bias.zero_()
    x = torch.rand(3, 4, *([6] * nd))
    for mode in (block.eval, block.train):
        mode()
        assert torch.equal(block(x), x)
    # Only on non-negative inputs: the final ReLU clips negative values.
    xn = x - 0.5
    assert torch.equal(block.eval()(xn), xn.clamp(min=0))
    assert not torch.equal(xn.clamp(min=0), xn)


def test_resnet_with_inserted_identity_block_is_the_same_function():
    short = _randomize(
        build_model("resnet", {"stem_channels": 4, "stages": [[4, 1], [6, 1]]}, (1, 8, 8), 3), 0
    ).eval()
    deep = build_model("resnet", {"stem_channels": 4, "stages": [[4, 2], [6, 1]]}, (1, 8, 8), 3)
    deep = _randomize(deep, 1).eval()
    state = deep.state_dict()
    for k, v in short.state_dict().items():
        k_deep = k.replace("layers.1.", "layers.2.")  # second stage moves down one block
        state[k_deep] = v.clone()
    deep.load_state_dict(state)
    with torch.no_grad():
        deep.layers[1].conv2.weight.zero_()
        deep.layers[1].bn2.weight.zero_()
        deep.layers[1].bn2.bias.zero_()
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(deep(x), short(x), atol=1e-6, rtol=1e-6)
