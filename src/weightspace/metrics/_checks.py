"""Input validation shared by every metric in :mod:`weightspace.metrics`.

Scores are ``(..., N, C)`` float tensors, labels ``(N,)`` or ``(..., N)`` integer class
indices, masks bool ``(..., N)`` (``False`` = padded sample). Padded samples are never
validated and count nowhere. float16/bfloat16 inputs are computed in float32; float64
stays float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError

_PROB_SUM_ATOL = 1e-3


def _as_float_tensor(x: object, name: str) -> Tensor:
    """Return ``x`` as a float tensor of shape ``(..., N, C)`` with ``N, C >= 1``.

    Raises :class:`InvalidParameterError` for non-float input and :class:`ShapeError` for
    fewer than two dims or an empty sample/class dim; ``name`` is used in the message.
    """
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
    """Dtype metrics are computed in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _first_index(flags: Tensor) -> tuple[int, ...]:
    """Index tuple of the first ``True`` entry of a bool tensor (for error messages)."""
    return tuple(int(i) for i in flags.nonzero()[0])


def _broadcast(t: Tensor, batch_shape: torch.Size, what: str, target: str) -> Tensor:
    """Expand ``t`` to ``batch_shape`` ``(..., N)``, or raise :class:`ShapeError`.

    ``what`` names ``t`` and ``target`` the scores tensor in the message.
    """
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
    """Validate integer labels and broadcast them to ``batch_shape`` ``(..., N)``, int64."""
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
    """Raise where an unmasked row of ``x`` ``(..., N, C)`` holds NaN or infinity.

    ``mask`` is bool and broadcasts to ``(..., N)``.
    """
    bad = mask & ~torch.isfinite(x).all(-1)
    if bad.any():
        raise InvalidParameterError(
            f"{name} contain NaN or infinity at index {_first_index(bad)} (leading dims..., "
            "sample); check the model for diverged weights, or mask that sample out"
        )


def _check_probs(probs: Tensor, mask: Tensor) -> None:
    """Raise where an unmasked row of ``probs`` ``(..., N, C)`` is not a distribution.

    Entries must lie in ``[0, 1]`` and rows sum to 1 within ``_PROB_SUM_ATOL``.
    """
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
    """Return ``n_bins`` if it is a positive integer, else raise."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InvalidParameterError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins
