"""Memorization audit: do generated models only replay their training checkpoints?

For each generated model, find its nearest zoo member (L2 in weight space, among the zoo
members of the same task; weights flattened through the architecture's
:class:`~weightspace.weights.ParameterSpec`, so the order in which a state dict lists its
tensors does not matter) and measure how often their predictions agree on the task's
test inputs. As a reference, perturb each zoo member with Gaussian noise whose norm equals
the median distance from generated models to their nearest members, and measure the
agreement of the perturbed copy with the original. Generated models that agree with their
nearest zoo member as much as (or more than) noisy copies do are, in function, copies
(the critique of p-diff by Wang et al. 2024).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from weightspace.weights import ParameterSpec, vectorize
from weightspace.zoo.evaluate import stack_agreement
from weightspace.zoo.tasks import TaskStack


@torch.no_grad()
def memorization_audit(
    template: nn.Module,
    generated: Mapping[str, torch.Tensor],
    gen_task: torch.Tensor,
    zoo: Mapping[str, torch.Tensor],
    zoo_task: torch.Tensor,
    data: TaskStack,
    seed: int = 0,
) -> dict[str, float]:
    """Agreement of generated models with their nearest zoo member vs. a noise baseline.

    Parameters
    ----------
    generated, zoo : mapping name -> Tensor (B, *shape)
    gen_task, zoo_task : LongTensor
        Task (index into ``data``) of each model.
    data : TaskStack
        Evaluation inputs per task.

    Returns
    -------
    dict
        ``memorization_similarity`` (mean agreement with the nearest zoo member),
        ``noise_baseline_similarity`` (mean agreement of noisy zoo copies with their
        originals), ``zoo_pair_similarity`` (agreement of two zoo members of one task:
        independent runs), ``nearest_distance`` (median L2 distance), ``noise_std``.
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
    # Independent training runs of the same task (another zoo member): how similar two
    # models that are certainly not copies of each other are.
    partner = torch.empty(len(zoo_task), dtype=torch.long)
    for t in zoo_task.unique():
        rows = (zoo_task == t).nonzero().flatten()
        partner[rows] = rows.roll(1)
    pairs = stack_agreement(template, zoo, {k: v[partner] for k, v in zoo.items()}, zoo_task, data)
    return {
        "memorization_similarity": float(sim.mean()),
        "noise_baseline_similarity": float(base.mean()),
        "zoo_pair_similarity": float(pairs.mean()),
        "nearest_distance": median,
        "noise_std": std,
    }
