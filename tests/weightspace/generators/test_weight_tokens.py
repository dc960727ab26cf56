"""Tests of weightspace.generators.weight_tokens: WeightFormer's per-unit weight tokens."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
    UnsupportedLayerError,
)
from weightspace.generators.weight_tokens import (
    LayerTokens,
    TokenLayout,
    concat_teachers,
    detokenize,
    split_teachers,
    teacher_index,
    tokenize,
    unit_index,
)
from weightspace.nets.registry import build_model
from weightspace.weights.spec import ParameterSpec
from weightspace.weights.stacking import stack_state_dicts, state_dicts

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = {
    "mlp": ("mlp", {"hidden": [5, 4]}, (1, 4, 4)),
    "mlp-nobias": ("mlp", {"hidden": [5], "bias": False}, (1, 4, 4)),
    "vgg1d": ("vgg", {"stages": [[4], [6]], "hidden": [5]}, (2, 16)),
    "vgg1d-bn": ("vgg", {"stages": [[4], [6]], "hidden": [5], "norm": "batch"}, (2, 16)),
    "vgg2d": ("vgg", {"stages": [[4], [6]], "hidden": [5]}, (3, 8, 8)),
    "vgg2d-bn": ("vgg", {"stages": [[4], [6]], "hidden": [5], "norm": "batch"}, (3, 8, 8)),
    "resnet1d": ("resnet", {"stem_channels": 4, "stages": [[4, 1], [6, 1]]}, (2, 16)),
    "resnet1d-nobn": (
        "resnet",
        {"stem_channels": 4, "stages": [[4, 1], [6, 1]], "norm": "none"},
        (2, 16),
    ),
    "resnet2d": ("resnet", {"stem_channels": 4, "stages": [[4, 1], [6, 1]]}, (3, 8, 8)),
    "resnet2d-nobn": (
        "resnet",
        {"stem_channels": 4, "stages": [[4, 1], [6, 1]], "norm": "none"},
        (3, 8, 8),
    ),
}


def model(key: str, seed: int = 0, n_classes: int = 3) -> nn.Module:
    name, config, shape = ARCHS[key]
    torch.manual_seed(seed)
    return build_model(name, config, shape, n_classes)


def random_stack(layout: TokenLayout, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{name: (n, *shape)}`` of distinct random values for every parameter."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn((n, *shape), generator=g) for name, shape in layout.shapes.items()}


def summary(layout: TokenLayout) -> list[tuple[str, int, int, list[str]]]:
    return [(e.layer, e.n_out, e.width, [n for n, _ in e.pieces]) for e in layout.layers]


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("key", list(ARCHS))
def test_tokenize_detokenize_round_trip_is_exact(key: str) -> None:
    layout = TokenLayout.from_module(model(key))
    stack = random_stack(layout, 3)
    tokens = tokenize(layout, stack)
    assert [tuple(t.shape) for t in tokens] == [(3, e.n_out, e.width) for e in layout.layers]
    assert sum(t.numel() for t in tokens) == 3 * layout.spec.numel  # every value once
    back = detokenize(layout, tokens)
    assert list(back) == list(layout.spec.names)
    for name, value in stack.items():
        assert torch.equal(back[name], value), name


def test_layout_spec_holds_parameters_only_and_lists_buffers() -> None:
    net = model("resnet2d")
    layout = TokenLayout.from_module(net)
    assert layout.spec == ParameterSpec.from_module(net, include_buffers=False)
    assert set(layout.buffers) == {
        n for n, b in net.named_buffers() if b.is_floating_point()
    }  # running_mean/var of 6 BatchNorms, not num_batches_tracked
    assert len(layout.buffers) == 12
    back = detokenize(layout, tokenize(layout, [net.state_dict()]))
    assert not set(back) & set(layout.buffers)


# ---------------------------------------------------------------------- token content
def test_linear_token_is_row_then_bias() -> None:
    torch.manual_seed(0)
    teachers = [build_model("mlp", {"hidden": []}, (3,), 2).state_dict() for _ in range(2)]
    (tokens,) = tokenize(
        TokenLayout.from_module(build_model("mlp", {"hidden": []}, (3,), 2)), teachers
    )
    assert tokens.shape == (2, 2, 4)
    for t, sd in enumerate(teachers):
        for o in range(2):
            expected = torch.tensor([*sd["1.weight"][o].tolist(), sd["1.bias"][o].item()])
            assert torch.equal(tokens[t, o], expected)


def test_conv_bn_token_is_kernel_bias_gamma_beta() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.ReLU())
    layout = TokenLayout.from_module(net)
    stack = random_stack(layout, 2)
    (tokens,) = tokenize(layout, stack)
    assert tokens.shape == (2, 3, 2 * 2 * 2 + 3)
    W, b, g, beta = (stack[k] for k in ("0.weight", "0.bias", "1.weight", "1.bias"))
    for t in range(2):
        for o in range(3):
            expected = [*W[t, o].flatten().tolist(), b[t, o].item(), g[t, o].item()]
            assert torch.equal(tokens[t, o], torch.tensor([*expected, beta[t, o].item()]))


def test_vgg_batchnorm_conv_has_no_bias_in_its_token() -> None:
    layout = TokenLayout.from_module(model("vgg2d-bn"))
    stack = random_stack(layout, 2)
    tokens = tokenize(layout, stack)
    W, g, beta = (stack[k] for k in ("features.0.weight", "features.1.weight", "features.1.bias"))
    for o in range(4):
        expected = torch.cat([W[1, o].flatten(), g[1, o : o + 1], beta[1, o : o + 1]])
        assert torch.equal(tokens[0][1, o], expected)


# ---------------------------------------------------------------------- widths by hand
def test_vgg_token_counts_and_widths_by_hand() -> None:
    # input (3, 8, 8); stages [[4], [6]], 3x3 kernels; head Linear(6, 5), Linear(5, 3).
    batch = TokenLayout.from_module(model("vgg2d-bn"))
    assert summary(batch) == [
        ("features.0", 4, 3 * 9 + 2, ["features.0.weight", "features.1.weight", "features.1.bias"]),
        ("features.4", 6, 4 * 9 + 2, ["features.4.weight", "features.5.weight", "features.5.bias"]),
        ("classifier.1", 5, 6 + 1, ["classifier.1.weight", "classifier.1.bias"]),
        ("classifier.3", 3, 5 + 1, ["classifier.3.weight", "classifier.3.bias"]),
    ]
    plain = TokenLayout.from_module(model("vgg2d"))
    assert plain.widths == (3 * 9 + 1, 4 * 9 + 1, 7, 6)
    assert plain.n_outs == (4, 6, 5, 3)


def test_resnet_and_mlp_token_counts_and_widths_by_hand() -> None:
    # input (2, 16), kernel 3: stem 2->4; block 4->4; block 4->6 with a 1x1 shortcut; fc 6->3.
    layout = TokenLayout.from_module(model("resnet1d"))
    assert [(e.layer, e.n_out, e.width) for e in layout.layers] == [
        ("stem.0", 4, 2 * 3 + 2),
        ("layers.0.conv1", 4, 4 * 3 + 2),
        ("layers.0.conv2", 4, 4 * 3 + 2),
        ("layers.1.conv1", 6, 4 * 3 + 2),
        ("layers.1.conv2", 6, 6 * 3 + 2),
        ("layers.1.shortcut.0", 6, 4 * 1 + 2),
        ("fc", 3, 6 + 1),
    ]
    assert layout.layers[5].pieces[1:] == (
        ("layers.1.shortcut.1.weight", 1),
        ("layers.1.shortcut.1.bias", 1),
    )
    nobn = TokenLayout.from_module(model("resnet1d-nobn"))
    assert nobn.widths == (2 * 3 + 1, 13, 13, 13, 19, 5, 7)
    nobias = TokenLayout.from_module(model("mlp-nobias"))
    assert summary(nobias) == [("1", 5, 16, ["1.weight"]), ("3", 3, 5, ["3.weight"])]


def test_root_module_layer_uses_plain_names() -> None:
    layout = TokenLayout.from_module(nn.Linear(3, 2))
    assert summary(layout) == [("", 2, 4, ["weight", "bias"])]


# ---------------------------------------------------------------------- sequences
def test_teacher_and_unit_index_of_concatenated_sequence() -> None:
    layout = TokenLayout.from_module(model("vgg1d-bn"))
    tokens = tokenize(layout, random_stack(layout, 3))[1]  # n_out = 6
    seq = concat_teachers(tokens)
    teacher = teacher_index(layout, 1, 3)
    unit = unit_index(layout, 1, 3)
    assert seq.shape == (18, layout.widths[1])
    assert teacher.dtype == torch.long and teacher.tolist() == [j // 6 for j in range(18)]
    assert unit.tolist() == [j % 6 for j in range(18)]
    assert torch.equal(seq, tokens[teacher, unit])


def test_concat_split_round_trip_with_batch_dims() -> None:
    x = torch.randn(2, 3, 5, 7)  # (batch, T, n_out, width)
    seq = concat_teachers(x)
    assert seq.shape == (2, 15, 7)
    assert torch.equal(seq[1, 5 * 2 + 4], x[1, 2, 4])
    assert torch.equal(split_teachers(seq, 3), x)
    assert torch.equal(split_teachers(concat_teachers(x[0]), 3), x[0])


def test_sequence_errors() -> None:
    layout = TokenLayout.from_module(model("mlp"))
    with pytest.raises(ShapeError, match=r"T=4 divides"):
        split_teachers(torch.zeros(15, 7), 4)
    with pytest.raises(ShapeError, match=r"\(\.\.\., T, n_out, width\)"):
        concat_teachers(torch.zeros(5, 7))
    with pytest.raises(InvalidParameterError, match=r"layer_index must be an int in \[0, 3\)"):
        teacher_index(layout, 3, 2)
    with pytest.raises(InvalidParameterError, match="n_teachers must be a positive int"):
        unit_index(layout, 0, 0)


# ---------------------------------------------------------------------- function
@pytest.mark.parametrize("key", ["resnet2d", "vgg1d-bn", "mlp"])
def test_detokenized_weights_give_the_teachers_outputs(key: str) -> None:
    teachers = [model(key, seed=s) for s in range(3)]
    x = torch.randn(8, *ARCHS[key][2])
    for t in teachers:  # move BatchNorm running statistics away from their init
        t.train()
        t(x)
        t.eval()
    layout = TokenLayout.from_module(teachers[0])
    params = detokenize(layout, tokenize(layout, [t.state_dict() for t in teachers]))
    for teacher, sd in zip(teachers, state_dicts(params), strict=True):
        fresh = model(key, seed=99).eval()
        missing = fresh.load_state_dict(sd, strict=False).missing_keys
        assert set(missing) == set(layout.buffers)  # tokens: parameters only
        fresh.load_state_dict({n: b for n, b in teacher.named_buffers()}, strict=False)
        with torch.no_grad():
            assert torch.equal(fresh(x), teacher(x))


# ---------------------------------------------------------------------- unsupported layers
@pytest.mark.parametrize(
    ("net", "match"),
    [
        (nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)), r"layer '0' \(Embedding\)"),
        (nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 2)), r"layer '1' \(LSTM\)"),
        (nn.Sequential(nn.Conv2d(4, 6, 3, groups=2)), r"layer '0' \(Conv2d\).*groups=2"),
        (nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)), r"'0' \(BatchNorm1d\).*follows no"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)),
            r"'2' \(BatchNorm1d\).*follows layer '1' \(BatchNorm1d\)",
        ),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5)), r"5 features.*follows layer '0'"),
        (nn.Sequential(nn.ConvTranspose2d(3, 4, 2)), r"ConvTranspose2d"),
        (
            nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))),
            r"layer '0' \(ParametrizedLinear\) has parameters \['bias'\]",
        ),
    ],
)
def test_unsupported_layers_are_named(net: nn.Module, match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match):
        TokenLayout.from_module(net)


def test_tied_parameters_are_rejected() -> None:
    shared = nn.Linear(3, 3)
    with pytest.raises(UnsupportedLayerError, match=r"tied/shared.*'0\.weight', '2\.weight'"):
        TokenLayout.from_module(nn.Sequential(shared, nn.ReLU(), shared))
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    with pytest.raises(UnsupportedLayerError, match=r"tied/shared.*'0\.weight', '1\.weight'"):
        TokenLayout.from_module(nn.Sequential(a, b))


# ---------------------------------------------------------------------- bad teachers
def test_nonfinite_teacher_is_named() -> None:
    layout = TokenLayout.from_module(model("mlp"))
    teachers = [model("mlp", seed=s).state_dict() for s in range(3)]
    teachers[2]["3.weight"][1, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"teacher 2's parameter '3\.weight' holds NaN"):
        tokenize(layout, teachers)
    stack = stack_state_dicts(teachers[:2], layout.spec)
    stack["1.bias"][1, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"teacher 1's parameter '1\.bias' holds inf"):
        tokenize(layout, stack)
    tokens = tokenize(layout, stack, check_finite=False)
    assert torch.isinf(tokens[0][1, 0, -1])


def test_teachers_of_another_architecture_are_rejected() -> None:
    layout = TokenLayout.from_module(model("mlp"))
    other = [model("mlp-nobias").state_dict() for _ in range(2)]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[1\.bias"):
        tokenize(layout, other)
    wider = {n: torch.zeros(2, 7, *s[1:]) for n, s in layout.shapes.items()}
    with pytest.raises(CheckpointMismatchError, match=r"wrong shapes.*1\.weight"):
        tokenize(layout, wider)
    small = TokenLayout.from_module(nn.Sequential(nn.Linear(3, 4)))
    bigger = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"teacher 0 has tensors.*'1\.weight'"):
        tokenize(small, [bigger])
    with pytest.raises(CheckpointMismatchError, match=r"stacked teachers has tensors.*1\.bias"):
        tokenize(small, stack_state_dicts([bigger]))


def test_unstacked_state_dict_and_no_teachers() -> None:
    layout = TokenLayout.from_module(model("mlp"))
    with pytest.raises(CheckpointMismatchError, match="wrap it in a list"):
        tokenize(layout, model("mlp").state_dict())
    with pytest.raises(EmptyZooError):
        tokenize(layout, [])
    with pytest.raises(EmptyZooError, match="0 models"):
        tokenize(layout, random_stack(layout, 0))


def test_detokenize_rejects_wrong_tokens() -> None:
    layout = TokenLayout.from_module(model("mlp"))
    tokens = tokenize(layout, random_stack(layout, 2))
    with pytest.raises(ShapeError, match="expected 3 token tensors"):
        detokenize(layout, tokens[:2])
    with pytest.raises(ShapeError, match=r"layer '3': expected shape \(T=2, 4, 6\)"):
        detokenize(layout, [tokens[0], tokens[1][:, :, :5], tokens[2]])
    with pytest.raises(ShapeError, match=r"layer '5'.*got \(1, 3, 5\)"):
        detokenize(layout, [tokens[0], tokens[1], tokens[2][:1]])


# ---------------------------------------------------------------------- serialization
def test_layout_dict_round_trip_and_fingerprint() -> None:
    layout = TokenLayout.from_module(model("resnet2d"))
    back = TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
    assert back == layout
    assert back.fingerprint == layout.fingerprint
    assert back.layers[0].piece_slices == (
        ("stem.0.weight", slice(0, 27)),
        ("stem.1.weight", slice(27, 28)),
        ("stem.1.bias", slice(28, 29)),
    )
    layout.check_fingerprint(back.fingerprint)
    others = ["resnet2d-nobn", "resnet1d", "vgg2d", "vgg2d-bn", "mlp", "mlp-nobias"]
    prints = {TokenLayout.from_module(model(k)).fingerprint for k in others}
    assert len(prints) == len(others) and layout.fingerprint not in prints
    wider = TokenLayout.from_module(model("resnet2d", n_classes=4))
    assert wider.fingerprint != layout.fingerprint
    with pytest.raises(CheckpointMismatchError, match="token layout"):
        layout.check_fingerprint(wider.fingerprint, "a WeightFormer checkpoint")


def test_corrupt_layout_dicts_are_rejected() -> None:
    data = TokenLayout.from_module(model("vgg2d-bn")).to_dict()
    bad_width = json.loads(json.dumps(data))
    bad_width["layers"][0]["width"] += 1
    with pytest.raises(InvalidParameterError, match="stored width 30"):
        TokenLayout.from_dict(bad_width)
    dropped = json.loads(json.dumps(data))
    dropped["layers"][0]["pieces"].pop()  # the BatchNorm bias is in no token
    del dropped["layers"][0]["width"]
    with pytest.raises(InvalidParameterError, match=r"'features\.1\.bias' is in no token"):
        TokenLayout.from_dict(dropped)
    reshaped = json.loads(json.dumps(data))
    reshaped["layers"][2]["n_out"] = 4
    with pytest.raises(InvalidParameterError, match=r"'classifier\.1\.weight' of shape \(5, 6\)"):
        TokenLayout.from_dict(reshaped)
    with pytest.raises(InvalidParameterError, match="not a serialized TokenLayout"):
        TokenLayout.from_dict({**data, "version": 2})
    with pytest.raises(InvalidParameterError, match="malformed TokenLayout"):
        TokenLayout.from_dict({k: v for k, v in data.items() if k != "layers"})
    with pytest.raises(InvalidParameterError, match="positive int width"):
        LayerTokens(layer="0", n_out=2, pieces=(("0.weight", 0),))
