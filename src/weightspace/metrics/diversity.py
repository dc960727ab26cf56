"""Diversity between models: prediction disagreement and normalized diversity.

Disagreement is the fraction of samples on which argmax predictions differ; normalized
diversity divides it by the reference model's error rate (Fort et al. [4]_). Shapes
follow :mod:`weightspace.metrics`: ``(..., N, C)`` in, ``(...)`` out.

References
----------
.. [4] S. Fort, H. Hu, B. Lakshminarayanan. "Deep Ensembles: A Loss Landscape
   Perspective." arXiv:1912.02757, 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.metrics._checks import (
    _as_float_tensor,
    _check_finite,
    _check_mask,
    _compute_dtype,
    _first_index,
)
from weightspace.metrics.classification import accuracy

__all__ = ["disagreement", "normalized_diversity", "pairwise_disagreement"]


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
