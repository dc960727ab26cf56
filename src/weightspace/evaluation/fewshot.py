"""Evaluate classifier heads on k-way tasks: zero-shot accuracy, fine-tuning curves.

The support set of a task is ``shots`` labelled samples per class drawn from its training
split; the query set is its test split. Fine-tuning runs ``k`` full-batch steps on the
support set (so one epoch is one step) from a given initialisation, with the batched
trainer of :mod:`weightspace.zoo.train`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from weightspace.data.base import Split, SplitDataset
from weightspace.data.tasks import TaskSpec, make_task
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, train_stack


def task_datasets(pool: SplitDataset, tasks: Sequence[tuple[int, ...]]) -> list[SplitDataset]:
    """The relabelled dataset of every class tuple (label ``j`` = ``classes[j]``)."""
    return [make_task(pool, TaskSpec(pool.name, classes=tuple(c))) for c in tasks]


def support_split(ds: SplitDataset, shots: int, seed: int) -> Split:
    """``shots`` training samples per class (deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    idx = []
    for k in range(ds.n_classes):
        members = (ds.train.y == k).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=gen)[:shots]])
    pick = torch.cat(idx)
    return Split(ds.train.x[pick], ds.train.y[pick])


@dataclass(frozen=True)
class GroupData:
    """A group of k-way tasks with their support and query stacks.

    ``support_sets`` is ``(T, K, shots, *x)``: the support samples of task ``t``,
    class by class (the conditioning input of a dataset encoder).
    """

    datasets: list[SplitDataset]
    support: TaskStack
    support_sets: torch.Tensor
    val: TaskStack
    test: TaskStack


def group_data(datasets: Sequence[SplitDataset], shots: int, seed: int) -> GroupData:
    """Support sets (``shots`` per class from train, seed ``seed + t`` for task ``t``),
    validation and test stacks."""
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


def finetune_curves(
    template: nn.Module,
    init: Mapping[str, torch.Tensor],
    task_index: torch.Tensor,
    support: TaskStack,
    query: TaskStack,
    steps: Sequence[int],
    lr: float,
    optimizer: str = "adam",
    seed: int = 0,
) -> torch.Tensor:
    """Query accuracy before and after ``steps`` full-batch steps on the support sets.

    ``lr == 0`` leaves ``init`` as it is (every column is its accuracy, nothing trains).

    Returns
    -------
    Tensor (B, 1 + len(steps))
        Column 0 is the accuracy of ``init`` itself.
    """
    b = len(task_index)
    out = [stack_accuracy(template, init, task_index, query)]
    if lr == 0:
        return out[0][:, None].repeat(1, 1 + len(steps))
    k = max(steps)
    hp = StackHParams(
        seeds=torch.arange(b) + seed,
        lr=torch.full((b,), lr),
        weight_decay=torch.zeros(b),
        epochs=torch.full((b,), k),
        init_scale=torch.ones(b),
    )
    result = train_stack(
        template, hp, task_index, support, support.n_max, optimizer=optimizer,
        snapshot_epochs=list(steps), init=init,
    )  # fmt: skip
    for s in steps:
        state = result.final if s == k else result.snapshots[s]
        out.append(stack_accuracy(template, state, task_index, query))
    return torch.stack(out, 1)
