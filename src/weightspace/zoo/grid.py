"""Expand a zoo grid (architectures x tasks x seeds x hyper-parameters) into members.

The grid is plain data, as written in ``conf/base/parameters_zoo.yml``::

    tasks:                      # each entry yields one or more TaskSpecs
      - {dataset: digits}                                       # all classes
      - {dataset: digits, classes: [0, 1, 2]}                   # an explicit subset
      - {dataset: digits, subsets: {k: 5, count: 6, seed: 0}}  # sampled k-way subsets
      - {dataset: mnist1d, transforms: [{name: noise, param: 0.1}, {name: invert}]}
    architectures:
      - {name: mlp, config: {hidden: [32]}}
      - {name: vgg, config: {stages: [[8]]}, datasets: [mnist1d]}  # only these datasets
      - {key: deep, name: mlp, config: {hidden: [32, 32]}}  # a short name for experiments
    seeds: 5                    # an int n means seeds 0..n-1; a list is taken as is
    train:                      # scalars or lists; lists are crossed
      lr: [0.01, 0.003]
      epochs: 10

An entry with both ``subsets``/``classes`` and ``transforms`` yields their product.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weightspace.config import from_mapping
from weightspace.data.tasks import TaskSpec, sample_class_subsets
from weightspace.errors import EmptyZooError, InvalidParameterError
from weightspace.zoo.spec import MemberSpec, TrainConfig


@dataclass(frozen=True)
class SubsetEntry:
    """``count`` sampled ``k``-way class subsets (``exclude``: classes never drawn)."""

    k: int
    count: int
    seed: int = 0
    exclude: tuple[int, ...] = ()


@dataclass(frozen=True)
class TransformEntry:
    """An input transform of a task (see :mod:`weightspace.data.transforms`)."""

    name: str
    param: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class TaskEntry:
    """One task entry of the grid: a dataset, its classes, its transforms."""

    dataset: str
    classes: tuple[int, ...] | None = None
    subsets: SubsetEntry | None = None
    transforms: tuple[TransformEntry, ...] | None = None


@dataclass(frozen=True)
class ArchEntry:
    """One architecture of the grid (``datasets``: only these; ``key``: a short name
    other parameter blocks use to refer to it; neither enters member ids)."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None
    key: str | None = None


@dataclass(frozen=True)
class ZooGrid:
    """A whole grid; ``seeds`` is ``n`` (seeds ``0..n-1``) or a list; ``train`` maps
    :class:`TrainConfig` fields to a value or a list of values (lists are crossed)."""

    tasks: tuple[TaskEntry, ...]
    architectures: tuple[ArchEntry, ...]
    seeds: Any
    train: dict[str, Any] = field(default_factory=dict)


def as_grid(grid: ZooGrid | Mapping[str, Any]) -> ZooGrid:
    """The typed grid of a ``zoo.grid`` parameters block (unknown keys are errors)."""
    return grid if isinstance(grid, ZooGrid) else from_mapping(ZooGrid, grid, "grid")


def _class_sets(i: int, entry: TaskEntry, n: int) -> list[tuple[int, ...] | None]:
    if entry.classes is not None and entry.subsets is not None:
        raise InvalidParameterError(f"zoo task entry {i}: give 'classes' or 'subsets', not both")
    if entry.classes is not None:
        return [tuple(entry.classes)]
    if entry.subsets is not None:
        sub = entry.subsets
        return list(sample_class_subsets(n, sub.k, sub.count, seed=sub.seed, exclude=sub.exclude))
    return [None]


def expand_tasks(
    entries: Sequence[TaskEntry | Mapping[str, Any]], n_classes: Mapping[str, int]
) -> list[TaskSpec]:
    """TaskSpecs of the grid's task entries, duplicates removed, order kept.

    Parameters
    ----------
    entries : sequence of TaskEntry (or mappings of its fields)
        Task entries (see the module docstring).
    n_classes : mapping dataset name -> number of classes
        Needed to sample class subsets.
    """
    tasks: list[TaskSpec] = []
    for i, raw in enumerate(entries):
        entry = raw if isinstance(raw, TaskEntry) else from_mapping(TaskEntry, raw, f"tasks[{i}]")
        if entry.dataset not in n_classes:
            raise InvalidParameterError(
                f"zoo task entry {i} uses dataset {entry.dataset!r}, which the zoo did not "
                f"load; loaded: {sorted(n_classes)}"
            )
        class_sets = _class_sets(i, entry, n_classes[entry.dataset])
        transforms: list[TransformEntry | None] = list(entry.transforms or [None])
        for classes, tf in itertools.product(class_sets, transforms):
            spec = TaskSpec(
                dataset=entry.dataset,
                classes=classes,
                transform=None if tf is None else tf.name,
                transform_param=0.0 if tf is None else tf.param,
                transform_seed=0 if tf is None else tf.seed,
            )
            if spec not in tasks:
                tasks.append(spec)
    if not tasks:
        raise EmptyZooError("the zoo grid has no tasks; add entries under 'tasks'")
    return tasks


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def expand_train_configs(train: Mapping[str, Any]) -> list[TrainConfig]:
    """Cross every list-valued training hyper-parameter."""
    allowed = set(TrainConfig.__dataclass_fields__)
    unknown = set(train) - allowed
    if unknown:
        raise InvalidParameterError(
            f"unknown zoo training parameters {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    keys = list(train)
    combos = itertools.product(*(_as_list(train[k]) for k in keys))
    return [TrainConfig(**dict(zip(keys, values, strict=True))) for values in combos]


def expand_seeds(seeds: int | Sequence[int]) -> list[int]:
    """``n`` -> ``0..n-1``; a list is taken as is."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise InvalidParameterError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise InvalidParameterError(f"seeds must be a non-empty list of distinct ints, got {seeds}")
    return out


def expand_grid(
    grid: ZooGrid | Mapping[str, Any], n_classes: Mapping[str, int], data_seed: int = 0
) -> list[MemberSpec]:
    """All members of a grid: architectures x tasks x seeds x training configs."""
    g = as_grid(grid)
    tasks = expand_tasks(g.tasks, n_classes)
    if not g.architectures:
        raise EmptyZooError("the zoo grid has no architectures; add entries under 'architectures'")
    for i, a in enumerate(g.architectures):
        missing = sorted(set(a.datasets or ()) - set(n_classes))
        if missing:
            raise InvalidParameterError(
                f"zoo architecture entry {i} names datasets {missing} that the zoo did not "
                f"load; loaded: {sorted(n_classes)}"
            )
    trains = expand_train_configs(g.train)
    return [
        MemberSpec(
            arch=a.name,
            arch_config=dict(a.config or {}),
            task=task,
            seed=seed,
            train=train,
            data_seed=data_seed,
        )
        for a in g.architectures
        for task in tasks
        if not a.datasets or task.dataset in a.datasets
        for seed in expand_seeds(g.seeds)
        for train in trains
    ]
