"""Ensemble predictions from stacked member logits ``(..., M, ..., N, C)``.

The deep-ensemble prediction averages member *probabilities* (Eq. (1) of LatentBE [1]_,
:func:`ensemble_probs`); :func:`ensemble_log_probs` is its stable log and
:func:`ensemble_logits` the (different) mean of member logits.

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from weightspace.errors import ShapeError
from weightspace.metrics._checks import _as_float_tensor, _check_finite, _compute_dtype

__all__ = ["ensemble_log_probs", "ensemble_logits", "ensemble_probs"]


def _member_dim(logits: object, dim: int) -> tuple[Tensor, int]:
    """Validate ensemble logits ``(..., M, ..., N, C)`` and normalise the member dim.

    Returns
    -------
    x : Tensor
        Finite logits in the compute dtype.
    dim : int
        Non-negative member dim, a leading dim of ``x``.
    """
    x = _as_float_tensor(logits, "logits")
    if x.ndim < 3:
        raise ShapeError(
            f"ensemble logits must have shape (..., M, ..., N, C) with a member dim, got "
            f"{tuple(x.shape)}; stack member logits with torch.stack(list, dim=0)"
        )
    d = dim + x.ndim if dim < 0 else dim
    if not 0 <= d < x.ndim - 2:
        raise ShapeError(
            f"member dim {dim} must be a leading dim of logits {tuple(x.shape)} (not the "
            "sample or class dim); use dim=0 for logits stacked as (M, N, C)"
        )
    _check_finite(x, torch.ones((), dtype=torch.bool, device=x.device), "logits")
    return x.to(_compute_dtype(x)), d


def ensemble_probs(logits: Tensor, dim: int = 0) -> Tensor:
    """Deep-ensemble prediction: mean of member softmax probabilities (Eq. (1) of [1]_).

    ``p = 1/M sum_m softmax(z_m)``. This is the standard deep-ensemble prediction; its
    accuracy, NLL and ECE are those reported for "DE" teachers. Contrast
    :func:`ensemble_logits`.

    Parameters
    ----------
    logits : Tensor, shape (..., N, C)
        Member logits, members along ``dim`` (a leading dim).
    dim : int
        Member dim.

    Returns
    -------
    Tensor
        Probabilities, ``logits`` shape with ``dim`` removed, e.g. ``(N, C)`` for
        ``(M, N, C)`` input.
    """
    x, d = _member_dim(logits, dim)
    return torch.softmax(x, dim=-1).mean(d)


def ensemble_log_probs(logits: Tensor, dim: int = 0) -> Tensor:
    """Log of :func:`ensemble_probs`, computed stably as ``logsumexp_m log_softmax(z_m) - log M``.

    Finite even where the mean probability underflows, so it can be passed as logits to
    :func:`nll`, :func:`temperature_scale` and the calibrated metrics of an ensemble.

    Parameters
    ----------
    logits : Tensor, shape (..., N, C)
    dim : int

    Returns
    -------
    Tensor
        Log-probabilities, ``logits`` shape with ``dim`` removed.
    """
    x, d = _member_dim(logits, dim)
    return torch.logsumexp(torch.log_softmax(x, dim=-1), dim=d) - math.log(x.shape[d])


def ensemble_logits(logits: Tensor, dim: int = 0) -> Tensor:
    """Mean of member logits, ``z = 1/M sum_m z_m``.

    Unlike :func:`ensemble_probs` (an arithmetic mean of probabilities, the deep-ensemble
    prediction of [1]_), ``softmax(mean logits)`` is the renormalised *geometric* mean of
    member probabilities, a product of experts: it is sharper (more confident) where
    members agree and can differ in argmax. It is what one linear classifier with
    averaged weights outputs on shared features, a useful reference for weight averaging
    but not the deep-ensemble prediction.

    Parameters
    ----------
    logits : Tensor, shape (..., N, C)
    dim : int

    Returns
    -------
    Tensor
        Logits, ``logits`` shape with ``dim`` removed.
    """
    x, d = _member_dim(logits, dim)
    return x.mean(d)
