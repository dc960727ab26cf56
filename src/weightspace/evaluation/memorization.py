"""Memorization audit: do generated models only replay their training checkpoints?

The critique of p-diff by Wang et al. (2024, "generalization or memorization") is that a
weight generator may return perturbed copies of its training checkpoints. This module
audits that in weight space and in function space.

**Weight space, with a decision rule** (:class:`CopyRule`, :func:`copy_audit`). A
generated vector is a *copy* when its L2 distance to its nearest zoo vector is below
``distance_ratio`` (default 0.5) times a *reference distance* measured on the zoo itself:
the median, over zoo vectors, of the distance from a zoo vector to its nearest zoo vector
of the same group (task for whole models, class for per-class head rows) from another,
independent run. Two independent runs of one group are, by construction, not copies of
each other, so their distance is the zoo's own scale of "a different solution of the same
problem"; a sample closer to a zoo member than half that distance sits much nearer to one
checkpoint than any independent run does, and is called a copy. The nearest zoo vector is
searched among *all* zoo rows, so the rule also applies to samples of unseen or novel
tasks that have no zoo member of their own.

**Function space** (:func:`memorization_audit`). For each generated model, find its
nearest zoo member (L2 in weight space, among the zoo members of the same task; weights
flattened through the architecture's :class:`~weightspace.weights.ParameterSpec`, so the
order in which a state dict lists its tensors does not matter) and measure how often their
predictions agree on the task's test inputs. Three references: a zoo member perturbed by
Gaussian noise whose norm equals the median generated-to-nearest distance (a noisy copy),
two independent zoo runs of a task (certainly not copies), and the average of a task's
zoo members against each member (:func:`averaged_copy_agreement`, the "averaged copy").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from weightspace.errors import (
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.weights import ParameterSpec, vectorize
from weightspace.zoo.evaluate import stack_agreement
from weightspace.zoo.tasks import TaskStack

logger = logging.getLogger(__name__)

#: Most pairwise distances held in memory at once by the nearest-neighbour search
#: (2**24 float64 values: 128 MiB).
MAX_BLOCK_DISTANCES = 2**24


@dataclass(frozen=True)
class CopyRule:
    """When a generated weight vector counts as a copy of a zoo vector.

    Attributes
    ----------
    distance_ratio : float
        A sample is a copy when ``d_nearest < distance_ratio * d_ref``, where ``d_nearest``
        is its L2 distance to the nearest zoo vector and ``d_ref`` the median, over zoo
        vectors, of the distance from a zoo vector to its nearest zoo vector of the same
        group from another (independent) run. Independent runs of one group are the zoo's
        own measure of "not a copy"; half that distance (the default 0.5) is the margin.
        In ``(0, 1]``.
    """

    distance_ratio: float = 0.5

    def __post_init__(self) -> None:
        r = self.distance_ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < r <= 1.0:
            raise InvalidParameterError(
                f"CopyRule.distance_ratio must be a number in (0, 1], got {r!r}: it is the "
                "fraction of the distance between independent zoo runs below which a sample "
                "is a copy (0.5 by default)"
            )


@dataclass(frozen=True)
class CopyAudit:
    """Result of :func:`copy_audit` for ``G`` generated vectors.

    Attributes
    ----------
    nearest_distance : Tensor (G,) float64
        L2 distance of each sample to its nearest zoo vector (any group).
    nearest_index : LongTensor (G,)
        Row of that zoo vector (the first one on ties).
    reference_distance : float
        Median over zoo vectors of the distance to the nearest other run of their group
        (the mean of the two middle values for an even count).
    threshold : float
        ``rule.distance_ratio * reference_distance``.
    is_copy : BoolTensor (G,)
        ``nearest_distance < threshold``.
    copy_share : float
        Fraction of samples that are copies.
    n_reference : int
        Number of zoo vectors whose group has another run (the median's sample size).
    rule : CopyRule
        The rule applied.
    """

    nearest_distance: torch.Tensor
    nearest_index: torch.Tensor
    reference_distance: float
    threshold: float
    is_copy: torch.Tensor
    copy_share: float
    n_reference: int
    rule: CopyRule

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix + key: float}``: ``copy_share``, ``copy_reference_distance``,
        ``copy_threshold``, ``copy_distance_ratio`` (the rule's ratio),
        ``copy_nearest_distance_median`` and ``copy_relative_distance_median`` (median of
        ``nearest_distance / reference_distance``: below the ratio for a copying generator,
        near or above 1 for one that produces new runs)."""
        near = float(self.nearest_distance.median())
        return {
            f"{prefix}copy_share": self.copy_share,
            f"{prefix}copy_reference_distance": self.reference_distance,
            f"{prefix}copy_threshold": self.threshold,
            f"{prefix}copy_distance_ratio": float(self.rule.distance_ratio),
            f"{prefix}copy_nearest_distance_median": near,
            f"{prefix}copy_relative_distance_median": near / self.reference_distance
            if self.reference_distance > 0
            else math.inf,
        }


def nearest_rows(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    exclude_self: bool = False,
    max_block_distances: int = MAX_BLOCK_DISTANCES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest key row of every query row (L2), computed in blocks of query rows.

    Parameters
    ----------
    queries : Tensor (Q, P)
    keys : Tensor (K, P)
    exclude_self : bool
        ``queries`` are ``keys`` (``Q == K``): row ``i`` may not pick itself.
    max_block_distances : int
        Most distances held at once: blocks of ``max(1, max_block_distances // K)`` query
        rows, so a ``10,000 x 10,000`` search never holds the full matrix.

    Returns
    -------
    distance : Tensor (Q,) float64
        ``inf`` where no admissible key exists (``K == 1`` with ``exclude_self``).
    index : LongTensor (Q,)
        First nearest key on ties.

    Notes
    -----
    Distances are computed pair by pair in float64 (``torch.cdist`` without the
    matrix-product shortcut), so a verbatim copy is at distance exactly 0 and the result
    does not depend on the block size.
    """
    q, k = queries.double(), keys.double()
    rows = max(1, int(max_block_distances) // max(len(k), 1))
    dist, index = [], []
    for start in range(0, len(q), rows):
        block = torch.cdist(q[start : start + rows], k, compute_mode="donot_use_mm_for_euclid_dist")
        if exclude_self:
            i = torch.arange(len(block), device=block.device)
            block[i, i + start] = math.inf
        d, j = block.min(1)
        dist.append(d)
        index.append(j)
    return torch.cat(dist), torch.cat(index)


def reference_distances(
    zoo: torch.Tensor, zoo_group: torch.Tensor, *, max_block_distances: int = MAX_BLOCK_DISTANCES
) -> torch.Tensor:
    """Distance of each zoo vector to its nearest other zoo vector of the same group.

    Parameters
    ----------
    zoo : Tensor (Z, P)
    zoo_group : LongTensor (Z,)
        Group of each row (task for whole models, class for per-class rows). Groups with
        one member have no other run and are skipped.

    Returns
    -------
    Tensor (R,) float64
        One distance per zoo vector of a group with at least two members (CPU), in
        ascending group id then row order.

    Raises
    ------
    EmptyZooError
        If no group has two members.
    """
    groups, counts = zoo_group.unique(return_counts=True)
    out = []
    for g in groups[counts >= 2].tolist():
        rows = (zoo_group == g).nonzero().flatten()
        d, _ = nearest_rows(
            zoo[rows], zoo[rows], exclude_self=True, max_block_distances=max_block_distances
        )
        out.append(d.cpu())
    if not out:
        raise EmptyZooError(
            f"no group of the zoo has two members ({len(groups)} groups of one row each): "
            "the copy rule's reference is the distance between two independent runs of one "
            "group; train at least two runs (seeds) of some task, or pass the right groups"
        )
    return torch.cat(out)


def copy_audit(
    generated: torch.Tensor,
    zoo: torch.Tensor,
    zoo_group: torch.Tensor,
    rule: CopyRule = CopyRule(),
    *,
    max_block_distances: int = MAX_BLOCK_DISTANCES,
) -> CopyAudit:
    """Flag generated weight vectors that are copies of zoo vectors (see :class:`CopyRule`).

    Parameters
    ----------
    generated : Tensor (G, P)
        Generated vectors (whole models through :func:`~weightspace.weights.vectorize`,
        or per-class head rows).
    zoo : Tensor (Z, P)
        Zoo vectors in the same layout.
    zoo_group : LongTensor (Z,)
        Group of each zoo row (task, or class for per-class rows); a different row of the
        zoo is another, independent run.
    rule : CopyRule
    max_block_distances : int
        Memory bound of the nearest-neighbour search (see :func:`nearest_rows`).

    Returns
    -------
    CopyAudit
        Per-sample nearest distances, rows and copy flags (CPU), and their summary.

    Raises
    ------
    ShapeError, EmptyZooError, NonFiniteWeightsError
        On malformed input, an empty input or a zoo with no group of two members, and
        NaN/inf vectors.
    """
    _check_vectors(generated, zoo, zoo_group)
    ref = reference_distances(zoo, zoo_group, max_block_distances=max_block_distances)
    reference = _median(ref)
    if reference == 0.0:
        logger.warning(
            "copy audit: the median distance between independent zoo runs is 0 (duplicate "
            "zoo rows), so no sample can be called a copy; deduplicate the zoo"
        )
    d, idx = nearest_rows(generated, zoo, max_block_distances=max_block_distances)
    d, idx = d.cpu(), idx.cpu()
    threshold = rule.distance_ratio * reference
    is_copy = d < threshold
    audit = CopyAudit(
        nearest_distance=d,
        nearest_index=idx,
        reference_distance=reference,
        threshold=threshold,
        is_copy=is_copy,
        copy_share=float(is_copy.double().mean()),
        n_reference=len(ref),
        rule=rule,
    )
    logger.info(
        "copy audit: %d/%d samples within %.4g (= %.2f x reference %.4g) of a zoo vector",
        int(is_copy.sum()), len(d), threshold, rule.distance_ratio, reference,
    )  # fmt: skip
    return audit


def _median(x: torch.Tensor) -> float:
    """Median of a non-empty 1-D tensor; the mean of the two middle values for an even
    length (``torch.median`` returns the lower one, ``torch.quantile`` caps the size)."""
    s, n = x.sort().values, len(x)
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def _check_vectors(generated: torch.Tensor, zoo: torch.Tensor, zoo_group: torch.Tensor) -> None:
    """Shapes, emptiness, group dtype and finiteness of :func:`copy_audit`'s inputs."""
    if generated.ndim != 2 or zoo.ndim != 2 or generated.shape[1] != zoo.shape[1]:
        raise ShapeError(
            f"copy_audit needs generated (G, P) and zoo (Z, P) with the same P, got "
            f"{tuple(generated.shape)} and {tuple(zoo.shape)}; flatten models with "
            "weightspace.weights.vectorize"
        )
    if zoo_group.shape != (len(zoo),) or zoo_group.is_floating_point() or zoo_group.is_complex():
        raise ShapeError(
            f"zoo_group must be an integer tensor ({len(zoo)},) (one group id per zoo row), "
            f"got {zoo_group.dtype} of shape {tuple(zoo_group.shape)}"
        )
    if len(zoo) == 0 or len(generated) == 0:
        raise EmptyZooError(
            f"copy_audit got {len(generated)} generated and {len(zoo)} zoo vectors; both "
            "need at least one row"
        )
    for name, m in (("generated", generated), ("zoo", zoo)):
        bad = (~torch.isfinite(m)).any(1).nonzero().flatten()
        if len(bad):
            raise NonFiniteWeightsError(
                f"{name} vectors hold NaN or inf in rows {bad[:20].tolist()}; drop or "
                "resample them before the copy audit"
            )


@torch.no_grad()
def averaged_copy_agreement(
    template: nn.Module,
    zoo: Mapping[str, torch.Tensor],
    zoo_task: torch.Tensor,
    data: TaskStack,
) -> torch.Tensor:
    """Agreement of each zoo member with the weight average of its task's members.

    The "averaged copy" baseline: a generator that outputs the mean of a task's zoo
    members has copied nothing verbatim but learned nothing beyond the zoo either. Only
    tasks with at least two members count (the average of one member is that member).
    Floating-point tensors are averaged; integer buffers keep each member's own value.

    Parameters
    ----------
    template : nn.Module
    zoo : mapping name -> Tensor (Z, *shape)
    zoo_task : LongTensor (Z,)
        Task (index into ``data``) of each member.
    data : TaskStack

    Returns
    -------
    Tensor (R,)
        Share of the task's samples on which the average and the member predict the same
        class, for the ``R`` members of tasks with two or more members, in row order.

    Raises
    ------
    EmptyZooError
        If no task has two members.
    """
    tasks, inverse, counts = zoo_task.unique(return_inverse=True, return_counts=True)
    rows = (counts[inverse] >= 2).nonzero().flatten()
    if len(rows) == 0:
        raise EmptyZooError(
            f"no task of the zoo has two members ({len(tasks)} tasks): the averaged-copy "
            "baseline averages several runs of one task; train at least two seeds per task"
        )
    group = inverse[rows]
    members = {k: v[rows.to(v.device)] for k, v in zoo.items()}
    averaged = {}
    for k, v in members.items():
        if not v.is_floating_point():
            averaged[k] = v
            continue
        g = group.to(v.device)
        sums = torch.zeros((len(tasks), *v.shape[1:]), dtype=v.dtype, device=v.device)
        sums.index_add_(0, g, v)
        n = counts.to(device=v.device, dtype=v.dtype).reshape(-1, *([1] * (v.ndim - 1)))
        averaged[k] = (sums / n)[g]
    return stack_agreement(template, averaged, members, zoo_task[rows], data)


@torch.no_grad()
def memorization_audit(
    template: nn.Module,
    generated: Mapping[str, torch.Tensor],
    gen_task: torch.Tensor,
    zoo: Mapping[str, torch.Tensor],
    zoo_task: torch.Tensor,
    data: TaskStack,
    seed: int = 0,
    *,
    copy_rule: CopyRule | None = CopyRule(),
) -> dict[str, float]:
    """Agreement of generated models with their nearest zoo member vs. three baselines,
    and the weight-space copy rule.

    Parameters
    ----------
    template : nn.Module
        Module of the architecture.
    generated, zoo : mapping name -> Tensor (B, *shape)
    gen_task, zoo_task : LongTensor
        Task (index into ``data``) of each model.
    data : TaskStack
        Evaluation inputs per task.
    seed : int
        Seed of the noise baseline.
    copy_rule : CopyRule or None
        Rule of :func:`copy_audit` on the flattened models, grouped by task (all zoo rows
        searched); ``None`` leaves out the ``copy_*`` keys.

    Returns
    -------
    dict
        ``memorization_similarity`` (mean agreement with the nearest zoo member),
        ``noise_baseline_similarity`` (mean agreement of noisy zoo copies with their
        originals), ``zoo_pair_similarity`` (agreement of two zoo members of one task:
        independent runs), ``averaged_copy_similarity`` (agreement of each member with the
        average of its task's members, :func:`averaged_copy_agreement`),
        ``nearest_distance`` (median L2 distance), ``noise_std``, and the keys of
        :meth:`CopyAudit.to_metrics` unless ``copy_rule`` is ``None``.

    Raises
    ------
    EmptyZooError
        If no task of the zoo has two members (no independent runs to compare with).
    """
    spec = ParameterSpec.from_module(template)
    g, z = vectorize(dict(generated), spec), vectorize(dict(zoo), spec)
    dist = torch.cdist(g, z)
    dist[gen_task[:, None] != zoo_task[None, :]] = float("inf")
    nearest = dist.argmin(1)
    d_near = dist[torch.arange(len(g)), nearest]
    near_state = {k: v[nearest] for k, v in zoo.items()}
    sim = stack_agreement(template, generated, near_state, gen_task, data)
    median = float(d_near[torch.isfinite(d_near)].median())
    std = median / max(z.shape[1], 1) ** 0.5
    gen = torch.Generator().manual_seed(seed)
    noisy = {k: zoo[k] + std * torch.randn(zoo[k].shape, generator=gen) for k in sorted(zoo)}
    base = stack_agreement(template, noisy, zoo, zoo_task, data)
    averaged = averaged_copy_agreement(template, zoo, zoo_task, data)
    # Independent training runs of the same task (another zoo member): how similar two
    # models that are certainly not copies of each other are.
    partner = torch.empty(len(zoo_task), dtype=torch.long)
    for t in zoo_task.unique():
        rows = (zoo_task == t).nonzero().flatten()
        partner[rows] = rows.roll(1)
    pairs = stack_agreement(template, zoo, {k: v[partner] for k, v in zoo.items()}, zoo_task, data)
    out = {
        "memorization_similarity": float(sim.mean()),
        "noise_baseline_similarity": float(base.mean()),
        "zoo_pair_similarity": float(pairs.mean()),
        "averaged_copy_similarity": float(averaged.mean()),
        "nearest_distance": median,
        "noise_std": std,
    }
    if copy_rule is not None:
        out.update(copy_audit(g, z, zoo_task, copy_rule).to_metrics())
    return out


__all__ = [
    "MAX_BLOCK_DISTANCES",
    "CopyAudit",
    "CopyRule",
    "averaged_copy_agreement",
    "copy_audit",
    "memorization_audit",
    "nearest_rows",
    "reference_distances",
]
