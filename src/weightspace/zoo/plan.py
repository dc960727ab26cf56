"""Plan a zoo run: which members to reuse from an earlier zoo and how to stack the rest.

A member is reused when every checkpoint it produces (its snapshots and its final
weights, :func:`model_ids_of`) exists in the previous zoo and verifies; the others are
grouped into stacks of one architecture and stack key (:meth:`MemberSpec.stack_key`), at
most ``max_stack`` members each, that :mod:`weightspace.zoo.build` trains together.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from weightspace.data.base import SplitDataset
from weightspace.data.tasks import TaskSpec, make_task
from weightspace.errors import (
    CorruptCheckpointError,
    EmptyZooError,
    InvalidParameterError,
    UnknownDatasetError,
)
from weightspace.nets.registry import ArchSpec
from weightspace.zoo.spec import MemberSpec
from weightspace.zoo.zoo import INDEX_COLUMNS, Zoo

__all__ = [
    "TaskShape",
    "ZooPlan",
    "check_members",
    "materialize_tasks",
    "model_ids_of",
    "plan_zoo",
    "reusable_members",
    "stack_groups",
    "task_shapes",
    "total_steps",
]

log = logging.getLogger(__name__)


def model_ids_of(member: MemberSpec, snapshot_every: int) -> list[tuple[str, int]]:
    """(model_id, epoch) of every checkpoint a member produces, the final one last."""
    mid, epochs = member.member_id, member.train.epochs
    snaps = [e for e in range(snapshot_every, epochs, snapshot_every)] if snapshot_every else []
    return [(f"{mid}-e{e:03d}", e) for e in snaps] + [(mid, epochs)]


def materialize_tasks(
    members: Sequence[MemberSpec], datasets: Mapping[str, SplitDataset]
) -> dict[TaskSpec, SplitDataset]:
    """The dataset of every distinct task of the members."""
    out: dict[TaskSpec, SplitDataset] = {}
    for m in members:
        if m.task in out:
            continue
        if m.task.dataset not in datasets:
            raise UnknownDatasetError(
                f"member task {m.task.name!r} needs dataset {m.task.dataset!r}, which was not "
                f"loaded (loaded: {sorted(datasets)}); add it to the zoo's data section"
            )
        out[m.task] = make_task(datasets[m.task.dataset], m.task)
    return out


def reusable_members(
    previous: Zoo | None, members: Sequence[MemberSpec], snapshot_every: int, on_corrupt: str
) -> tuple[set[str], pd.DataFrame]:
    """Members whose every checkpoint exists and verifies in ``previous``.

    Returns their ids and their rows of ``previous``'s index. A corrupt checkpoint (sha256
    mismatch, unparseable, or NaN/inf weights) raises :class:`CorruptCheckpointError`
    naming the files and the fix when ``on_corrupt == "error"``, else its member is
    retrained (as is one with a missing checkpoint).
    """
    if previous is None or len(previous) == 0:
        return set(), pd.DataFrame(columns=INDEX_COLUMNS)
    known = set(previous.model_ids)
    candidates = [
        m for m in members if all(mid in known for mid, _ in model_ids_of(m, snapshot_every))
    ]
    wanted = {mid for m in candidates for mid, _ in model_ids_of(m, snapshot_every)}
    sub = previous.select(previous.index["model_id"].isin(wanted))
    problems = sub.problems()
    missing = [m for m, why in problems.items() if why == "missing"]
    corrupt = {m: why for m, why in problems.items() if why != "missing"}
    if corrupt and on_corrupt == "error":
        listed = [f"{sub.file_path(c)} ({why.split(':')[0]})" for c, why in corrupt.items()]
        raise CorruptCheckpointError(
            f"{len(corrupt)} zoo checkpoint(s) are corrupt (sha256 mismatch, unreadable, or "
            f"NaN/inf weights): {listed[:10]}. To fix: delete those files (the next run "
            "retrains only those models), or set zoo.run.on_corrupt: retrain"
        )
    for c, why in corrupt.items():
        log.warning("checkpoint %s is unusable (%s): retraining", sub.file_path(c), why)
    for m in missing:
        log.info("checkpoint of %s is missing: retraining", m)
    bad = set(missing) | set(corrupt)
    reuse = {
        m.member_id
        for m in candidates
        if not any(mid in bad for mid, _ in model_ids_of(m, snapshot_every))
    }
    keep_ids = {
        mid
        for m in candidates
        if m.member_id in reuse
        for mid, _ in model_ids_of(m, snapshot_every)
    }
    rows = previous.index[previous.index["model_id"].isin(keep_ids)]
    return reuse, rows


@dataclass(frozen=True)
class ZooPlan:
    """What a zoo run does: the members to reuse, and the stacks that train the rest.

    Attributes
    ----------
    todo : list of MemberSpec
        Members to train, in grid order.
    reuse : set of str
        Member ids reused from the previous zoo.
    reused_rows : DataFrame
        Their rows of the previous index.
    tasks : dict TaskSpec -> SplitDataset
        Dataset of every task of ``todo``.
    stacks : list of (ArchSpec, list of MemberSpec)
        Groups trained together, at most ``max_stack`` members each.
    total_steps : int
        Optimiser steps of all stacks (the progress bar's total).
    """

    todo: list[MemberSpec]
    reuse: set[str]
    reused_rows: pd.DataFrame
    tasks: dict[TaskSpec, SplitDataset]
    stacks: list[tuple[ArchSpec, list[MemberSpec]]]
    total_steps: int


def check_members(members: Sequence[MemberSpec]) -> None:
    """Raise on an empty grid or a member listed twice."""
    if not members:
        raise EmptyZooError("the zoo grid produced no members; check tasks/architectures/seeds")
    ids = [m.member_id for m in members]
    if len(set(ids)) != len(ids):
        raise InvalidParameterError("the zoo grid lists the same member twice; remove duplicates")


@dataclass(frozen=True)
class TaskShape:
    """What stacking needs of a task: its input shape and number of classes."""

    input_shape: tuple[int, ...]
    n_classes: int


def task_shapes(
    members: Sequence[MemberSpec], datasets: Mapping[str, SplitDataset]
) -> dict[TaskSpec, TaskShape]:
    """Input shape and class count of every distinct task of the members.

    Each task is materialised in turn and dropped, so only one is in memory at a time.
    """
    out: dict[TaskSpec, TaskShape] = {}
    for m in members:
        if m.task not in out:
            ds = materialize_tasks([m], datasets)[m.task]
            out[m.task] = TaskShape(tuple(ds.input_shape), int(ds.n_classes))
    return out


def stack_groups(
    todo: Sequence[MemberSpec], tasks: Mapping[TaskSpec, SplitDataset | TaskShape]
) -> list[tuple[ArchSpec, list[MemberSpec]]]:
    """Members that can train together (same architecture and stack key), in order of
    first appearance, each group in grid order (not split by ``max_stack``).

    ``tasks`` maps each member's task to its dataset or :class:`TaskShape`.
    """
    groups: dict[tuple, list[MemberSpec]] = defaultdict(list)
    archs: dict[tuple, ArchSpec] = {}
    for m in todo:
        ds = tasks[m.task]
        arch = ArchSpec(m.arch, dict(m.arch_config), ds.input_shape, ds.n_classes)
        key = (arch.key, *m.stack_key())
        groups[key].append(m)
        archs[key] = arch
    return [(archs[key], group) for key, group in groups.items()]


def _group_stacks(
    todo: Sequence[MemberSpec], tasks: Mapping[TaskSpec, SplitDataset], max_stack: int
) -> list[tuple[ArchSpec, list[MemberSpec]]]:
    """Members that can train together (same architecture and stack key), in chunks of
    at most ``max_stack``, in order of first appearance."""
    return [
        (arch, group[i : i + max_stack])
        for arch, group in stack_groups(todo, tasks)
        for i in range(0, len(group), max_stack)
    ]


def total_steps(
    stacks: Sequence[tuple[ArchSpec, Sequence[MemberSpec]]],
    tasks: Mapping[TaskSpec, SplitDataset],
) -> int:
    """Optimiser steps of all stacks (a progress bar's total)."""
    steps = 0
    for _arch, chunk in stacks:
        n_max = max(len(tasks[m.task].train) for m in chunk)
        steps_per_epoch = math.ceil(n_max / chunk[0].train.batch_size)
        steps += steps_per_epoch * max(m.train.epochs for m in chunk)
    return steps


def plan_zoo(
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    previous: Zoo | None,
    *,
    snapshot_every: int,
    on_corrupt: str,
    max_stack: int,
) -> ZooPlan:
    """Decide which members are reused from ``previous`` and how the rest is stacked.

    Parameters
    ----------
    members : sequence of MemberSpec
        The whole grid.
    datasets : mapping name -> SplitDataset
        Base datasets of the members' tasks.
    previous : Zoo, optional
        Zoo of an earlier run (see :func:`reusable_members`).
    snapshot_every, on_corrupt, max_stack
        As in :class:`weightspace.zoo.build.ZooRunOptions`.

    Returns
    -------
    ZooPlan
    """
    reuse, reused_rows = reusable_members(previous, members, snapshot_every, on_corrupt)
    todo = [m for m in members if m.member_id not in reuse]
    tasks = materialize_tasks(todo, datasets)
    stacks = _group_stacks(todo, tasks, max_stack)
    return ZooPlan(todo, reuse, reused_rows, tasks, stacks, total_steps(stacks, tasks))
