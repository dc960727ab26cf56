"""Anytime inference: every non-empty subset of members as an ensemble, by cost.

A SuperWeight ensemble of members of different widths and depths offers many operating
points: any of its ``2^N - 1`` non-empty member subsets is an ensemble (mean of member
probabilities), at the cost of running its members. The supplement plots accuracy
against inference cost over these subsets (Figure 1, Sec. 3.1; Figures 2 and 4 use the
same axes); the authors report accuracy only, here NLL and ECE are reported as well,
through :mod:`weightspace.metrics`.

Cost is counted in FLOPs of the Linear and convolution layers, analytically from their
shapes: a layer producing ``P`` output values from ``F`` inputs each (``F = in * prod
(kernel)``) costs ``2 P F`` FLOPs per sample (one multiply and one add per weight use).
Composing a SuperWeight is per weight, not per sample, and is left out (it is done once
when the weights are exported for deployment); BatchNorm, activations and pooling are
left out as well.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weightspace.ensembles.superweights.layers import SuperWeightLayer
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.metrics import accuracy, ece, ensemble_log_probs, ensemble_probs, nll

__all__ = ["SubsetScore", "anytime_probs", "anytime_scores", "member_flops", "member_subsets"]


def member_subsets(n: int) -> list[tuple[int, ...]]:
    """All ``2^n - 1`` non-empty subsets of ``range(n)``, by size then lexicographically."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameterError(f"the number of members must be an integer >= 1, got {n!r}")
    return [c for r in range(1, n + 1) for c in itertools.combinations(range(n), r)]


def _layer_flops(module: nn.Module, out: Tensor) -> int:
    if isinstance(module, SuperWeightLayer):
        fan_in = math.prod(module.shape[1:])
    elif isinstance(module, nn.Linear):
        fan_in = module.in_features
    else:  # nn.Conv1d / nn.Conv2d
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
    return 2 * (out[0].numel()) * fan_in


@torch.no_grad()
def member_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample through ``module``'s Linear/Conv layers.

    Parameters
    ----------
    module : nn.Module
        A network (a plain one or a SuperWeight member).
    input_shape : sequence of int
        Shape of one sample, e.g. ``(1, 40)`` or ``(3, 32, 32)``.

    Returns
    -------
    int
        ``sum over layers of 2 * output values * fan-in`` (see the module docstring).
    """
    total = [0]
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, SuperWeightLayer)

    def hook(mod: nn.Module, _inp: tuple, out: Tensor) -> None:
        total[0] += _layer_flops(mod, out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    ref = next(module.parameters(), None)
    x = torch.zeros(1, *input_shape, device=None if ref is None else ref.device)
    was_training = module.training
    module.eval()
    try:
        module(x)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


@dataclass(frozen=True)
class SubsetScore:
    """Scores of one member subset used as an ensemble.

    Attributes
    ----------
    members : tuple of int
    flops : int
        Sum of the members' FLOPs per sample.
    acc, nll, ece : float
        Of the mean of the members' probabilities.
    """

    members: tuple[int, ...]
    flops: int
    acc: float
    nll: float
    ece: float


def _check(logits: Tensor, flops: Sequence[int]) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise ShapeError(
            "anytime inference takes member logits (N members, B samples, C classes), got "
            f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    if len(flops) != logits.shape[0]:
        raise ShapeError(f"got {len(flops)} FLOP counts for {logits.shape[0]} members")


def anytime_probs(
    logits: Tensor, flops: Sequence[int]
) -> list[tuple[tuple[int, ...], int, Tensor]]:
    """Every subset's ensemble probabilities, cheapest first.

    Parameters
    ----------
    logits : Tensor, shape (N, B, C)
        Member logits (:meth:`SuperWeightEnsemble.member_logits`).
    flops : sequence of int, length N
        Per-sample FLOPs of each member (:func:`member_flops`).

    Returns
    -------
    list of (members, flops, probs (B, C))
        One entry per non-empty subset, sorted by FLOPs (ties: by subset order of
        :func:`member_subsets`).
    """
    _check(logits, flops)
    subsets = member_subsets(logits.shape[0])
    out = [(s, int(sum(flops[i] for i in s)), ensemble_probs(logits[list(s)])) for s in subsets]
    return sorted(out, key=lambda e: e[1])  # stable: ties keep the subset order


def anytime_scores(
    logits: Tensor, labels: Tensor, flops: Sequence[int], n_bins: int = 15
) -> list[SubsetScore]:
    """Accuracy, NLL and ECE of every member subset, cheapest first.

    Parameters
    ----------
    logits : Tensor, shape (N, B, C)
    labels : Tensor, shape (B,), int
    flops : sequence of int, length N
    n_bins : int
        ECE bins.

    Returns
    -------
    list of SubsetScore
        ``2^N - 1`` entries sorted by FLOPs; a singleton's accuracy is its member's.
    """
    _check(logits, flops)
    subsets = member_subsets(logits.shape[0])
    rows = []
    for s in subsets:
        sub = logits[list(s)]
        probs = ensemble_probs(sub)
        rows.append(
            SubsetScore(
                members=s,
                flops=int(sum(flops[i] for i in s)),
                acc=float(accuracy(probs, labels)),
                nll=float(nll(ensemble_log_probs(sub), labels)),
                ece=float(ece(probs, labels, n_bins)),
            )
        )
    return sorted(rows, key=lambda r: r.flops)
