"""Per-sample scores of a classifier: top-k accuracy, NLL and Brier score.

Batched over arbitrary leading dims (see :mod:`weightspace.metrics`): ``logits`` /
``probs`` ``(..., N, C)``, ``labels`` ``(N,)`` or ``(..., N)``, optional bool ``mask``
``(..., N)``; each result has shape ``(...)``. ACC and NLL are the metrics of
LatentBE [1]_ (Tables 1-2).

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightspace.errors import InvalidParameterError
from weightspace.metrics._checks import _prepare

__all__ = ["accuracy", "brier", "nll"]


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
