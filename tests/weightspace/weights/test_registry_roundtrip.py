"""Exact vectorize round trip for every architecture of the project's registry.

Skipped while :mod:`weightspace.nets` does not provide ``build_model`` and
``ARCHITECTURES`` yet.
"""

from __future__ import annotations

import pytest
import torch

from weightspace.weights import (
    ChunkLayout,
    ParameterSpec,
    chunk,
    module_to_vector,
    state_dicts,
    unchunk,
    unvectorize,
    vector_to_module_,
    vectorize,
)

nets = pytest.importorskip("weightspace.nets")
if not (hasattr(nets, "build_model") and hasattr(nets, "ARCHITECTURES")):
    pytest.skip("weightspace.nets has no build_model / ARCHITECTURES yet", allow_module_level=True)

INPUT_SHAPE = (1, 8, 8)
NAMES = sorted(nets.ARCHITECTURES)


def build(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = nets.build_model(name, config={}, input_shape=INPUT_SHAPE, n_classes=10)
    with torch.no_grad():  # give BatchNorm layers (if any) non-default statistics
        model.train()
        model(torch.randn(8, *INPUT_SHAPE))
    return model.eval()


def test_registry_is_not_empty() -> None:
    assert NAMES, "weightspace.nets.ARCHITECTURES is empty"


@pytest.mark.parametrize("name", NAMES)
def test_exact_round_trip(name: str) -> None:
    models = [build(name, seed) for seed in range(3)]
    spec = ParameterSpec.from_module(models[0])
    assert ParameterSpec.from_module(models[1]).fingerprint == spec.fingerprint
    matrix = vectorize([m.state_dict() for m in models], spec)
    assert matrix.shape == (3, spec.numel)
    assert not torch.equal(matrix[0], matrix[1])

    back = unvectorize(matrix, spec)
    for i, sd in enumerate(state_dicts(back)):
        for key, value in sd.items():
            assert torch.equal(value, models[i].state_dict()[key]), (name, i, key)

    layout = ChunkLayout.from_spec(spec, 64)
    assert torch.equal(unchunk(chunk(matrix, layout), layout), matrix)

    x = torch.randn(4, *INPUT_SHAPE)
    fresh = build(name, seed=123)
    vector_to_module_(matrix[2], fresh, spec)
    with torch.no_grad():
        assert torch.equal(fresh(x), models[2](x))
    assert torch.equal(module_to_vector(fresh, spec), matrix[2])
