"""WeightFormer's weight tokens: one token per output unit of every generated layer.

WeightFormer (Fei et al., "Meta-Ensemble Parameter Learning", Section 3.1
"Representation of model parameters"): *"we consider the encoding of k x k x n_input x
n_output convolutional kernels as n_output tokens with weight slices of k^2 x n_input
dimensionality and fully-connected logits layer n_input x n_output weights as n_output
tokens with dimensionality of n_input"*; *"the concatenated weight sequence of different
models is then fed into weight embedding dictionary layer by layer"*, each token told
apart by its model id and its relative position among one model's tokens.

* Every Linear, Conv1d and Conv2d is one generated layer with ``n_out`` tokens. Token
  ``o`` is the row ``W[o, :]`` (Linear, ``n_in`` values) or output channel ``o``'s
  kernel ``W[o]`` flattened (Conv, ``n_in * prod(k)`` values).
* The paper describes weight matrices only. So that every parameter is generated and
  the tokens invert exactly, unit ``o``'s bias ``b[o]`` is appended to its token, and
  when a BatchNorm1d/2d directly follows the layer (the next module with parameters in
  ``named_modules()`` order, with ``num_features == n_out``: the registry's VGG with
  ``norm="batch"``, the ResNet's conv1 -> bn1, conv2 -> bn2, shortcut conv -> BN) its
  affine ``gamma[o]`` and ``beta[o]`` are appended too: a token is
  ``cat(W[o].flatten(), b[o], gamma[o], beta[o])`` (the pieces that exist), of width
  ``d_layer`` (:attr:`LayerTokens.width`).
* BatchNorm running statistics are buffers, not tokens, and :func:`detokenize` does not
  return them: a generated student needs its BatchNorm statistics re-estimated on data
  before eval-mode use, e.g. with
  :func:`weightspace.fusion.otfusion.recompute_batchnorm_stats`.

:class:`TokenLayout` (JSON-able, fingerprinted) fixes the layers, token widths and the
state-dict tensors of each token, covering every parameter of the architecture's
:class:`~weightspace.weights.spec.ParameterSpec` exactly once. :func:`tokenize` turns
``T`` teachers into one ``(T, n_out, width)`` tensor per layer and :func:`detokenize` is
its bit-exact inverse. :func:`concat_teachers` / :func:`split_teachers` move to and from
one layer's concatenated sequence, whose model ids and positions are
:func:`teacher_index` and :func:`unit_index`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.generators.weight_token_layout import (
    _MAX_REPORTED,
    LayerTokens,
    TokenLayout,
    _check_positive,
)
from weightspace.weights.stacking import as_state_dict_list, stack_state_dicts

__all__ = [
    "LayerTokens",
    "TokenLayout",
    "concat_teachers",
    "detokenize",
    "split_teachers",
    "teacher_index",
    "tokenize",
    "unit_index",
]

Teachers = Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]
"""``{name: Tensor (T, *shape)}`` (a stack of ``T`` teachers) or ``T`` state dicts."""


def tokenize(
    layout: TokenLayout, states: Teachers, *, check_finite: bool = True
) -> list[torch.Tensor]:
    """Tokens of ``T`` teachers, one tensor per layer.

    Parameters
    ----------
    layout : TokenLayout
    states : mapping name -> Tensor (T, *shape), or sequence of T state dicts
        E.g. :func:`weightspace.weights.stacking.stack_state_dicts` or ``[m.state_dict()
        for m in teachers]``. BatchNorm running statistics may be present (ignored).
    check_finite : bool
        Reject NaN / inf weights (one reduction per tensor, one host sync).

    Returns
    -------
    list of Tensor
        ``tokens[l]`` of shape ``(T, n_out_l, width_l)``; ``tokens[l][t, o]`` is unit
        ``o``'s token of teacher ``t`` in ``layout.layers[l]``. Same dtype and device
        as the teachers; the tensors own their memory.

    Raises
    ------
    CheckpointMismatchError
        If the teachers are not of the layout's architecture (missing, unexpected or
        wrongly shaped tensors): the project's error for weights that do not match a
        parameter spec (:meth:`ParameterSpec.check_state_dict`).
    NonFiniteWeightsError
        Naming the teacher index and the parameter holding NaN / inf.
    EmptyZooError
        If there are no teachers.
    """
    stacked, n_teachers = _stacked(layout, states)
    if check_finite:
        _raise_if_nonfinite(layout, stacked)
    return [
        torch.cat([stacked[n].reshape(n_teachers, e.n_out, w) for n, w in e.pieces], dim=-1)
        for e in layout.layers
    ]


def detokenize(layout: TokenLayout, tokens: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters of ``T`` models from their tokens: the exact inverse of :func:`tokenize`.

    Parameters
    ----------
    layout : TokenLayout
    tokens : sequence of Tensor
        ``tokens[l]`` of shape ``(T, n_out_l, width_l)`` (``t[None]`` for one model).

    Returns
    -------
    dict of str to Tensor
        ``{name: Tensor (T, *shape)}`` for every parameter of ``layout.spec``, in spec
        order: reshaped slices of the tokens (differentiable, possibly views). No
        BatchNorm running statistics: load with ``load_state_dict(sd, strict=False)`` and
        re-estimate them, or pass them to ``functional_call`` with these parameters.

    Raises
    ------
    ShapeError
        If the number of layers, a shape or the model count ``T`` disagrees.
    """
    n_models = _check_tokens(layout, tokens)
    out: dict[str, torch.Tensor] = {}
    for entry, tok in zip(layout.layers, tokens, strict=True):
        for name, cols in entry.piece_slices:
            out[name] = tok[..., cols].reshape(n_models, *layout.shapes[name])
    return {name: out[name] for name in layout.shapes}


def concat_teachers(tokens: torch.Tensor) -> torch.Tensor:
    """One layer's tokens of ``T`` teachers as one sequence, teacher 0's tokens first.

    Parameters
    ----------
    tokens : Tensor, shape (..., T, n_out, width)
        Leading batch dimensions are kept.

    Returns
    -------
    Tensor, shape (..., T * n_out, width)
        Row ``j`` is teacher ``j // n_out``'s token of unit ``j % n_out``.
    """
    if tokens.dim() < 3:
        raise ShapeError(
            f"expected tokens of shape (..., T, n_out, width), got {tuple(tokens.shape)}: "
            "pass one layer's tokens, tokenize(layout, states)[layer]"
        )
    return tokens.flatten(-3, -2)


def split_teachers(seq: torch.Tensor, n_teachers: int) -> torch.Tensor:
    """Inverse of :func:`concat_teachers`: ``(..., T * n_out, width) -> (..., T, n_out, width)``."""
    _check_positive("n_teachers", n_teachers)
    if seq.dim() < 2 or seq.shape[-2] % n_teachers != 0:
        raise ShapeError(
            f"expected a sequence of shape (..., T * n_out, width) whose length T={n_teachers} "
            f"divides, got {tuple(seq.shape)}"
        )
    return seq.unflatten(-2, (n_teachers, seq.shape[-2] // n_teachers))


def teacher_index(
    layout: TokenLayout, layer_index: int, n_teachers: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Model id of every row of a layer's :func:`concat_teachers` sequence.

    Returns
    -------
    LongTensor, shape (n_teachers * n_out,)
        Entry ``j`` is ``j // n_out``, with ``n_out`` of ``layout.layers[layer_index]``.
    """
    n_out = _layer(layout, layer_index).n_out
    _check_positive("n_teachers", n_teachers)
    return torch.arange(n_teachers, device=device).repeat_interleave(n_out)


def unit_index(
    layout: TokenLayout, layer_index: int, n_teachers: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Relative position (output unit) of every row of a layer's concatenated sequence.

    Returns
    -------
    LongTensor, shape (n_teachers * n_out,)
        Entry ``j`` is ``j % n_out``, with ``n_out`` of ``layout.layers[layer_index]``.
    """
    n_out = _layer(layout, layer_index).n_out
    _check_positive("n_teachers", n_teachers)
    return torch.arange(n_out, device=device).repeat(n_teachers)


def _stacked(layout: TokenLayout, states: Teachers) -> tuple[Mapping[str, torch.Tensor], int]:
    """The teachers as ``{name: (T, *shape)}`` checked against the layout, and ``T``."""
    if isinstance(states, Mapping):
        _reject_unexpected(layout, states, "the stacked teachers")
        n_teachers = layout.spec.check_state_dict(states, stacked=True, strict=False) or 0
        stacked = states
    else:
        sds = as_state_dict_list(states)
        for i, sd in enumerate(sds):
            _reject_unexpected(layout, sd, f"teacher {i}")
        stacked, n_teachers = stack_state_dicts(sds, layout.spec), len(sds)
    if n_teachers == 0:
        raise EmptyZooError("the stacked teachers hold 0 models: select at least one teacher")
    return stacked, n_teachers


def _reject_unexpected(layout: TokenLayout, state: Mapping[str, torch.Tensor], who: str) -> None:
    """Raise on floating-point tensors that are neither parameters nor buffers of the layout."""
    known = set(layout.shapes) | set(layout.buffers)
    extra = [
        name
        for name, t in state.items()
        if name not in known and isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    if extra:
        raise CheckpointMismatchError(
            f"{who} has tensors that the token layout does not know: {extra[:_MAX_REPORTED]}, "
            f"so the teachers are of another architecture than the layout (fingerprint "
            f"{layout.fingerprint[:12]}). Fix: build the layout with TokenLayout.from_module "
            "on a module of the teachers' architecture, or select teachers of this one"
        )


def _raise_if_nonfinite(layout: TokenLayout, stacked: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteWeightsError` naming each teacher and parameter with NaN/inf.

    NaN and inf propagate through a sum, so finite sums prove every element finite: the
    common case costs one reduction per tensor and one sync. The per-teacher diagnosis
    runs only otherwise (and tells real NaN/inf from an overflowing float16 sum).
    """
    names = list(layout.shapes)
    if bool(torch.isfinite(torch.stack([stacked[n].sum().float() for n in names])).all()):
        return
    problems, bad = [], set()
    for name in names:
        flat = stacked[name].flatten(1)
        for i in (~torch.isfinite(flat)).any(dim=1).nonzero().flatten().tolist():
            bad.add(i)
            what = "NaN" if bool(torch.isnan(flat[i]).any()) else "inf"
            problems.append(f"teacher {i}'s parameter {name!r} holds {what}")
    if problems:
        raise NonFiniteWeightsError(
            f"non-finite teacher weights: {'; '.join(problems[:_MAX_REPORTED])}. Fix: drop "
            f"or retrain teachers {sorted(bad)} (0-based), or pass check_finite=False"
        )


def _check_tokens(layout: TokenLayout, tokens: Sequence[torch.Tensor]) -> int:
    """``T`` of well-shaped tokens; :class:`ShapeError` naming the first bad layer."""
    if len(tokens) != layout.n_layers:
        raise ShapeError(
            f"expected {layout.n_layers} token tensors (one per layer), got {len(tokens)}"
        )
    n_models = int(tokens[0].shape[0]) if isinstance(tokens[0], torch.Tensor) else 0
    for entry, tok in zip(layout.layers, tokens, strict=True):
        expected = (n_models, entry.n_out, entry.width)
        got = tuple(tok.shape) if isinstance(tok, torch.Tensor) else type(tok).__name__
        if got != expected or n_models == 0:
            raise ShapeError(
                f"tokens of layer {entry.layer!r}: expected shape (T={n_models}, "
                f"{entry.n_out}, {entry.width}) with T the model count of the first layer, got "
                f"{got}; detokenize takes what tokenize returns (t[None] for one model)"
            )
    return n_models


def _layer(layout: TokenLayout, layer_index: int) -> LayerTokens:
    if not isinstance(layer_index, int) or not 0 <= layer_index < layout.n_layers:
        raise InvalidParameterError(
            f"layer_index must be an int in [0, {layout.n_layers}), got {layer_index!r}"
        )
    return layout.layers[layer_index]
