"""Classification metrics for one model, a batch of models, and ensembles.

Every metric is plain torch and batched over arbitrary *leading* dimensions, so a zoo of
models is scored in one call without a Python loop over models:

- ``logits`` / ``probs`` have shape ``(..., N, C)`` (``N`` samples, ``C`` classes),
- ``labels`` have shape ``(N,)`` or ``(..., N)`` (anything that broadcasts to ``(..., N)``),
  integer class indices,
- ``mask`` (optional, bool) broadcasts to ``(..., N)``; ``False`` marks padded samples
  (the zoo pads tasks of different sizes), which count nowhere: not in a numerator, not
  in a denominator, and their labels and logits are not even validated,
- the result has shape ``(...)``, a 0-dim tensor when there are no leading dims.

The metric set is the one reported by LatentBE [1]_ ("Results on Image Classification
Tasks", Tables 1-2 of ``papers/latentbe_ensemble_distillation_weight_averaging.txt``):
ACC (:func:`accuracy`), NLL (:func:`nll`), ECE (:func:`ece`), and their calibrated
versions cNLL (:func:`calibrated_nll`) and cECE (:func:`calibrated_ece`), for which a
temperature is fitted on validation data and applied on test data before scoring,
following the "calibrated metrics" protocol of Ashukha et al. [3]_. ECE and temperature
scaling are those of Guo et al. [2]_. Deep-ensemble predictions average member
*probabilities* (Eq. (1) of [1]_, :func:`ensemble_probs`). Diversity between ensemble
members is measured by prediction disagreement and the normalized diversity of Fort et
al. [4]_.

Metrics computed from float16/bfloat16 inputs are evaluated in float32; float64 inputs
stay in float64.

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022.
.. [2] C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger. "On Calibration of Modern Neural
   Networks." ICML 2017 (ECE: Sec. 2; temperature scaling: Sec. 4.2).
.. [3] A. Ashukha, A. Lyzhov, D. Molchanov, D. Vetrov. "Pitfalls of In-Domain
   Uncertainty Estimation and Ensembling in Deep Learning." ICLR 2020.
.. [4] S. Fort, H. Hu, B. Lakshminarayanan. "Deep Ensembles: A Loss Landscape
   Perspective." arXiv:1912.02757, 2019.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "brier",
    "calibrated_ece",
    "calibrated_nll",
    "disagreement",
    "ece",
    "ensemble_log_probs",
    "ensemble_logits",
    "ensemble_probs",
    "nll",
    "normalized_diversity",
    "pairwise_disagreement",
    "reliability_bins",
    "temperature_scale",
]

logger = logging.getLogger(__name__)

_PROB_SUM_ATOL = 1e-3


# --------------------------------------------------------------------------- validation
def _as_float_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidParameterError(
                f"{name} must be a torch.Tensor (or array-like) of floats, got "
                f"{type(x).__name__}; convert it with torch.as_tensor"
            ) from exc
    if not x.is_floating_point():
        raise InvalidParameterError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it with {name}.float()"
        )
    if x.ndim < 2:
        raise ShapeError(
            f"{name} must have shape (..., N, C) (samples, classes), got shape "
            f"{tuple(x.shape)}; for a single sample use {name}.unsqueeze(0)"
        )
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ShapeError(
            f"{name} must have at least one sample and one class, got shape {tuple(x.shape)}"
        )
    return x


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _first_index(flags: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in flags.nonzero()[0])


def _broadcast(t: Tensor, batch_shape: torch.Size, what: str, target: str) -> Tensor:
    try:
        shape = torch.broadcast_shapes(t.shape, batch_shape)
    except RuntimeError:
        shape = None
    if shape != batch_shape:
        raise ShapeError(
            f"{what} of shape {tuple(t.shape)} does not broadcast to {target}'s "
            f"(..., N) = {tuple(batch_shape)}; give {what} shape (N,) or (..., N) with the "
            "same sample count N and leading dims"
        )
    return t.expand(batch_shape)


def _check_labels(labels: object, batch_shape: torch.Size, target: str) -> Tensor:
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InvalidParameterError(
            f"labels must be an integer tensor of class indices, got dtype {labels.dtype}; "
            "convert whole-number labels with labels.long()"
        )
    return _broadcast(labels.long(), batch_shape, "labels", target)


def _check_mask(mask: object, batch_shape: torch.Size, target: str) -> tuple[Tensor, Tensor]:
    """Return the broadcast bool mask ``(..., N)`` and the valid count per row ``(...)``."""
    if mask is None:
        n = batch_shape[-1]
        full = torch.ones((), dtype=torch.bool).expand(batch_shape)
        return full, torch.full(batch_shape[:-1], n, dtype=torch.int64)
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise InvalidParameterError(
            f"mask must be a bool tensor (True = real sample, False = padding), got dtype "
            f"{mask.dtype}; convert it with mask.bool()"
        )
    mask = _broadcast(mask, batch_shape, "mask", target)
    count = mask.sum(-1)
    if (count == 0).any():
        raise InvalidParameterError(
            f"mask selects no sample at leading index {_first_index(count == 0)}; every "
            "model/task needs at least one unmasked sample for the metric to be defined"
        )
    return mask, count


def _check_finite(x: Tensor, mask: Tensor, name: str) -> None:
    bad = mask & ~torch.isfinite(x).all(-1)
    if bad.any():
        raise InvalidParameterError(
            f"{name} contain NaN or infinity at index {_first_index(bad)} (leading dims..., "
            "sample); check the model for diverged weights, or mask that sample out"
        )


def _check_probs(probs: Tensor, mask: Tensor) -> None:
    out_of_range = mask & ((probs < 0) | (probs > 1)).any(-1)
    row_sum = probs.sum(-1, dtype=_compute_dtype(probs))
    bad_sum = mask & ((row_sum - 1).abs() > _PROB_SUM_ATOL)
    if out_of_range.any() or bad_sum.any():
        idx = _first_index(out_of_range | bad_sum)
        raise InvalidParameterError(
            f"probs must be probabilities (in [0, 1], summing to 1 over the class dim); the "
            f"row at index {idx} sums to {float(row_sum[idx]):.6g}. Pass "
            "torch.softmax(logits, dim=-1), not logits"
        )


def _prepare(
    scores: object,
    labels: object,
    mask: object,
    name: str,
    probs: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate ``(..., N, C)`` scores with labels and mask.

    Returns scores in the compute dtype with masked rows zeroed, labels ``(..., N)`` with
    masked entries set to 0, the bool mask ``(..., N)`` and valid counts ``(...)``.
    """
    x = _as_float_tensor(scores, name)
    batch_shape = x.shape[:-1]
    n_classes = x.shape[-1]
    labels = _check_labels(labels, batch_shape, name).to(x.device)
    mask, count = _check_mask(mask, batch_shape, name)
    mask, count = mask.to(x.device), count.to(x.device)
    bad = mask & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        idx = _first_index(bad)
        raise InvalidParameterError(
            f"labels must lie in [0, {n_classes}) for {n_classes} classes, got "
            f"{int(labels[idx])} at index {idx}; mask padded samples out with mask= "
            "instead of giving them out-of-range labels"
        )
    _check_finite(x, mask, name)
    if probs:
        _check_probs(x, mask)
    x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    labels = torch.where(mask, labels, torch.zeros((), dtype=labels.dtype, device=x.device))
    return x.to(_compute_dtype(x)), labels, mask, count


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InvalidParameterError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


# ------------------------------------------------------------------------------- metrics
def accuracy(logits: Tensor, labels: Tensor, k: int = 1, mask: Tensor | None = None) -> Tensor:
    """Top-``k`` accuracy (ACC of [1]_).

    A sample counts as correct when its label is among the ``k`` highest logits. Ties are
    broken deterministically towards the lower class index, so ``k=1`` agrees exactly
    with ``logits.argmax(-1) == labels`` (and a constant output is not "always right").

    Parameters
    ----------
    logits : Tensor, shape (..., N, C)
        Logits (or probabilities; only their order matters).
    labels : Tensor, shape (N,) or (..., N), int
        Class indices in ``[0, C)``.
    k : int
        ``1 <= k <= C``.
    mask : Tensor, shape (..., N), bool, optional
        ``False`` marks samples to ignore.

    Returns
    -------
    Tensor, shape (...)
        Fraction of (unmasked) samples classified correctly, in ``[0, 1]``.
    """
    x, labels, mask, count = _prepare(logits, labels, mask, "logits")
    n_classes = x.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_classes:
        raise InvalidParameterError(
            f"k must be an integer in [1, C={n_classes}] for top-k accuracy, got {k!r}"
        )
    true = x.gather(-1, labels[..., None])
    cls = torch.arange(n_classes, device=x.device)
    ahead = (x > true) | ((x == true) & (cls < labels[..., None]))
    correct = (ahead.sum(-1) < k) & mask
    return correct.sum(-1).to(x.dtype) / count.to(x.dtype)


def nll(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood (NLL of [1]_), ``-mean_i log softmax(z_i)[y_i]``.

    Parameters
    ----------
    logits : Tensor, shape (..., N, C)
        Logits. Log-probabilities are valid logits too (e.g. from
        :func:`ensemble_log_probs`), since ``log_softmax`` leaves them unchanged.
    labels : Tensor, shape (N,) or (..., N), int
    mask : Tensor, shape (..., N), bool, optional

    Returns
    -------
    Tensor, shape (...)
        Mean NLL in nats over unmasked samples.
    """
    x, labels, mask, count = _prepare(logits, labels, mask, "logits")
    logp = torch.log_softmax(x, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    return -torch.where(mask, logp, 0.0).sum(-1) / count.to(x.dtype)


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


def brier(probs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Brier score, ``mean_i sum_c (p_ic - 1[c = y_i])^2``.

    Parameters
    ----------
    probs : Tensor, shape (..., N, C)
        Predicted probabilities.
    labels : Tensor, shape (N,) or (..., N), int
    mask : Tensor, shape (..., N), bool, optional

    Returns
    -------
    Tensor, shape (...)
        Brier score in ``[0, 2]``.
    """
    p, labels, mask, count = _prepare(probs, labels, mask, "probs", probs=True)
    onehot = torch.nn.functional.one_hot(labels, p.shape[-1]).to(p.dtype)
    per_sample = (p - onehot).square().sum(-1)
    return torch.where(mask, per_sample, 0.0).sum(-1) / count.to(p.dtype)


# --------------------------------------------------------------------------- calibration
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


# ----------------------------------------------------------------------------- ensembles
def _member_dim(logits: object, dim: int) -> tuple[Tensor, int]:
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


# ----------------------------------------------------------------------------- diversity
def disagreement(logits_a: Tensor, logits_b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of samples on which two models' argmax predictions differ.

    Parameters
    ----------
    logits_a, logits_b : Tensor, shape (..., N, C)
        Logits or probabilities; ``N`` and ``C`` must match, leading dims broadcast (e.g.
        ``(M, N, C)`` members against one ``(N, C)`` reference).
    mask : Tensor, shape (..., N), bool, optional

    Returns
    -------
    Tensor, shape (...)
        Disagreement in ``[0, 1]`` over the broadcast leading dims.
    """
    a = _as_float_tensor(logits_a, "logits_a")
    b = _as_float_tensor(logits_b, "logits_b")
    try:
        batch_shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError:
        batch_shape = None
    if batch_shape is None or a.shape[-2:] != b.shape[-2:]:
        raise ShapeError(
            f"logits_a {tuple(a.shape)} and logits_b {tuple(b.shape)} must have the same "
            "(N, C) and broadcastable leading dims"
        )
    mask, count = _check_mask(mask, batch_shape, "logits")
    mask, count = mask.to(a.device), count.to(a.device)
    _check_finite(a.expand(*batch_shape, a.shape[-1]), mask, "logits_a")
    _check_finite(b.expand(*batch_shape, b.shape[-1]), mask, "logits_b")
    differ = (a.argmax(-1) != b.argmax(-1)) & mask
    dtype = torch.promote_types(_compute_dtype(a), _compute_dtype(b))
    return differ.sum(-1).to(dtype) / count.to(dtype)


def pairwise_disagreement(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Disagreement between every pair of ensemble members.

    Computed as one matrix product of one-hot predictions (float32 0/1 values, exact for
    ``N < 2**24``, also under TF32), so the result is exactly symmetric with an exactly
    zero diagonal. Memory is ``O(M N C)``.

    Parameters
    ----------
    logits : Tensor, shape (..., M, N, C)
        Member logits or probabilities, members along dim ``-3``.
    mask : Tensor, shape (..., M, N) or broadcastable (e.g. (N,)), bool, optional
        A pair is compared on the samples valid for both members.

    Returns
    -------
    Tensor, shape (..., M, M)
        ``D[..., i, j]`` = fraction of samples where members ``i`` and ``j`` disagree.
    """
    x = _as_float_tensor(logits, "logits")
    if x.ndim < 3:
        raise ShapeError(
            f"pairwise_disagreement needs logits of shape (..., M, N, C), got "
            f"{tuple(x.shape)}; stack member logits with torch.stack(list, dim=0)"
        )
    mask, _ = _check_mask(mask, x.shape[:-1], "logits")
    mask = mask.to(x.device)
    _check_finite(x, mask, "logits")
    m = mask.float()
    onehot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).float() * m[..., None]
    flat = onehot.flatten(-2)  # (..., M, N * C)
    agree = flat @ flat.transpose(-1, -2)
    both = m @ m.transpose(-1, -2)
    if (both == 0).any():
        raise InvalidParameterError(
            f"members {_first_index(both == 0)[-2:]} share no unmasked sample; their "
            "disagreement is undefined. Check the mask"
        )
    dtype = _compute_dtype(x)
    return ((both - agree) / both).to(dtype)


def normalized_diversity(
    logits_member: Tensor,
    logits_reference: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    zero_error: str = "raise",
) -> Tensor:
    """Normalized diversity of Fort et al. [4]_ (diversity-vs-accuracy analysis).

    .. math::
        \\mathrm{div}(f, f_{\\mathrm{ref}}) =
        \\frac{\\frac{1}{N}\\sum_i \\mathbb{1}[\\arg\\max f(x_i)
        \\neq \\arg\\max f_{\\mathrm{ref}}(x_i)]}{1 - \\mathrm{acc}(f_{\\mathrm{ref}})},

    the fraction of predictions that change relative to the reference, divided by the
    reference's error rate. Normalising by the error makes models of different accuracy
    comparable: a model that differs from the reference only where the reference errs
    scores at most 1, while larger values mean it also flips correct predictions.

    Parameters
    ----------
    logits_member : Tensor, shape (..., N, C)
    logits_reference : Tensor, shape (..., N, C)
        Leading dims broadcast against ``logits_member``.
    labels : Tensor, shape (N,) or (..., N), int
    mask : Tensor, shape (..., N), bool, optional
    zero_error : {"raise", "nan"}
        What to do where the reference makes no error (the ratio is undefined):
        raise :class:`~weightspace.errors.InvalidParameterError`, or return NaN there.

    Returns
    -------
    Tensor, shape (...)
        Normalized diversity, ``>= 0``.
    """
    if zero_error not in ("raise", "nan"):
        raise InvalidParameterError(f"zero_error must be 'raise' or 'nan', got {zero_error!r}")
    dis = disagreement(logits_member, logits_reference, mask)
    ref = _as_float_tensor(logits_reference, "logits_reference")
    ref = ref.expand(*dis.shape, *ref.shape[-2:])
    error = 1 - accuracy(ref, labels, mask=mask).to(dis.dtype)
    zero = error == 0
    if zero.any() and zero_error == "raise":
        raise InvalidParameterError(
            f"normalized diversity is undefined where the reference model makes no error "
            f"(error rate 0 at leading index {_first_index(zero)}); "
            "evaluate on held-out data where the reference errs, or pass zero_error='nan'"
        )
    return torch.where(zero, torch.nan, dis / torch.where(zero, 1.0, error))
