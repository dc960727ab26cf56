"""The D2NWG evaluation protocol on k-way few-shot heads (the paper's Table 1 setting).

For three groups of tasks — *seen* (zoo tasks), *unseen* (new combinations of seen
classes) and *novel* (classes held out of the zoo and the feature extractors) — it
measures: heads sampled with no training (mean over candidates, and best-of-K chosen on
data the setting allows: the validation split for seen tasks, the support set for
few-shot tasks), an oracle head trained on the task's full training split, a random head,
fine-tuning curves from sampled / random / nearest-zoo-member initialisations on the
support set, and the memorization audit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data.base import SplitDataset
from weightspace.evaluation.fewshot import accuracy_on, finetune_curves, support_split
from weightspace.evaluation.memorization import memorization_audit
from weightspace.zoo.init import init_stack
from weightspace.zoo.rng import permutation_keys
from weightspace.zoo.tasks import TaskStack

Sampler = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]
"""``sampler(sets (B, K, S, d), n) -> stacked weights {name: (B * n, *shape)}``."""


@dataclass(frozen=True)
class GroupData:
    """The tasks of one group with their support and query stacks."""

    datasets: list[SplitDataset]
    support: TaskStack
    support_sets: torch.Tensor  # (T, K, shots, d)
    val: TaskStack
    test: TaskStack


def group_data(datasets: Sequence[SplitDataset], shots: int, seed: int) -> GroupData:
    """Support sets (``shots`` per class, from train), validation and test stacks."""
    supports = [support_split(ds, shots, seed + i) for i, ds in enumerate(datasets)]
    sets = torch.stack(
        [
            torch.stack([s.x[s.y == k] for k in range(ds.n_classes)])
            for s, ds in zip(supports, datasets, strict=True)
        ]
    )
    return GroupData(
        list(datasets),
        TaskStack.from_splits(supports),
        sets,
        TaskStack.from_splits([ds.val for ds in datasets]),
        TaskStack.from_splits([ds.test for ds in datasets]),
    )


def _best_of(acc_select: torch.Tensor, acc_test: torch.Tensor, k: int) -> torch.Tensor:
    """Test accuracy of the candidate with the best selection accuracy, per task."""
    sel = acc_select.view(-1, k).argmax(1)
    return acc_test.view(-1, k)[torch.arange(len(sel)), sel]


def evaluate_group(
    template: nn.Module,
    sampler: Sampler,
    group: GroupData,
    n_candidates: int,
    select_on: str,
) -> dict[str, torch.Tensor]:
    """Sampled-head accuracies of one task group: per candidate and best-of-K."""
    t = len(group.datasets)
    start = time.perf_counter()
    stacked = sampler(group.support_sets, n_candidates)
    seconds = time.perf_counter() - start
    task_index = torch.arange(t).repeat_interleave(n_candidates)
    test = accuracy_on(template, stacked, task_index, group.test)
    select = accuracy_on(
        template, stacked, task_index, group.val if select_on == "val" else group.support
    )
    return {
        "stacked": stacked,
        "task_index": task_index,
        "test": test,
        "best": _best_of(select, test, n_candidates),
        "seconds_per_model": torch.tensor(seconds / len(task_index)),
    }


def random_heads(template: nn.Module, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Default-initialised (untrained) weights for ``n`` models."""
    return init_stack(template, torch.arange(n) + seed, 1.0)


def finetune_comparison(
    template: nn.Module,
    group: GroupData,
    inits: Mapping[str, Mapping[str, torch.Tensor]],
    steps: Sequence[int],
    lr: float,
) -> dict[str, torch.Tensor]:
    """Query-accuracy curves (T, 1 + len(steps)) from each named initialisation."""
    task_index = torch.arange(len(group.datasets))
    return {
        name: finetune_curves(template, init, task_index, group.support, group.test, steps, lr)
        for name, init in inits.items()
    }


__all__ = [
    "GroupData",
    "Sampler",
    "evaluate_group",
    "finetune_comparison",
    "generation_throughput",
    "group_data",
    "memorization_audit",
    "random_heads",
    "seconds_to_match",
]


def generation_throughput(
    sampler: Sampler, sets: torch.Tensor, n: int, sync: Callable[[], None]
) -> float:
    """Generated models per second for ``len(sets) * n`` models in one batched call."""
    sampler(sets[:1], 1)  # warm-up
    sync()
    start = time.perf_counter()
    out = sampler(sets, n)
    sync()
    seconds = time.perf_counter() - start
    return next(iter(out.values())).shape[0] / seconds


def seconds_to_match(
    template_fn: Callable[[], nn.Module],
    task: SplitDataset,
    target_acc: float,
    lr: float,
    batch_size: int,
    max_epochs: int = 100,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Wall time for the plain per-model loop to reach ``target_acc`` on the test split.

    Trains one model epoch by epoch (``weightspace.zoo.reference.train_one`` semantics,
    checking test accuracy after each epoch, the check not timed) and returns
    ``(seconds, epochs)``; ``(inf, max_epochs)`` if never reached.
    """
    model = template_fn().to(device)
    init = init_stack(model, torch.tensor([0]), 1.0, device=device)
    model.load_state_dict({k: v[0] for k, v in init.items()}, strict=False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = task.train.x.to(device), task.train.y.to(device)
    xt, yt = task.test.x.to(device), task.test.y.to(device)
    n, spent = len(y), 0.0
    seed, n_t = torch.tensor([0], device=device), torch.tensor([n], device=device)
    for epoch in range(max_epochs):
        start = time.perf_counter()
        order = permutation_keys(seed, epoch, n_t, n)[0]
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        spent += time.perf_counter() - start
        with torch.no_grad():
            if float((model(xt).argmax(1) == yt).float().mean()) >= target_acc:
                return spent, epoch + 1
    return float("inf"), max_epochs
