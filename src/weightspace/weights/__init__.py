"""Weights as data: parameter specs, (un)vectorization, chunking and normalization.

The layout follows D2NWG (Section 3.2, layer-/model-wise vectorization and equal-size
chunking with padding): :class:`ParameterSpec` fixes the order of an architecture's
tensors, :func:`vectorize` / :func:`vectorize_layers` turn ``N`` models into an
``(N, D)`` matrix or per-layer matrices, :func:`chunk` cuts those into zero-padded
chunks described by a :class:`ChunkLayout`, and :class:`LayerNormalizer` puts every
layer on a common scale. Vectorization and chunking invert bit-exactly;
normalization inverts exactly up to floating-point rounding.
"""

from weightspace.weights.chunking import ChunkLayout, chunk, unchunk
from weightspace.weights.finite import raise_if_nonfinite
from weightspace.weights.normalize import LayerNormalizer
from weightspace.weights.spec import BUFFER, PARAMETER, ParamEntry, ParameterSpec, layer_of
from weightspace.weights.stacking import stack_state_dicts, state_dicts
from weightspace.weights.vectorize import (
    module_to_vector,
    unvectorize,
    unvectorize_layers,
    vector_to_module_,
    vectorize,
    vectorize_layers,
)
from weightspace.weights.weight_set import WeightSet

__all__ = [
    "BUFFER",
    "PARAMETER",
    "ChunkLayout",
    "LayerNormalizer",
    "ParamEntry",
    "ParameterSpec",
    "WeightSet",
    "chunk",
    "layer_of",
    "module_to_vector",
    "raise_if_nonfinite",
    "stack_state_dicts",
    "state_dicts",
    "unchunk",
    "unvectorize",
    "unvectorize_layers",
    "vector_to_module_",
    "vectorize",
    "vectorize_layers",
]
