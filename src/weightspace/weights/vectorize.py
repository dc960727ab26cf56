"""Model-wise and layer-wise vectorization of weights, and their exact inverses.

D2NWG (Section 3.2, "layer-vectorization and chunking") learns the distribution of
weights either from one flat vector per model (*model-wise vectorization*, used for the
classifier-head experiments) or from one flat vector per layer (*layer-wise
vectorization*, used for the cross-architecture and LLM experiments). This module
provides both, for ``N`` models of one architecture at once:

* :func:`vectorize` / :func:`unvectorize`: ``N`` models <-> a matrix ``(N, D)``;
* :func:`vectorize_layers` / :func:`unvectorize_layers`: ``N`` models <-> a dict
  ``{layer: (N, D_layer)}``;
* :func:`module_to_vector` / :func:`vector_to_module_`: one live module <-> ``(D,)``.

Models come either as a list of ``N`` state dicts or as a *stacked* dict
``{name: Tensor (N, *shape)}`` (the layout :func:`torch.func.functional_call` with
``vmap`` uses); :mod:`weightspace.weights.stacking` converts between them.

Every function loops over the spec's entries only, never over models, and copies values
without arithmetic, so the round trips are bit-exact (``torch.equal``). The dtype of the
input is kept (float32 for ordinary models) unless ``dtype`` asks for another one.

Non-finite weights raise :class:`~weightspace.errors.NonFiniteWeightsError` naming the
parameter and the model index (:func:`~weightspace.weights.finite.raise_if_nonfinite`:
one sum over the result, through which NaN and inf propagate; the per-parameter
diagnosis runs only when it is not finite); switch it off with ``check_finite=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    InvalidParameterError,
    ShapeError,
)
from weightspace.weights.finite import raise_if_nonfinite
from weightspace.weights.spec import ParamEntry, ParameterSpec
from weightspace.weights.stacking import (
    StackedParams,
    StateDict,
    as_state_dict_list,
    check_models_match_spec,
)

Params = Sequence[StateDict] | StackedParams


# ---------------------------------------------------------------------- model-wise
def vectorize(
    params: Params,
    spec: ParameterSpec,
    *,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
    strict: bool = True,
) -> torch.Tensor:
    """Flatten ``N`` models into one row each (model-wise vectorization).

    Parameters
    ----------
    params : list of state dicts, or stacked dict
        ``N`` state dicts, or ``{name: Tensor (N, *shape)}``.
    spec : ParameterSpec
        Layout of the vector; row ``i`` holds ``spec.entries`` in order, entry ``e`` at
        columns ``e.offset : e.offset + e.numel`` (row-major flattening of the tensor).
    dtype : torch.dtype, optional
        Output dtype; by default the promoted dtype of the inputs (float32 for ordinary
        models), so nothing is rounded.
    check_finite : bool
        Raise :class:`NonFiniteWeightsError` on NaN or inf.
    strict : bool
        Reject floating-point keys the spec does not have.

    Returns
    -------
    Tensor, shape (N, D)
        On the device of the first input tensor.

    Raises
    ------
    EmptyZooError, CheckpointMismatchError, NonFiniteWeightsError
    """
    get, n_models, dtype, device = _source(params, spec, dtype, strict)
    matrix = _fill(get, spec.entries, n_models, 0, dtype, device)
    if check_finite:
        raise_if_nonfinite(matrix, spec.entries, 0)
    return matrix


def unvectorize(
    matrix: torch.Tensor, spec: ParameterSpec, *, check_finite: bool = True
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`vectorize`: rows back to stacked tensors.

    Parameters
    ----------
    matrix : Tensor, shape (N, D)
        One model per row, ``D == spec.numel``.
    spec : ParameterSpec
        The spec the rows were vectorized with.
    check_finite : bool
        Raise :class:`NonFiniteWeightsError` on NaN or inf (e.g. a diverged generator).

    Returns
    -------
    dict of str to Tensor
        ``{name: Tensor (N, *shape)}`` in spec order, each tensor owning its memory,
        same dtype and device as ``matrix``. Use :func:`state_dicts` for one dict per
        model.
    """
    _check_matrix(matrix, spec.numel, "unvectorize")
    if check_finite:
        raise_if_nonfinite(matrix, spec.entries, 0)
    return _split(matrix, spec.entries, 0)


# ---------------------------------------------------------------------- layer-wise
def vectorize_layers(
    params: Params,
    spec: ParameterSpec,
    *,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
    strict: bool = True,
) -> dict[str, torch.Tensor]:
    """Flatten ``N`` models layer by layer (layer-wise vectorization).

    Parameters
    ----------
    params, spec, dtype, check_finite, strict
        As in :func:`vectorize`.

    Returns
    -------
    dict of str to Tensor
        ``{layer: Tensor (N, D_layer)}`` in ``spec.layers`` order; concatenating the
        values along dim 1 gives :func:`vectorize`'s matrix.
    """
    get, n_models, dtype, device = _source(params, spec, dtype, strict)
    out = {}
    for layer in spec.layers:
        entries = spec.entries_of(layer)
        base = spec.layer_slices[layer].start
        out[layer] = _fill(get, entries, n_models, base, dtype, device)
        if check_finite:
            raise_if_nonfinite(out[layer], entries, base)
    return out


def unvectorize_layers(
    layers: Mapping[str, torch.Tensor], spec: ParameterSpec, *, check_finite: bool = True
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`vectorize_layers`.

    Parameters
    ----------
    layers : mapping of str to Tensor
        ``{layer: Tensor (N, D_layer)}`` with exactly the spec's layers.
    spec : ParameterSpec
    check_finite : bool
        Raise :class:`NonFiniteWeightsError` on NaN or inf.

    Returns
    -------
    dict of str to Tensor
        ``{name: Tensor (N, *shape)}`` in spec order.
    """
    missing = [layer for layer in spec.layers if layer not in layers]
    unexpected = [layer for layer in layers if layer not in spec.layer_slices]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"layer dict does not match the parameter spec: missing layers {missing[:10]}, "
            f"unexpected layers {unexpected[:10]}. Pass the output of vectorize_layers with "
            "the same spec"
        )
    out: dict[str, torch.Tensor] = {}
    n_models = None
    for layer in spec.layers:
        tensor = layers[layer]
        _check_matrix(tensor, spec.layer_numel(layer), f"layer {layer!r}")
        if n_models is None:
            n_models = tensor.shape[0]
        elif tensor.shape[0] != n_models:
            raise ShapeError(
                f"layer {layer!r} has {tensor.shape[0]} models, earlier layers have {n_models}"
            )
        entries = spec.entries_of(layer)
        base = spec.layer_slices[layer].start
        if check_finite:
            raise_if_nonfinite(tensor, entries, base)
        out.update(_split(tensor, entries, base))
    return out


# ---------------------------------------------------------------------- one module
def module_to_vector(
    module: nn.Module,
    spec: ParameterSpec | None = None,
    *,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
    strict: bool = True,
) -> torch.Tensor:
    """Flatten one module's weights.

    Parameters
    ----------
    module : nn.Module
    spec : ParameterSpec, optional
        Defaults to ``ParameterSpec.from_module(module)`` (buffers included).
    dtype, check_finite, strict
        As in :func:`vectorize`.

    Returns
    -------
    Tensor, shape (D,)
        A detached copy.
    """
    if spec is None:
        spec = ParameterSpec.from_module(module)
    sd = module.state_dict()
    spec.check_state_dict(sd, strict=strict)
    stacked = {e.name: sd[e.name].unsqueeze(0) for e in spec.entries}
    return vectorize(stacked, spec, dtype=dtype, check_finite=check_finite, strict=False)[0]


def vector_to_module_(
    vector: torch.Tensor,
    module: nn.Module,
    spec: ParameterSpec | None = None,
    *,
    check_finite: bool = True,
    strict: bool = True,
) -> nn.Module:
    """Copy a flat vector into a module's parameters and buffers, in place.

    The module's tensors keep their identity (optimizers holding them stay valid),
    device and dtype; tensors outside the spec (``num_batches_tracked``) are untouched.

    Parameters
    ----------
    vector : Tensor, shape (D,) or (1, D)
    module : nn.Module
    spec : ParameterSpec, optional
        Defaults to ``ParameterSpec.from_module(module)``.
    check_finite, strict
        As in :func:`vectorize`.

    Returns
    -------
    nn.Module
        ``module`` itself.
    """
    if spec is None:
        spec = ParameterSpec.from_module(module)
    if vector.dim() == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.dim() != 1 or vector.shape[0] != spec.numel:
        raise ShapeError(
            f"vector_to_module_ expects a vector of shape ({spec.numel},) (or (1, "
            f"{spec.numel})), got {tuple(vector.shape)}; use unvectorize + state_dicts for "
            "several models"
        )
    if check_finite:
        raise_if_nonfinite(vector.unsqueeze(0), spec.entries, 0)
    target = module.state_dict(keep_vars=True)
    spec.check_state_dict(target, strict=strict)
    with torch.no_grad():
        for e in spec.entries:
            target[e.name].copy_(vector[e.offset : e.stop].view(e.shape))
    return module


# ---------------------------------------------------------------------- internals
def _source(
    params: Params, spec: ParameterSpec, dtype: torch.dtype | None, strict: bool
) -> tuple[Callable[[ParamEntry], torch.Tensor], int, torch.dtype, torch.device]:
    """Return ``(get(entry) -> Tensor (N, *shape), N, dtype, device)`` for either input."""
    if isinstance(params, Mapping):
        n_models = spec.check_state_dict(params, stacked=True, strict=strict)
        first = params[spec.entries[0].name]

        def get(entry: ParamEntry) -> torch.Tensor:
            return params[entry.name]

        dtypes = [params[n].dtype for n in spec.names]
    elif isinstance(params, Sequence) and not isinstance(params, str | bytes):
        sds = as_state_dict_list(params)
        check_models_match_spec(sds, spec, strict)
        n_models = len(sds)
        first = sds[0][spec.entries[0].name]

        def get(entry: ParamEntry) -> torch.Tensor:
            return torch.stack([sd[entry.name] for sd in sds])

        dtypes = [sds[0][n].dtype for n in spec.names]
    else:
        raise InvalidParameterError(
            f"params must be a list of state dicts or a stacked dict {{name: Tensor (N, ...)}}, "
            f"got {type(params).__name__}"
        )
    if n_models == 0:
        raise EmptyZooError("the stacked tensors hold 0 models; there is nothing to vectorize")
    if dtype is None:
        dtype = dtypes[0]
        for d in dtypes[1:]:
            dtype = torch.promote_types(dtype, d)
    return get, n_models, dtype, first.device


def _fill(
    get: Callable[[ParamEntry], torch.Tensor],
    entries: Sequence[ParamEntry],
    n_models: int,
    base: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    width = sum(e.numel for e in entries)
    out = torch.empty((n_models, width), dtype=dtype, device=device)
    for e in entries:
        out[:, e.offset - base : e.stop - base].copy_(get(e).reshape(n_models, e.numel))
    return out


def _split(
    matrix: torch.Tensor, entries: Sequence[ParamEntry], base: int
) -> dict[str, torch.Tensor]:
    n_models = matrix.shape[0]
    return {
        e.name: matrix[:, e.offset - base : e.stop - base]
        .reshape(n_models, *e.shape)
        .clone(memory_format=torch.contiguous_format)
        for e in entries
    }


def _check_matrix(matrix: torch.Tensor, width: int, what: str) -> None:
    if not isinstance(matrix, torch.Tensor):
        raise ShapeError(f"{what}: expected a Tensor, got {type(matrix).__name__}")
    if matrix.dim() != 2 or matrix.shape[1] != width:
        hint = " (add a model dimension with x[None])" if matrix.dim() == 1 else ""
        raise ShapeError(f"{what}: expected shape (N, {width}), got {tuple(matrix.shape)}{hint}")
    if not matrix.is_floating_point():
        raise ShapeError(f"{what}: expected a floating-point tensor, got {matrix.dtype}")
