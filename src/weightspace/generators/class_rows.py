"""A linear classifier head as ``K`` class rows, and the metric-prototype anchor of a row.

A head ``Linear(d, K)`` computes ``logit_c = w_c . x + b_c``; its *class row* ``c`` is
``r_c = [w_c, b_c]`` (``d + 1`` numbers). Permuting the classes of a task permutes the
rows, so a generator that produces rows one class at a time, each from that class's own
support set, is permutation-equivariant by construction and can be asked for classes it
never saw.

The *anchor* of a class is the row of a nearest-class-mean classifier under a metric
``A`` (symmetric positive definite, ``d x d``):
``-(x - mu_c)^T A (x - mu_c) = 2 (A mu_c) . x - mu_c^T A mu_c + const``, i.e.
``r_c = [2 A mu_c, -mu_c^T A mu_c]``. ``A = I`` is the plain prototype classifier
(Snell et al. 2017); ``A = Sigma_w^{-1}``, the inverse within-class covariance of the
classes the zoo was trained on, is linear discriminant analysis with a shared covariance.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from weightspace.errors import InvalidParameterError, ShapeError


def head_names(stacked: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """The (weight, bias) names of a stacked single-``Linear`` head.

    Raises
    ------
    ShapeError
        Unless the stack holds exactly one ``(B, K, d)`` and one ``(B, K)`` tensor.
    """
    w = [n for n, v in stacked.items() if v.ndim == 3]
    b = [n for n, v in stacked.items() if v.ndim == 2]
    if len(stacked) != 2 or len(w) != 1 or len(b) != 1:
        shapes = {n: tuple(v.shape) for n, v in stacked.items()}
        raise ShapeError(
            f"a class-wise head generator needs stacked Linear(d, K) heads (one (B, K, d) "
            f"weight and one (B, K) bias), got {shapes}; use a head with no hidden layer"
        )
    return w[0], b[0]


def to_rows(stacked: Mapping[str, torch.Tensor], names: tuple[str, str]) -> torch.Tensor:
    """Stacked heads ``{w: (B, K, d), b: (B, K)}`` -> class rows ``(B, K, d + 1)``."""
    w, b = stacked[names[0]], stacked[names[1]]
    if w.shape[:2] != b.shape:
        raise ShapeError(f"weight {tuple(w.shape)} and bias {tuple(b.shape)} do not match")
    return torch.cat([w, b.unsqueeze(-1)], dim=-1)


def from_rows(rows: torch.Tensor, names: tuple[str, str]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_rows`: rows ``(B, K, d + 1)`` -> stacked heads."""
    if rows.ndim != 3 or rows.shape[-1] < 2:
        raise ShapeError(f"class rows must be (B, K, d + 1), got {tuple(rows.shape)}")
    return {names[0]: rows[..., :-1].contiguous(), names[1]: rows[..., -1].contiguous()}


def centre_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows ``(B, K, d + 1)`` minus their mean over the ``K`` classes.

    Adding one vector to every row adds the same number to every logit, which no softmax
    or argmax sees: the centred head predicts exactly as the original does.
    """
    return rows - rows.mean(-2, keepdim=True)


def class_means(sets: torch.Tensor) -> torch.Tensor:
    """Per-class means ``(B, K, d)`` of support sets ``(B, K, S, d)``."""
    if sets.ndim != 4:
        raise ShapeError(f"support sets must be (B, K, S, d), got {tuple(sets.shape)}")
    return sets.mean(2)


def metric_rows(means: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """Rows ``(B, K, d + 1)`` of the nearest-class-mean classifier under ``metric``.

    Parameters
    ----------
    means : Tensor, shape (B, K, d)
        Class means.
    metric : Tensor, shape (d, d)
        Symmetric positive definite ``A``.
    """
    d = means.shape[-1]
    if metric.shape != (d, d):
        raise ShapeError(f"metric must be ({d}, {d}), got {tuple(metric.shape)}")
    am = means @ metric  # A symmetric: (A mu)^T = mu^T A
    return torch.cat([2 * am, -(am * means).sum(-1, keepdim=True)], dim=-1)


def within_class_metric(
    feats: torch.Tensor, labels: torch.Tensor, shrinkage: float
) -> torch.Tensor:
    """``((1 - s) Sigma_w + s tr(Sigma_w)/d I)^{-1}``, the shrunk inverse within-class
    covariance of features ``(N, d)`` with integer ``labels (N,)``.

    ``s`` in ``(0, 1]`` keeps the inverse defined when some feature is constant (ReLU
    features often are); ``s = 1`` gives a multiple of the identity (the prototype).
    """
    if not 0.0 < shrinkage <= 1.0:
        raise InvalidParameterError(f"shrinkage must be in (0, 1], got {shrinkage}")
    if feats.ndim != 2 or labels.shape != feats.shape[:1]:
        raise ShapeError(
            f"features must be (N, d) with labels (N,), got {tuple(feats.shape)}, "
            f"{tuple(labels.shape)}"
        )
    x = feats.double()
    classes, inv = labels.unique(return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, inv, x)
    counts = torch.bincount(inv, minlength=len(classes)).to(x.dtype)
    centred = x - (sums / counts[:, None])[inv]
    cov = centred.T @ centred / max(len(x) - len(classes), 1)
    d = x.shape[1]
    scale = float(cov.trace()) / d
    if scale <= 0:
        raise InvalidParameterError("the features have no within-class variance")
    shrunk = (1 - shrinkage) * cov + shrinkage * scale * torch.eye(d, dtype=x.dtype)
    metric = torch.linalg.inv(shrunk)
    return (0.5 * (metric + metric.T)).to(feats.dtype)


__all__ = [
    "centre_rows",
    "class_means",
    "from_rows",
    "head_names",
    "metric_rows",
    "to_rows",
    "within_class_metric",
]
