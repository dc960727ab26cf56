"""Tests of weightspace.weights.vectorize: exact round trips on tensors and modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.weights import (
    ParameterSpec,
    module_to_vector,
    stack_state_dicts,
    state_dicts,
    unvectorize,
    unvectorize_layers,
    vector_to_module_,
    vectorize,
    vectorize_layers,
)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def trained_like(module: nn.Module, seed: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        module.train()
        for _ in range(3):
            module(torch.randn(16, *input_shape))
    return module.eval()


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def random_stacked(spec: ParameterSpec, n: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    return {e.name: torch.randn(n, *e.shape, generator=g).to(dtype) for e in spec.entries}


# ---------------------------------------------------------------------- tensors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_vectorize_unvectorize_bit_exact(dtype) -> None:
    spec = ParameterSpec.from_module(small_cnn())
    stacked = random_stacked(spec, 5, dtype)
    matrix = vectorize(stacked, spec)
    assert matrix.shape == (5, spec.numel)
    assert matrix.dtype == dtype
    # Row-major layout: entry e occupies columns offset:offset+numel.
    e = spec["3.weight"]
    assert torch.equal(matrix[2, e.offset : e.stop], stacked["3.weight"][2].flatten())
    assert_state_equal(unvectorize(matrix, spec), stacked)


def test_list_and_stacked_inputs_agree_and_helpers_invert() -> None:
    spec = ParameterSpec.from_module(mlp())
    stacked = random_stacked(spec, 4)
    sds = state_dicts(stacked)
    assert len(sds) == 4
    assert torch.equal(sds[3]["2.bias"], stacked["2.bias"][3])
    assert sds[3]["2.bias"].untyped_storage().nbytes() == 4 * 4  # own memory, not the stack
    assert_state_equal(stack_state_dicts(sds), stacked)
    assert torch.equal(vectorize(sds, spec), vectorize(stacked, spec))
    views = state_dicts(stacked, clone=False)
    assert views[1]["0.weight"].data_ptr() == stacked["0.weight"][1].data_ptr()


def test_unvectorize_returns_independent_tensors() -> None:
    spec = ParameterSpec.from_module(mlp())
    matrix = torch.randn(1, spec.numel)
    out = unvectorize(matrix, spec)
    out["0.weight"].zero_()
    assert not torch.equal(unvectorize(matrix, spec)["0.weight"], out["0.weight"])


def test_layer_wise_round_trip_and_consistency_with_model_wise() -> None:
    spec = ParameterSpec.from_module(small_cnn())
    stacked = random_stacked(spec, 3)
    layers = vectorize_layers(stacked, spec)
    assert list(layers) == list(spec.layers)
    for layer, block in layers.items():
        assert block.shape == (3, spec.layer_numel(layer))
    matrix = vectorize(stacked, spec)
    assert torch.equal(torch.cat(list(layers.values()), dim=1), matrix)
    assert_state_equal(unvectorize_layers(layers, spec), stacked)
    assert torch.equal(vectorize_layers(state_dicts(stacked), spec)["1"], layers["1"])


def test_unvectorize_layers_rejects_wrong_input() -> None:
    spec = ParameterSpec.from_module(mlp())
    layers = vectorize_layers(random_stacked(spec, 2), spec)
    with pytest.raises(CheckpointMismatchError, match=r"missing layers \['2'\]"):
        unvectorize_layers({k: v for k, v in layers.items() if k != "2"}, spec)
    bad = dict(layers, **{"2": layers["2"][:1]})
    with pytest.raises(ShapeError, match="layer '2' has 1 models"):
        unvectorize_layers(bad, spec)


def test_dtype_override() -> None:
    spec = ParameterSpec.from_module(mlp())
    stacked = random_stacked(spec, 2)
    matrix = vectorize(stacked, spec, dtype=torch.float64)
    assert matrix.dtype == torch.float64
    back = unvectorize(matrix, spec)
    assert all(torch.equal(back[n].float(), stacked[n]) for n in stacked)


# ---------------------------------------------------------------------- errors
def test_nan_in_model_3_names_model_and_parameter() -> None:
    spec = ParameterSpec.from_module(mlp())
    sds = state_dicts(random_stacked(spec, 5))
    sds[3]["2.weight"][1, 2] = float("nan")
    with pytest.raises(NonFiniteWeightsError) as info:
        vectorize(sds, spec)
    message = str(info.value)
    assert "parameter '2.weight' of model 3 (NaN)" in message
    assert "[3]" in message
    assert "check_finite=False" in message
    matrix = vectorize(sds, spec, check_finite=False)
    assert torch.isnan(matrix[3]).sum() == 1
    with pytest.raises(NonFiniteWeightsError, match=r"'2.weight' of model 3"):
        unvectorize(matrix, spec)
    with pytest.raises(NonFiniteWeightsError, match=r"'2.weight' of model 3"):
        vectorize_layers(sds, spec)


def test_inf_is_reported_as_inf() -> None:
    spec = ParameterSpec.from_module(mlp())
    stacked = random_stacked(spec, 2)
    stacked["0.bias"][1, 0] = float("-inf")
    with pytest.raises(NonFiniteWeightsError, match=r"'0.bias' of model 1 \(inf\)"):
        vectorize(stacked, spec)


def test_overflowing_sum_of_finite_float16_weights_is_not_an_error() -> None:
    spec = ParameterSpec.from_module(mlp())
    stacked = {
        e.name: torch.full((2, *e.shape), 60000.0, dtype=torch.float16) for e in spec.entries
    }
    matrix = vectorize(stacked, spec)  # the fast sum check overflows; the diagnosis clears it
    assert not torch.isfinite(matrix.sum())
    assert_state_equal(unvectorize(matrix, spec), stacked)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip_stays_on_device() -> None:
    from weightspace.weights import ChunkLayout, LayerNormalizer, chunk, unchunk

    spec = ParameterSpec.from_module(small_cnn())
    stacked = {k: v.cuda() for k, v in random_stacked(spec, 3).items()}
    matrix = vectorize(stacked, spec)
    assert matrix.is_cuda
    assert_state_equal(unvectorize(matrix, spec), stacked)
    layout = ChunkLayout.from_spec(spec, 7)
    chunks = chunk(matrix, layout)
    assert chunks.is_cuda
    assert torch.equal(unchunk(chunks, layout), matrix)
    norm = LayerNormalizer.fit(matrix, spec)
    torch.testing.assert_close(norm.invert(norm.apply(matrix)), matrix)


def test_missing_key_and_wrong_shape_name_the_model() -> None:
    spec = ParameterSpec.from_module(mlp())
    sds = state_dicts(random_stacked(spec, 4))
    del sds[2]["4.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"model 2: .*missing keys \[4.bias\]"):
        vectorize(sds, spec)
    sds = state_dicts(random_stacked(spec, 4))
    sds[1]["0.weight"] = torch.zeros(5, 7)
    with pytest.raises(CheckpointMismatchError, match=r"model 1: .*0.weight: expected"):
        vectorize(sds, spec)
    with pytest.raises(CheckpointMismatchError, match="has different shapes"):
        stack_state_dicts(sds)


def test_single_state_dict_passed_as_stacked_gets_a_hint() -> None:
    module = mlp()
    spec = ParameterSpec.from_module(module)
    with pytest.raises(CheckpointMismatchError, match="wrap it in a list"):
        vectorize(module.state_dict(), spec)


def test_empty_zoo_and_bad_matrix() -> None:
    spec = ParameterSpec.from_module(mlp())
    with pytest.raises(EmptyZooError):
        vectorize([], spec)
    with pytest.raises(EmptyZooError):
        stack_state_dicts([])
    with pytest.raises(ShapeError, match=f"\\(N, {spec.numel}\\)"):
        unvectorize(torch.zeros(spec.numel), spec)
    with pytest.raises(ShapeError):
        unvectorize(torch.zeros(2, spec.numel + 1), spec)


def test_strict_rejects_extra_float_keys_unless_disabled() -> None:
    module = small_cnn()
    spec = ParameterSpec.from_module(module, include_buffers=False)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys .*running_mean"):
        vectorize([module.state_dict()], spec)
    matrix = vectorize([module.state_dict()], spec, strict=False)
    assert matrix.shape == (1, spec.numel)


# ---------------------------------------------------------------------- modules
def check_module_round_trip(make, input_shape, n_models: int) -> None:
    models = [trained_like(make(), seed, input_shape) for seed in range(n_models)]
    spec = ParameterSpec.from_module(models[0])
    matrix = vectorize([m.state_dict() for m in models], spec)
    assert matrix.shape == (n_models, spec.numel)
    x = torch.randn(4, *input_shape)
    for i, sd in enumerate(state_dicts(unvectorize(matrix, spec))):
        fresh = make()
        missing, unexpected = fresh.load_state_dict(sd, strict=False)
        assert unexpected == []
        assert all(k.endswith("num_batches_tracked") for k in missing)
        fresh.eval()
        with torch.no_grad():
            assert torch.equal(fresh(x), models[i](x))
        assert torch.equal(module_to_vector(fresh, spec), matrix[i])


def test_mlp_round_trip() -> None:
    check_module_round_trip(mlp, (6,), 3)


def test_cnn_with_batchnorm_round_trip_includes_running_stats() -> None:
    check_module_round_trip(small_cnn, (1, 8, 8), 3)
    model = trained_like(small_cnn(), 0, (1, 8, 8))
    spec = ParameterSpec.from_module(model)
    vector = module_to_vector(model, spec)
    e = spec["1.running_var"]
    assert torch.equal(vector[e.offset : e.stop], model[1].running_var)
    assert not torch.equal(model[1].running_var, torch.ones(4))


def test_resnet18_round_trip() -> None:
    torchvision = pytest.importorskip("torchvision")

    def make() -> nn.Module:
        return torchvision.models.resnet18(weights=None, num_classes=10)

    models = [make().eval() for _ in range(2)]
    with torch.no_grad():  # distinct BatchNorm statistics per model
        for seed, model in enumerate(models):
            torch.manual_seed(seed)
            for name, buf in model.named_buffers():
                if name.endswith("running_mean"):
                    buf.normal_(0, 0.1)
                elif name.endswith("running_var"):
                    buf.uniform_(0.5, 1.5)
    spec = ParameterSpec.from_module(models[0])
    assert 11_000_000 < spec.numel < 12_000_000
    assert not any(n.endswith("num_batches_tracked") for n in spec.names)
    matrix = vectorize([m.state_dict() for m in models], spec)
    x = torch.randn(2, 3, 32, 32)
    fresh = make().eval()
    vector_to_module_(matrix[1], fresh, spec)
    with torch.no_grad():
        assert torch.equal(fresh(x), models[1](x))
    assert torch.equal(module_to_vector(fresh, spec), matrix[1])


def test_vector_to_module_in_place_keeps_identity_and_integer_buffers() -> None:
    source = trained_like(small_cnn(), 1, (1, 8, 8))
    target = small_cnn()
    spec = ParameterSpec.from_module(target)
    weight = target[0].weight
    counter = target[1].num_batches_tracked.clone()
    returned = vector_to_module_(module_to_vector(source, spec), target, spec)
    assert returned is target
    assert target[0].weight is weight
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].num_batches_tracked, counter)
    assert torch.equal(target[4].running_mean, source[4].running_mean)


def test_vector_to_module_errors() -> None:
    target = mlp()
    spec = ParameterSpec.from_module(target)
    with pytest.raises(ShapeError, match=f"\\({spec.numel},\\)"):
        vector_to_module_(torch.zeros(spec.numel - 1), target, spec)
    vector = torch.zeros(spec.numel)
    vector[spec["4.weight"].offset] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"'4.weight' of model 0"):
        vector_to_module_(vector, target, spec)
    other = ParameterSpec.from_module(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))
    with pytest.raises(CheckpointMismatchError, match=r"2.weight: expected \(3, 5\)"):
        vector_to_module_(torch.zeros(other.numel), target, other)
