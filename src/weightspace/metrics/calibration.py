"""Calibration: reliability bins, ECE, temperature scaling and calibrated NLL/ECE.

ECE (:func:`ece`) and temperature scaling (:func:`temperature_scale`) are those of Guo
et al. [2]_; the calibrated metrics cNLL (:func:`calibrated_nll`) and cECE
(:func:`calibrated_ece`) of LatentBE [1]_ fit a temperature on validation data and apply
it on test data before scoring, following Ashukha et al. [3]_. Shapes follow
:mod:`weightspace.metrics`: ``(..., N, C)`` in, ``(...)`` out.

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022.
.. [2] C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger. "On Calibration of Modern Neural
   Networks." ICML 2017 (ECE: Sec. 2; temperature scaling: Sec. 4.2).
.. [3] A. Ashukha, A. Lyzhov, D. Molchanov, D. Vetrov. "Pitfalls of In-Domain
   Uncertainty Estimation and Ensembling in Deep Learning." ICLR 2020.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.metrics._checks import (
    _as_float_tensor,
    _check_mask,
    _check_n_bins,
    _compute_dtype,
    _prepare,
)
from weightspace.metrics.classification import nll

__all__ = [
    "ReliabilityBins",
    "calibrated_ece",
    "calibrated_nll",
    "ece",
    "reliability_bins",
    "temperature_scale",
]

logger = logging.getLogger(__name__)


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram, each of shape ``(..., n_bins)``.

    Bin ``b`` covers confidences in ``(b / n_bins, (b + 1) / n_bins]`` (bin 0 also holds
    confidence 0). Empty bins have ``count == 0`` and confidence and accuracy set to 0.
    """

    count: Tensor
    """Number of (unmasked) samples in the bin, int64."""
    confidence: Tensor
    """Mean max-probability of the samples in the bin."""
    accuracy: Tensor
    """Fraction of the samples in the bin whose argmax equals the label."""


def _bin_sums(
    probs: Tensor, labels: Tensor, mask: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter validated probs into equal-width confidence bins.

    The one binning implementation behind :func:`ece` and :func:`reliability_bins`.

    Returns
    -------
    count, conf_sum, n_correct : Tensor, shape (..., n_bins)
        Sample count (int64), sum of confidences, and number of correct predictions.
    """
    pred = probs.argmax(-1)
    conf = probs.gather(-1, pred[..., None]).squeeze(-1)
    # Inner edges k / n_bins, correctly rounded to the dtype (not linspace's rounding).
    inner = (torch.arange(1, n_bins, dtype=torch.float64) / n_bins).to(conf.dtype)
    # bucketize(right=False): edges[i-1] < c <= edges[i], i.e. (lo, hi] bins, 0 -> bin 0.
    idx = torch.bucketize(conf, inner.to(conf.device))
    shape = (*conf.shape[:-1], n_bins)
    count = torch.zeros(shape, dtype=torch.int64, device=conf.device)
    count.scatter_add_(-1, idx, mask.long())
    conf_sum = torch.zeros(shape, dtype=conf.dtype, device=conf.device)
    conf_sum.scatter_add_(-1, idx, torch.where(mask, conf, 0.0))
    n_correct = torch.zeros(shape, dtype=torch.int64, device=conf.device)
    n_correct.scatter_add_(-1, idx, ((pred == labels) & mask).long())
    return count, conf_sum, n_correct


def reliability_bins(
    probs: Tensor, labels: Tensor, n_bins: int = 15, mask: Tensor | None = None
) -> ReliabilityBins:
    """Per-bin count, mean confidence and accuracy of a reliability diagram [2]_.

    Confidence is the max probability; ``n_bins`` equal-width bins on ``[0, 1]`` are
    right-closed, ``(lo, hi]``, with confidence 0 in the first bin. The bin edges are
    ``k / n_bins`` rounded to the dtype of ``probs``.

    Parameters
    ----------
    probs : Tensor, shape (..., N, C)
        Predicted probabilities (rows sum to 1).
    labels : Tensor, shape (N,) or (..., N), int
    n_bins : int
    mask : Tensor, shape (..., N), bool, optional

    Returns
    -------
    ReliabilityBins
        ``(count, confidence, accuracy)``, each of shape ``(..., n_bins)``.
    """
    n_bins = _check_n_bins(n_bins)
    p, labels, mask, _ = _prepare(probs, labels, mask, "probs", probs=True)
    count, conf_sum, n_correct = _bin_sums(p, labels, mask, n_bins)
    denom = count.clamp_min(1).to(p.dtype)
    return ReliabilityBins(count, conf_sum / denom, n_correct.to(p.dtype) / denom)


def ece(probs: Tensor, labels: Tensor, n_bins: int = 15, mask: Tensor | None = None) -> Tensor:
    """Expected calibration error (ECE of [1]_, as defined by Guo et al. [2]_, Eq. (3)).

    .. math::
        \\mathrm{ECE} = \\sum_{b=1}^{B} \\frac{|B_b|}{N}
        \\left| \\mathrm{acc}(B_b) - \\mathrm{conf}(B_b) \\right|,

    with confidence ``max_c p_c``, ``B = n_bins`` equal-width bins on ``[0, 1]`` that are
    right-closed, ``(lo, hi]`` (confidence 0 goes in the first bin; see
    :func:`reliability_bins`), and ``N`` the number of unmasked samples. Batched over
    leading dims with a scatter over bins, no loop over models.

    Parameters
    ----------
    probs : Tensor, shape (..., N, C)
        Predicted probabilities, e.g. ``torch.softmax(logits, -1)``; not logits.
    labels : Tensor, shape (N,) or (..., N), int
    n_bins : int
        Number of bins, 15 as in Guo et al.
    mask : Tensor, shape (..., N), bool, optional

    Returns
    -------
    Tensor, shape (...)
        ECE in ``[0, 1]``.
    """
    n_bins = _check_n_bins(n_bins)
    p, labels, mask, count = _prepare(probs, labels, mask, "probs", probs=True)
    _, conf_sum, n_correct = _bin_sums(p, labels, mask, n_bins)
    # |B_b|/N * |acc_b - conf_b| = |n_correct_b - conf_sum_b| / N
    return (n_correct.to(p.dtype) - conf_sum).abs().sum(-1) / count.to(p.dtype)


def temperature_scale(
    val_logits: Tensor,
    val_labels: Tensor,
    mask: Tensor | None = None,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    tol: float = 1e-10,
) -> Tensor:
    """Fit the temperature ``T > 0`` minimising the NLL of ``logits / T`` [2]_.

    One temperature per leading index. With ``beta = 1 / T`` the NLL is convex in
    ``beta`` (a log-sum-exp of functions linear in ``beta`` minus a linear term), hence
    unimodal in ``u = log T``. Its derivative

    .. math::
        \\frac{\\partial\\,\\mathrm{NLL}}{\\partial u}
        = -\\beta\\,\\frac{1}{N}\\sum_i \\left(\\mathbb{E}_{p_\\beta(\\cdot|x_i)}[z_i]
        - z_{i,y_i}\\right), \\qquad p_\\beta = \\mathrm{softmax}(\\beta z),

    changes sign once, so the optimum is found by bisection on its sign over
    ``log T in [log bounds[0], log bounds[1]]``, run in float64 for all models at once
    with a fixed number of steps, ``ceil(log2(width / tol))`` (37 by default). This is
    deterministic and accurate to ``~tol`` in ``log T`` (relative accuracy in ``T``),
    far below the 1e-4 a metric needs; a zero of the derivative is found more accurately
    than a minimum of the (flat) loss would be.

    Edge cases: when the optimum lies outside ``bounds`` (e.g. data that the model
    separates perfectly wants ``T -> 0``) the result is clipped to the bound and a
    warning is logged. When every logit row is constant the NLL does not depend on
    ``T``; ``T = 1`` is returned.

    Parameters
    ----------
    val_logits : Tensor, shape (..., N, C)
        Validation logits.
    val_labels : Tensor, shape (N,) or (..., N), int
    mask : Tensor, shape (..., N), bool, optional
    bounds : (float, float)
        Search bracket ``0 < T_min < T_max``.
    tol : float
        Width of the final bracket in ``log T``.

    Returns
    -------
    Tensor, shape (...)
        Temperatures, float32 (float64 for float64 logits). Calibrated logits are
        ``logits / T[..., None, None]``.
    """
    lo_t, hi_t = (float(b) for b in bounds)
    if not (math.isfinite(lo_t) and math.isfinite(hi_t) and 0 < lo_t < hi_t):
        raise InvalidParameterError(
            f"bounds must satisfy 0 < T_min < T_max (finite), got {bounds!r}"
        )
    if not (tol > 0 and math.isfinite(tol)):
        raise InvalidParameterError(f"tol must be a positive float, got {tol!r}")
    x, labels, mask, count = _prepare(val_logits, val_labels, mask, "val_logits")
    out_dtype = x.dtype
    z = x.double()
    z_true = z.gather(-1, labels[..., None]).squeeze(-1)
    n = count.double()

    def slope(u: Tensor) -> Tensor:  # dNLL/du at u = log T, shape (...)
        beta = torch.exp(-u)
        p = torch.softmax(z * beta[..., None, None], dim=-1)
        # E_p[z] - z_y summed as p_c (z_c - z_y): no cancellation when p_y -> 1.
        g = torch.where(mask, (p * (z - z_true[..., None])).sum(-1), 0.0).sum(-1) / n
        return -beta * g

    lead = z.shape[:-2]
    lo = torch.full(lead, math.log(lo_t), dtype=torch.float64, device=z.device)
    hi = torch.full(lead, math.log(hi_t), dtype=torch.float64, device=z.device)
    for _ in range(math.ceil(math.log2((math.log(hi_t) - math.log(lo_t)) / tol))):
        mid = 0.5 * (lo + hi)
        rising = slope(mid) >= 0  # an underflowed 0 only happens as T -> 0, on the rise
        hi = torch.where(rising, mid, hi)
        lo = torch.where(rising, lo, mid)
    temperature = torch.exp(0.5 * (lo + hi))

    spread = torch.where(mask, z.amax(-1) - z.amin(-1), 0.0).amax(-1)
    flat = spread == 0
    temperature = torch.where(flat, torch.ones_like(temperature), temperature)
    clipped_low = (slope(torch.full_like(lo, math.log(lo_t))) >= 0) & ~flat
    clipped_high = (slope(torch.full_like(hi, math.log(hi_t))) < 0) & ~flat
    if clipped_low.any() or clipped_high.any():
        logger.warning(
            "temperature_scale: optimum outside bounds %s for %d model(s) (clipped to "
            "T_min) and %d model(s) (clipped to T_max); widen bounds if this is unexpected",
            bounds,
            int(clipped_low.sum()),
            int(clipped_high.sum()),
        )
    return temperature.to(out_dtype)


def _check_test_val(test_logits: object, val_logits: object) -> tuple[Tensor, Tensor]:
    """Validate test ``(..., N_test, C)`` and val ``(..., N_val, C)`` logits together.

    Both must share leading dims and the class count; sample counts may differ.
    """
    test = _as_float_tensor(test_logits, "test_logits")
    val = _as_float_tensor(val_logits, "val_logits")
    if test.shape[:-2] != val.shape[:-2] or test.shape[-1] != val.shape[-1]:
        raise ShapeError(
            f"test_logits {tuple(test.shape)} and val_logits {tuple(val.shape)} must share "
            "leading dims and class count (..., *, C); sample counts may differ"
        )
    return test, val


def calibrated_nll(
    test_logits: Tensor,
    test_labels: Tensor,
    val_logits: Tensor,
    val_labels: Tensor,
    *,
    test_mask: Tensor | None = None,
    val_mask: Tensor | None = None,
) -> Tensor:
    """Calibrated NLL (cNLL of [1]_, [3]_): test NLL after temperature scaling.

    The temperature is fitted on validation data (:func:`temperature_scale`) and applied
    to the test logits. For an ensemble pass :func:`ensemble_log_probs` as logits.

    Parameters
    ----------
    test_logits : Tensor, shape (..., N_test, C)
    test_labels : Tensor, shape (N_test,) or (..., N_test), int
    val_logits : Tensor, shape (..., N_val, C)
        Same leading dims and ``C`` as ``test_logits``.
    val_labels : Tensor, shape (N_val,) or (..., N_val), int
    test_mask, val_mask : Tensor, bool, optional
        Padding masks of the two sets.

    Returns
    -------
    Tensor, shape (...)
    """
    test, val = _check_test_val(test_logits, val_logits)
    temperature = temperature_scale(val, val_labels, val_mask)
    return nll(test / temperature[..., None, None], test_labels, test_mask)


def calibrated_ece(
    test_logits: Tensor,
    test_labels: Tensor,
    val_logits: Tensor,
    val_labels: Tensor,
    n_bins: int = 15,
    *,
    test_mask: Tensor | None = None,
    val_mask: Tensor | None = None,
) -> Tensor:
    """Calibrated ECE (cECE of [1]_, [3]_): test ECE after temperature scaling.

    Parameters are those of :func:`calibrated_nll`, plus ``n_bins`` of :func:`ece`.

    Returns
    -------
    Tensor, shape (...)
    """
    test, val = _check_test_val(test_logits, val_logits)
    temperature = temperature_scale(val, val_labels, val_mask)
    scaled = test.to(_compute_dtype(test)) / temperature[..., None, None]
    if test_mask is not None:  # padded rows may hold NaN; keep them out of the softmax
        mask, _ = _check_mask(test_mask, test.shape[:-1], "test_logits")
        scaled = torch.where(mask.to(scaled.device)[..., None], scaled, 0.0)
    return ece(torch.softmax(scaled, dim=-1), test_labels, n_bins, test_mask)
