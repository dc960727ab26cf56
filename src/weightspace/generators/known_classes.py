"""Which support sets show only classes a class-wise generator was trained on.

A class-wise generator (:mod:`weightspace.generators.classwise`) learns, for every class
of its zoo, the part of a trained row that the class's support statistics do not give.
On a class it never saw, that part is a guess: conditioned on an out-of-distribution
support set, the denoiser adds the correction of whichever training class the set
resembles, and the head then classifies for that class (an audit found novel-class
accuracy 0.59-0.63 with the residual against 0.86 without it). This module decides, per
task, whether the generator may speak:

* the **known classes** are the pool classes of the zoo tasks, each summarised by its mean
  feature ``c_j`` over all its training samples;
* a class of a support set with mean ``mu`` (``shots`` samples) is *near* known class ``j``
  when ``D(mu, c_j) = (mu - c_j)^T A (mu - c_j) <= tau``, with ``A`` the generator's metric
  (the shrunk inverse within-class covariance) and ``tau`` the ``quantile`` of the same
  distance between ``shots``-sample means of a known class and that class's own mean
  (drawn from the zoo's training features: a one-sided test calibrated on known classes
  only, no novel data involved), at the per-class level ``quantile ** (1 / K)`` so that
  a task of ``K`` known classes passes with probability ``quantile`` (Sidak);
* a task is **known** when its ``K`` classes can be matched one-to-one to ``K`` distinct
  known classes each within ``tau`` (a perfect matching in the bipartite graph of pairs
  within ``tau``: an assignment of 0/1 costs, Hungarian algorithm, has cost 0), i.e.
  the support set looks like a new combination of classes the generator has seen;
* on a known task, each class **is identified** with the known class it is matched to
  (the all-within-``tau`` matching of least total distance, :func:`match_known`): the
  generator may then use that class's centre, which the zoo knows from all its training
  samples, instead of the noisy ``shots``-sample mean.

Under a Gaussian model with the metric's covariance, ``shots * D`` is chi-square with
``d`` degrees of freedom for a known class; the quantile is taken empirically instead,
since features after a ReLU are not Gaussian.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from weightspace.errors import InvalidParameterError, ShapeError


def metric_distances(
    means: torch.Tensor, centres: torch.Tensor, metric: torch.Tensor
) -> torch.Tensor:
    """Squared distances ``(..., P)`` of means ``(..., d)`` to centres ``(P, d)`` under the
    symmetric positive definite ``metric`` ``(d, d)``."""
    d = means.shape[-1]
    if centres.ndim != 2 or centres.shape[1] != d or metric.shape != (d, d):
        raise ShapeError(
            f"means (..., {d}) need centres (P, {d}) and a ({d}, {d}) metric, got "
            f"{tuple(centres.shape)} and {tuple(metric.shape)}"
        )
    diff = means[..., None, :] - centres.to(means)  # (..., P, d)
    return ((diff @ metric.to(means)) * diff).sum(-1).clamp_min(0)


def fit_known_classes(
    feats: torch.Tensor,
    labels: torch.Tensor,
    metric: torch.Tensor,
    shots: int,
    quantile: float,
    seed: int,
    draws: int = 1024,
    way: int = 1,
) -> tuple[torch.Tensor, float]:
    """Known class centres and the distance threshold ``tau``.

    ``quantile`` is the share of *tasks* of ``way`` known classes that should pass: every
    class must be within ``tau``, so ``tau`` is the per-class quantile
    ``quantile ** (1 / way)`` (Sidak: with the classes' support sets drawn independently a
    known task then passes with probability at least ``quantile``). With the per-class
    quantile at ``quantile`` itself, 1 - 0.99^5 = 5% of known 5-way tasks would fail.

    Parameters
    ----------
    feats : Tensor (N, d)
        Training features of every known class, each sample once.
    labels : LongTensor (N,)
        Their classes.
    metric : Tensor (d, d)
    shots : int
        Samples per class in a support set.
    quantile : float
        In ``(0, 1)``: the share of known ``way``-class tasks that pass the test.
    seed : int
        Seeds the ``draws`` support sets drawn per class.
    draws : int
        Support sets drawn per class for the empirical quantile.
    way : int
        Classes per task (>= 1).

    Returns
    -------
    centres : Tensor (P, d)
        Mean feature of each known class, in ``labels.unique()`` order.
    tau : float
    """
    if not 0.0 < quantile < 1.0:
        raise InvalidParameterError(f"the novelty quantile must be in (0, 1), got {quantile}")
    if isinstance(way, bool) or not isinstance(way, int) or way < 1:
        raise InvalidParameterError(f"way (classes per task) must be an integer >= 1, got {way!r}")
    if feats.ndim != 2 or labels.shape != feats.shape[:1]:
        raise ShapeError(
            f"features must be (N, d) with labels (N,), got {tuple(feats.shape)}, "
            f"{tuple(labels.shape)}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    centres, own = [], []
    for c in labels.unique():
        x = feats[labels == c]
        centre = x.mean(0)
        pick = torch.randint(len(x), (draws, shots), generator=gen)  # with replacement
        means = x[pick].mean(1)
        own.append(metric_distances(means, centre[None], metric)[:, 0])
        centres.append(centre)
    tau = float(torch.quantile(torch.cat(own).double(), quantile ** (1.0 / way)))
    return torch.stack(centres), tau


def match_known(
    means: torch.Tensor, centres: torch.Tensor, metric: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The known-class test and, for the tasks that pass it, which known class each class is.

    Among the one-to-one maps of a task's ``K`` classes to distinct known classes with
    every pair within ``tau``, the one of least total distance (a min-cost assignment in
    which a pair beyond ``tau`` costs more than any ``K`` pairs within it, so it is used
    only when no map avoids one: then the task fails).

    Parameters
    ----------
    means : Tensor (B, K, d)
        Support-set class means of ``B`` tasks.
    centres, metric, tau
        From :func:`fit_known_classes`.

    Returns
    -------
    known : BoolTensor (B,)
        False for a task with more classes than there are known classes.
    match : LongTensor (B, K)
        Row of ``centres`` matched to each class; ``-1`` throughout on unknown tasks.
    """
    if means.ndim != 3:
        raise ShapeError(f"class means must be (B, K, d), got {tuple(means.shape)}")
    b, k = means.shape[:2]
    known = np.zeros(b, dtype=bool)
    match = np.full((b, k), -1, dtype=np.int64)
    if k > centres.shape[0]:
        return torch.from_numpy(known), torch.from_numpy(match)
    dist = metric_distances(means, centres, metric).double().cpu().numpy()
    big = k * max(float(tau), 0.0) + 1.0  # > the cost of any all-near map
    for i, d in enumerate(dist):
        near = d <= tau
        rows, cols = linear_sum_assignment(np.where(near, d, big))
        if near[rows, cols].all():
            known[i] = True
            match[i, rows] = cols
    return torch.from_numpy(known), torch.from_numpy(match)


def known_tasks(
    means: torch.Tensor, centres: torch.Tensor, metric: torch.Tensor, tau: float
) -> torch.Tensor:
    """Whether each task's classes match distinct known classes within ``tau``: the
    ``known`` half of :func:`match_known`, BoolTensor ``(B,)``."""
    return match_known(means, centres, metric, tau)[0]


__all__ = ["fit_known_classes", "known_tasks", "match_known", "metric_distances"]
