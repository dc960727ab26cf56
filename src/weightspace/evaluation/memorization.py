"""Memorization audit: do generated models only replay their training checkpoints?

For each generated model, find its nearest zoo member (L2 in weight space, among the zoo
members of the same task) and measure how often their predictions agree on the task's
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

from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import predict_stack


def _flat(stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Model-wise vectors ``(B, D)``, tensors in sorted-name order: two stacks compare
    element by element whatever order their dicts list the tensors in (a state read from
    a checkpoint lists them sorted, a decoded one in parameter order)."""
    return torch.cat([stacked[k].flatten(1) for k in sorted(stacked)], 1)


@torch.no_grad()
def _agreement(template, a, b, task_index, data: TaskStack) -> torch.Tensor:
    pa = predict_stack(template, dict(a), task_index, data).argmax(-1)
    pb = predict_stack(template, dict(b), task_index, data).argmax(-1)
    t = task_index.to(data.y.device)
    mask = torch.arange(data.n_max, device=pa.device)[None, :] < data.n[t][:, None]
    return (((pa == pb) & mask).sum(1) / mask.sum(1)).cpu()


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
    g, z = _flat(generated), _flat(zoo)
    dist = torch.cdist(g, z)
    dist[gen_task[:, None] != zoo_task[None, :]] = float("inf")
    nearest = dist.argmin(1)
    d_near = dist[torch.arange(len(g)), nearest]
    near_state = {k: v[nearest] for k, v in zoo.items()}
    sim = _agreement(template, generated, near_state, gen_task, data)
    median = float(d_near[torch.isfinite(d_near)].median())
    std = median / max(z.shape[1], 1) ** 0.5
    gen = torch.Generator().manual_seed(seed)
    noisy = {k: zoo[k] + std * torch.randn(zoo[k].shape, generator=gen) for k in sorted(zoo)}
    base = _agreement(template, noisy, zoo, zoo_task, data)
    # Independent training runs of the same task (another zoo member): how similar two
    # models that are certainly not copies of each other are.
    partner = torch.empty(len(zoo_task), dtype=torch.long)
    for t in zoo_task.unique():
        rows = (zoo_task == t).nonzero().flatten()
        partner[rows] = rows.roll(1)
    pairs = _agreement(template, zoo, {k: v[partner] for k, v in zoo.items()}, zoo_task, data)
    return {
        "memorization_similarity": float(sim.mean()),
        "noise_baseline_similarity": float(base.mean()),
        "zoo_pair_similarity": float(pairs.mean()),
        "nearest_distance": median,
        "noise_std": std,
    }
