"""Layer balancing by merging (CLAFusion, Nguyen et al., §3.2 "Merge layers in model A").

Instead of deepening the shallower model B (:mod:`weightspace.fusion.balance`), the
deeper MLP A loses its unmatched hidden layers: a hidden layer between ``W1`` and ``W2`` is
removed by connecting its neighbours with ``W = W2 D W1``, where ``D`` is a 0/1 diagonal
estimate of the removed layer's ReLU mask (:func:`relu_mask_estimate`: sign of sum,
majority vote or average of sign over ``t`` samples). The paper defines merging for MLPs
only.

Every function returns a new module (the input is deep-copied, never changed).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import InvalidParameterError, ShapeError, UnsupportedLayerError
from weightspace.fusion.balance import check_mapping, children, index_of
from weightspace.fusion.structure import describe, family_of

ESTIMATES = ("sign_of_sum", "majority", "average")
"""Estimates of the ReLU mask ``D`` of a merged layer (§3.2, "Merge layers in model A")."""


def _step(z: torch.Tensor) -> torch.Tensor:
    return (z >= 0).to(z.dtype)


def relu_mask_estimate(preacts: torch.Tensor, estimate: str) -> torch.Tensor:
    """Estimate the diagonal of the ReLU mask ``D`` of a layer (§3.2).

    Parameters
    ----------
    preacts : Tensor, shape (t, p) or (t, p, *spatial)
        Pre-activations of the layer's ``p`` neurons on ``t`` samples (spatial positions
        count as further samples).
    estimate : {"sign_of_sum", "majority", "average"}
        ``step(sum_j z_j)`` with ``step(x) = 1`` if ``x >= 0``; 1 if at least half the
        samples have ``z > 0``; or ``mean_j step(z_j)``.

    Returns
    -------
    Tensor, shape (p,)
        Values in ``{0, 1}`` (``[0, 1]`` for ``"average"``), floating point.
    """
    if estimate not in ESTIMATES:
        raise InvalidParameterError(
            f"unknown ReLU mask estimate {estimate!r}; choose one of {list(ESTIMATES)}"
        )
    if preacts.ndim < 2 or preacts.shape[0] == 0:
        raise ShapeError(
            f"preacts must have shape (t, p) or (t, p, *spatial) with t >= 1, got "
            f"{tuple(preacts.shape)}"
        )
    z = preacts if preacts.is_floating_point() else preacts.float()
    z = z.transpose(0, 1).reshape(z.shape[1], -1)
    if estimate == "sign_of_sum":
        return _step(z.sum(dim=1))
    if estimate == "majority":
        return (2 * (z > 0).sum(dim=1) >= z.shape[1]).to(z.dtype)
    return _step(z).mean(dim=1)


def _merged_linear(first: nn.Linear, second: nn.Linear, mask: torch.Tensor) -> nn.Linear:
    """``Linear`` with ``W = W2 D W1`` and ``b = W2 D b1 + b2`` (computed in float64)."""
    w1, w2 = first.weight.detach().double(), second.weight.detach().double()
    d = mask.to(device=w1.device, dtype=torch.float64)
    weight = w2 @ (d[:, None] * w1)
    bias = None
    if first.bias is not None or second.bias is not None:
        bias = torch.zeros(w2.shape[0], dtype=torch.float64, device=w1.device)
        if first.bias is not None:
            bias = bias + w2 @ (d * first.bias.detach().double())
        if second.bias is not None:
            bias = bias + second.bias.detach().double()
    new = nn.Linear(first.in_features, second.out_features, bias=bias is not None)
    new = new.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.train(first.training)


def _require_mlp(model: nn.Module) -> None:
    if family_of(model) != "mlp":
        raise UnsupportedLayerError(
            f"cannot merge layers of a {type(model).__name__}: merging is defined for MLPs "
            "only (CLAFusion §3.2); use balancing 'add' (identity layers) for CNNs"
        )


def _merge(model: nn.Sequential, layer: str, preacts: torch.Tensor, estimate: str) -> nn.Sequential:
    """Merge without copying: the result shares the untouched children of ``model``."""
    structure = describe(model)
    hidden = structure.align_groups[0].units
    if layer not in hidden:
        raise InvalidParameterError(
            f"cannot merge layer {layer!r}: it is not a hidden Linear of this MLP; hidden "
            f"layers are {list(hidden)} (the output layer cannot be merged)"
        )
    k = index_of(model, layer)
    first = model[k]
    if preacts.ndim != 2 or preacts.shape[1] != first.out_features:
        raise ShapeError(
            f"preacts of layer {layer!r} have shape {tuple(preacts.shape)} but the layer "
            f"has out_features={first.out_features}; pass (t, {first.out_features})"
        )
    paths = [lay.path for lay in structure.layers]
    k2 = index_of(model, paths[paths.index(layer) + 1])
    merged = _merged_linear(first, model[k2], relu_mask_estimate(preacts, estimate))
    mods = [m for _, m in children(model)]
    return nn.Sequential(*mods[:k], merged, *mods[k2 + 1 :])


def merge_hidden_layer(
    model: nn.Sequential,
    layer: str,
    preacts: torch.Tensor,
    estimate: str = "sign_of_sum",
) -> nn.Sequential:
    """Remove the hidden neurons output by Linear ``layer`` (§3.2, "Merge layers").

    Parameters
    ----------
    model : nn.Sequential
        An MLP ``[Flatten,] Linear, ReLU, ..., Linear``.
    layer : str
        Path of a hidden Linear (not the output layer).
    preacts : Tensor, shape (t, p)
        Outputs of ``layer`` (its pre-activations) on ``t`` samples.
    estimate : {"sign_of_sum", "majority", "average"}
        How :func:`relu_mask_estimate` turns ``preacts`` into ``D``.

    Returns
    -------
    nn.Sequential
        A new MLP in which ``layer``, its ReLU and the next Linear ``(W2, b2)`` are
        replaced by one Linear with ``W = W2 D W1`` and ``b = W2 D b1 + b2``; exact
        where the removed neurons' ReLU pattern equals ``D``.

    Raises
    ------
    UnsupportedLayerError
        ``model`` is a VGG or ResNet.
    InvalidParameterError
        ``layer`` is not a hidden Linear, or ``estimate`` is unknown.
    ShapeError
        ``preacts`` is not ``(t, out_features of layer)``.
    """
    _require_mlp(model)
    return _merge(copy.deepcopy(model), layer, preacts, estimate)


def balance_by_merging(
    model: nn.Sequential,
    mapping: Sequence[int],
    preacts: Sequence[torch.Tensor],
    estimate: str = "sign_of_sum",
) -> nn.Sequential:
    """Reduce a deeper MLP to the hidden layers in ``mapping`` by merging (§3.2).

    Parameters
    ----------
    model : nn.Sequential
        The deeper MLP, with ``m`` hidden layers.
    mapping : sequence of int
        ``n`` strictly increasing 0-based indices of the hidden layers to keep.
    preacts : sequence of Tensor
        ``m`` tensors; ``preacts[h]`` of shape ``(t, p_h)`` holds the ORIGINAL
        pre-activations of hidden layer ``h``.
    estimate : {"sign_of_sum", "majority", "average"}
        ReLU mask estimate used for every merged layer.

    Returns
    -------
    nn.Sequential
        A new MLP with ``n`` hidden layers. Every removed hidden layer ``h`` is merged
        with the Linear after it, from the back, so consecutive removals chain as
        ``W3 D2 W2 D1 W1``.

    Raises
    ------
    UnsupportedLayerError
        ``model`` is not an MLP.
    InvalidParameterError
        ``len(preacts) != m`` or a malformed ``mapping``.
    """
    _require_mlp(model)
    m = len(describe(model).align_groups[0].units)
    if len(preacts) != m:
        raise InvalidParameterError(
            f"got {len(preacts)} pre-activation tensors for an MLP with {m} hidden layers; "
            "give the original pre-activations of every hidden layer"
        )
    keep = set(check_mapping(mapping, len(mapping), m, "mapping"))
    out = copy.deepcopy(model)
    for h in reversed(range(m)):
        if h not in keep:
            layer = describe(out).align_groups[0].units[h]
            out = _merge(out, layer, preacts[h], estimate)
    return out
