"""Tests of weightspace.weights.spec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import CheckpointMismatchError, InvalidParameterError
from weightspace.weights import BUFFER, PARAMETER, ParamEntry, ParameterSpec, layer_of


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def tiny_spec() -> ParameterSpec:
    return ParameterSpec.from_entries(
        [("a.weight", (2, 3), PARAMETER), ("a.bias", (2,), PARAMETER), ("b.w", (3,), PARAMETER)]
    )


def test_layer_of() -> None:
    assert layer_of("features.0.weight") == "features.0"
    assert layer_of("bias") == ""


def test_from_module_mlp_names_shapes_offsets_layers() -> None:
    spec = ParameterSpec.from_module(mlp())
    assert spec.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert [e.shape for e in spec.entries] == [(3, 4), (3,), (2, 3), (2,)]
    assert [e.offset for e in spec.entries] == [0, 12, 15, 21]
    assert [e.numel for e in spec.entries] == [12, 3, 6, 2]
    assert spec.numel == 23
    assert spec.layers == ("0", "2")
    assert spec.layer_slices == {"0": slice(0, 15), "2": slice(15, 23)}
    assert all(e.kind == PARAMETER for e in spec.entries)


def test_from_module_includes_float_buffers_excludes_integer_ones() -> None:
    spec = ParameterSpec.from_module(small_cnn())
    kinds = {e.name: e.kind for e in spec.entries}
    assert kinds["1.running_mean"] == BUFFER
    assert kinds["1.running_var"] == BUFFER
    assert kinds["1.weight"] == PARAMETER
    assert "1.num_batches_tracked" not in kinds
    assert spec.layers == ("0", "1", "4")
    assert spec.layer_numel("1") == 4 * 4  # weight, bias, running_mean, running_var

    no_buffers = ParameterSpec.from_module(small_cnn(), include_buffers=False)
    assert "1.running_mean" not in no_buffers.names
    assert no_buffers.numel == spec.numel - 8


def test_top_level_parameter_has_empty_layer() -> None:
    module = nn.Module()
    module.scale = nn.Parameter(torch.ones(3))
    module.inner = nn.Linear(2, 2)
    spec = ParameterSpec.from_module(module)
    assert spec["scale"].layer == ""
    assert spec.layers == ("", "inner")


def test_from_state_dict_buffer_names() -> None:
    module = small_cnn()
    sd = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    spec = ParameterSpec.from_state_dict(sd, buffer_names=buffers)
    assert spec == ParameterSpec.from_module(module)
    default = ParameterSpec.from_state_dict(sd)
    assert default["1.running_var"].kind == PARAMETER
    assert "1.num_batches_tracked" not in default.names
    without = ParameterSpec.from_state_dict(sd, buffer_names=buffers, include_buffers=False)
    assert without == ParameterSpec.from_module(module, include_buffers=False)


def test_lazy_module_is_rejected_with_a_fix() -> None:
    with pytest.raises(InvalidParameterError, match="forward pass"):
        ParameterSpec.from_module(nn.LazyLinear(3))


def test_json_round_trip_and_fingerprint_stability() -> None:
    spec = ParameterSpec.from_module(small_cnn())
    text = spec.to_json()
    again = ParameterSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text
    assert again.fingerprint == spec.fingerprint
    assert ParameterSpec.from_json(spec.to_json(indent=2)) == spec
    # Independent constructions of one architecture agree.
    assert ParameterSpec.from_module(small_cnn()).fingerprint == spec.fingerprint
    # The canonical serialization is frozen: this digest must never change silently.
    assert tiny_spec().to_json() == (
        '{"entries":[{"kind":"parameter","layer":"a","name":"a.weight","offset":0,'
        '"shape":[2,3]},{"kind":"parameter","layer":"a","name":"a.bias","offset":6,'
        '"shape":[2]},{"kind":"parameter","layer":"b","name":"b.w","offset":8,"shape":[3]}],'
        '"format":"weightspace.ParameterSpec","version":1}'
    )
    assert tiny_spec().fingerprint == (
        "0d70e2e9c621e08817544cd6f3070d5e1d13916f0d22fa7fcbb0bf4f04528b29"
    )


def test_fingerprint_changes_with_architecture() -> None:
    a = ParameterSpec.from_module(nn.Linear(4, 3))
    b = ParameterSpec.from_module(nn.Linear(3, 4))
    c = ParameterSpec.from_module(nn.Linear(4, 3), include_buffers=False)
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == c.fingerprint  # no buffers either way
    with pytest.raises(CheckpointMismatchError, match="rebuild"):
        a.check_fingerprint(b.fingerprint, "generator checkpoint")
    a.check_fingerprint(a.fingerprint)


def test_from_json_rejects_other_formats() -> None:
    with pytest.raises(InvalidParameterError, match="not a serialized ParameterSpec"):
        ParameterSpec.from_json('{"format": "x", "version": 1, "entries": []}')
    with pytest.raises(InvalidParameterError, match="does not parse"):
        ParameterSpec.from_json("{not json")


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(InvalidParameterError, match="offset"):
        ParameterSpec((ParamEntry("a.w", (2,), 1, "a"),))
    with pytest.raises(InvalidParameterError, match="duplicate"):
        ParameterSpec((ParamEntry("a.w", (2,), 0, "a"), ParamEntry("a.w", (2,), 2, "a")))
    with pytest.raises(InvalidParameterError, match="not adjacent"):
        ParameterSpec.from_entries(
            [("a.w", (1,), PARAMETER), ("b.w", (1,), PARAMETER), ("a.b", (1,), PARAMETER)]
        )
    with pytest.raises(InvalidParameterError, match="kind"):
        ParamEntry("a.w", (2,), 0, "a", kind="weights")
    with pytest.raises(InvalidParameterError, match="at least one entry"):
        ParameterSpec(())


def test_check_state_dict_names_missing_unexpected_and_wrong_shapes() -> None:
    module = mlp()
    spec = ParameterSpec.from_module(module)
    spec.check_state_dict(module.state_dict())

    sd = dict(module.state_dict())
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointMismatchError) as info:
        spec.check_state_dict(sd)
    message = str(info.value)
    assert "missing keys [2.bias]" in message
    assert "unexpected keys [extra.weight]" in message
    assert "0.weight: expected (3, 4), got (5, 4)" in message
    assert "Fix:" in message

    # strict=False tolerates extra keys but not missing ones.
    sd2 = dict(module.state_dict(), **{"extra.weight": torch.zeros(2)})
    spec.check_state_dict(sd2, strict=False)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        spec.check_state_dict(sd2)


def test_check_state_dict_ignores_integer_buffers_and_checks_stacked() -> None:
    module = small_cnn()
    spec = ParameterSpec.from_module(module)
    spec.check_state_dict(module.state_dict())  # num_batches_tracked is not "unexpected"
    stacked = {
        n: t.unsqueeze(0).repeat(3, *([1] * t.dim())) for n, t in module.state_dict().items()
    }
    assert spec.check_state_dict(stacked, stacked=True) == 3
    with pytest.raises(CheckpointMismatchError, match="ONE model"):
        spec.check_state_dict(module.state_dict(), stacked=True)
    stacked["4.bias"] = stacked["4.bias"][:2]
    with pytest.raises(CheckpointMismatchError, match=r"4.bias: has 2 models"):
        spec.check_state_dict(stacked, stacked=True)
