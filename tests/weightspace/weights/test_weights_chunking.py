"""Tests of weightspace.weights.chunking: layouts, exact inverses, coverage, padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import CheckpointMismatchError, InvalidParameterError, ShapeError
from weightspace.weights import PARAMETER, ChunkLayout, ParameterSpec, chunk, unchunk, vectorize


def tiny_spec() -> ParameterSpec:
    """Layers: "a" (8 elements), "b" (3), "" (1, a top-level parameter); D = 12."""
    return ParameterSpec.from_entries(
        [
            ("a.weight", (2, 3), PARAMETER),
            ("a.bias", (2,), PARAMETER),
            ("b.weight", (3,), PARAMETER),
            ("scale", (1,), PARAMETER),
        ]
    )


def cnn_spec() -> ParameterSpec:
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)
    )
    return ParameterSpec.from_module(module)


def as_list(t: torch.Tensor) -> list:
    return t.tolist()


# ---------------------------------------------------------------------- hand-checked layouts
def test_layer_wise_layout_by_hand() -> None:
    spec = tiny_spec()
    assert spec.layers == ("a", "b", "")
    layout = ChunkLayout.from_spec(spec, 3)
    assert layout.layer_names == ("a", "b", "")
    assert as_list(layout.layer_id) == [0, 0, 0, 1, 2]
    assert as_list(layout.position) == [0, 1, 2, 0, 0]
    assert as_list(layout.start) == [0, 3, 6, 8, 11]
    assert as_list(layout.length) == [3, 3, 2, 3, 1]
    assert as_list(layout.mask) == [
        [True, True, True],
        [True, True, True],
        [True, True, False],
        [True, True, True],
        [True, False, False],
    ]
    assert layout.num_chunks == 5
    assert layout.padding == 3
    assert as_list(layout.chunks_of("a")) == [0, 1, 2]

    layout4 = ChunkLayout.from_spec(spec, 4)  # divides layer "a" exactly
    assert as_list(layout4.layer_id) == [0, 0, 1, 2]
    assert as_list(layout4.position) == [0, 1, 0, 0]
    assert as_list(layout4.start) == [0, 4, 8, 11]
    assert as_list(layout4.length) == [4, 4, 3, 1]


def test_model_wise_layout_by_hand() -> None:
    layout = ChunkLayout.from_spec(tiny_spec(), 5, per_layer=False)
    assert as_list(layout.start) == [0, 5, 10]
    assert as_list(layout.length) == [5, 5, 2]
    # layer of each chunk's FIRST element: 0 and 5 lie in "a" (0..7), 10 in "b" (8..10).
    assert as_list(layout.layer_id) == [0, 0, 1]
    assert as_list(layout.position) == [0, 1, 0]
    assert layout.padding == 3

    layout2 = ChunkLayout.from_spec(tiny_spec(), 4, per_layer=False)
    assert as_list(layout2.layer_id) == [0, 0, 1]  # starts 0, 4, 8
    assert as_list(layout2.length) == [4, 4, 4]
    assert layout2.padding == 0


def test_zero_size_layer_gets_no_chunk() -> None:
    spec = ParameterSpec.from_entries(
        [("a.w", (3,), PARAMETER), ("e.w", (0,), PARAMETER), ("b.w", (2,), PARAMETER)]
    )
    layer_wise = ChunkLayout.from_spec(spec, 2)
    assert as_list(layer_wise.layer_id) == [0, 0, 2]
    model_wise = ChunkLayout.from_spec(spec, 3, per_layer=False)
    assert as_list(model_wise.layer_id) == [0, 2]  # chunk 1 starts at 3, first element of "b"
    x = torch.randn(2, 5)
    assert torch.equal(unchunk(chunk(x, layer_wise), layer_wise), x)


# ---------------------------------------------------------------------- round trips
def chunk_sizes(spec: ParameterSpec) -> list[int]:
    sizes = [spec.layer_numel(layer) for layer in spec.layers]
    divisor = next(c for c in range(7, 1, -1) if any(n % c == 0 and n > c for n in sizes))
    return [1, 2, 3, divisor, 16, max(sizes) + 5, spec.numel + 1]


@pytest.mark.parametrize("per_layer", [True, False])
@pytest.mark.parametrize("make_spec", [tiny_spec, cnn_spec])
def test_chunk_unchunk_exact_and_coverage(make_spec, per_layer) -> None:
    spec = make_spec()
    d = spec.numel
    # Distinct non-zero values, so coverage is checkable by value.
    matrix = torch.arange(1, 3 * d + 1, dtype=torch.float32).reshape(3, d)
    for c in chunk_sizes(spec):
        layout = ChunkLayout.from_spec(spec, c, per_layer=per_layer)
        chunks = chunk(matrix, layout)
        assert chunks.shape == (3, layout.num_chunks, c)
        assert chunks.dtype == matrix.dtype
        assert torch.equal(unchunk(chunks, layout), matrix), c
        # Every real element exactly once, in order; padding is zero and masked out.
        real = chunks[:, layout.mask]
        assert torch.equal(real, matrix), c
        assert torch.count_nonzero(chunks[:, ~layout.mask]) == 0
        assert int(layout.mask.sum()) == d
        assert torch.equal(layout.length, layout.mask.sum(dim=1))
        # start/length describe the same elements.
        for m in range(layout.num_chunks):
            s, n = int(layout.start[m]), int(layout.length[m])
            assert torch.equal(chunks[:, m, :n], matrix[:, s : s + n])


@pytest.mark.parametrize("c", [1, 3, 4, 50])
def test_layer_wise_chunks_never_straddle_layers(c) -> None:
    spec = cnn_spec()
    layout = ChunkLayout.from_spec(spec, c)
    layer_of_column = torch.empty(spec.numel, dtype=torch.long)
    for i, layer in enumerate(spec.layers):
        layer_of_column[spec.layer_slices[layer]] = i
    ids = chunk(layer_of_column[None].float() + 1, layout)[0] - 1  # padding -> -1
    for m in range(layout.num_chunks):
        real = ids[m][layout.mask[m]]
        assert torch.all(real == layout.layer_id[m])
        if c == 1 or layout.length[m] == c:
            continue
        # A padded chunk is the last of its layer.
        assert m + 1 == layout.num_chunks or layout.layer_id[m + 1] != layout.layer_id[m]
    # Positions count up from 0 within every layer.
    for i in range(len(spec.layers)):
        pos = layout.position[layout.layer_id == i]
        assert torch.equal(pos, torch.arange(pos.numel()))


def test_model_wise_only_last_chunk_padded_and_layer_is_first_element() -> None:
    spec = cnn_spec()
    layout = ChunkLayout.from_spec(spec, 7, per_layer=False)
    assert torch.all(layout.length[:-1] == 7)
    for m in range(layout.num_chunks):
        first = int(layout.start[m])
        layer = next(name for name, sl in spec.layer_slices.items() if sl.start <= first < sl.stop)
        assert layout.layer_names[int(layout.layer_id[m])] == layer


def test_unchunk_ignores_padding_content() -> None:
    spec = tiny_spec()
    layout = ChunkLayout.from_spec(spec, 5)
    matrix = torch.randn(2, spec.numel)
    chunks = chunk(matrix, layout)
    chunks[:, ~layout.mask] = 123.0
    assert torch.equal(unchunk(chunks, layout), matrix)


def test_chunk_of_vectorized_models_round_trips_to_state_dicts() -> None:
    spec = cnn_spec()
    stacked = {e.name: torch.randn(2, *e.shape, dtype=torch.float64) for e in spec.entries}
    matrix = vectorize(stacked, spec)
    layout = ChunkLayout.from_spec(spec, 32)
    assert torch.equal(unchunk(chunk(matrix, layout), layout), matrix)
    assert chunk(matrix, layout).dtype == torch.float64


# ---------------------------------------------------------------------- storage and errors
@pytest.mark.parametrize("per_layer", [True, False])
def test_to_dict_from_dict_round_trip(per_layer) -> None:
    spec = cnn_spec()
    layout = ChunkLayout.from_spec(spec, 9, per_layer=per_layer)
    data = layout.to_dict()
    again = ChunkLayout.from_dict(data)
    assert again == layout
    for name in ("layer_id", "position", "start", "length", "mask"):
        assert torch.equal(getattr(again, name), getattr(layout, name))
    again.check_spec(spec)
    assert layout != ChunkLayout.from_spec(spec, 10, per_layer=per_layer)


def test_from_dict_rejects_tampered_layout() -> None:
    data = ChunkLayout.from_spec(tiny_spec(), 3).to_dict()
    data["length"] = data["length"].clone()
    data["length"][0] = 2
    with pytest.raises(InvalidParameterError, match="length is inconsistent"):
        ChunkLayout.from_dict(data)
    with pytest.raises(InvalidParameterError, match="not a serialized ChunkLayout"):
        ChunkLayout.from_dict({"format": "other"})


def test_errors() -> None:
    spec = tiny_spec()
    with pytest.raises(InvalidParameterError, match="chunk_size"):
        ChunkLayout.from_spec(spec, 0)
    with pytest.raises(InvalidParameterError, match="chunk_size"):
        ChunkLayout.from_spec(spec, 2.5)
    layout = ChunkLayout.from_spec(spec, 3)
    with pytest.raises(ShapeError, match=r"\(N, 12\)"):
        chunk(torch.zeros(12), layout)
    with pytest.raises(ShapeError, match=r"\(N, 5, 3\)"):
        unchunk(torch.zeros(1, 5, 4), layout)
    with pytest.raises(CheckpointMismatchError, match="rebuild"):
        layout.check_spec(cnn_spec())
