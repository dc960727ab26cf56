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
from typing import Any

from weightspace.data.tasks import TaskSpec, sample_class_subsets
from weightspace.errors import EmptyZooError, InvalidParameterError
from weightspace.zoo.spec import MemberSpec, TrainConfig

_TASK_KEYS = {"dataset", "classes", "subsets", "transforms"}


def expand_tasks(
    entries: Sequence[Mapping[str, Any]], n_classes: Mapping[str, int]
) -> list[TaskSpec]:
    """TaskSpecs of the grid's task entries, duplicates removed, order kept.

    Parameters
    ----------
    entries : sequence of mapping
        Task entries (see the module docstring).
    n_classes : mapping dataset name -> number of classes
        Needed to sample class subsets.
    """
    tasks: list[TaskSpec] = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - _TASK_KEYS
        if unknown or "dataset" not in entry:
            raise InvalidParameterError(
                f"zoo task entry {i} {dict(entry)!r}: needs 'dataset' and only the keys "
                f"{sorted(_TASK_KEYS)} (unknown: {sorted(unknown)})"
            )
        name = entry["dataset"]
        if name not in n_classes:
            raise InvalidParameterError(
                f"zoo task entry {i} uses dataset {name!r}, which the zoo did not load; "
                f"loaded: {sorted(n_classes)}"
            )
        class_sets: list[tuple[int, ...] | None] = [None]
        if "classes" in entry and "subsets" in entry:
            raise InvalidParameterError(
                f"zoo task entry {i}: give 'classes' or 'subsets', not both"
            )
        if "classes" in entry:
            class_sets = [tuple(int(c) for c in entry["classes"])]
        if "subsets" in entry:
            sub = dict(entry["subsets"])
            class_sets = list(
                sample_class_subsets(
                    n_classes[name],
                    int(sub["k"]),
                    int(sub["count"]),
                    seed=int(sub.get("seed", 0)),
                    exclude=tuple(sub.get("exclude", ())),
                )
            )
        transforms: list[Mapping[str, Any] | None] = list(entry.get("transforms") or [None])
        for classes, tf in itertools.product(class_sets, transforms):
            spec = TaskSpec(
                dataset=name,
                classes=classes,
                transform=None if tf is None else str(tf["name"]),
                transform_param=0.0 if tf is None else float(tf.get("param", 0.0)),
                transform_seed=0 if tf is None else int(tf.get("seed", 0)),
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
    grid: Mapping[str, Any], n_classes: Mapping[str, int], data_seed: int = 0
) -> list[MemberSpec]:
    """All members of a grid: architectures x tasks x seeds x training configs."""
    for key in ("tasks", "architectures", "seeds"):
        if key not in grid:
            raise InvalidParameterError(f"the zoo grid needs a '{key}' entry")
    tasks = expand_tasks(grid["tasks"], n_classes)
    archs = list(grid["architectures"])
    if not archs:
        raise EmptyZooError("the zoo grid has no architectures; add entries under 'architectures'")
    for i, a in enumerate(archs):
        unknown = set(a) - {"name", "config", "datasets", "key"}
        if unknown or "name" not in a:
            raise InvalidParameterError(
                f"zoo architecture entry {i} {dict(a)!r}: needs 'name' and only the keys "
                f"['config', 'datasets', 'key', 'name'] (unknown: {sorted(unknown)})"
            )
        missing = sorted(set(a.get("datasets") or ()) - set(n_classes))
        if missing:
            raise InvalidParameterError(
                f"zoo architecture entry {i} names datasets {missing} that the zoo did not "
                f"load; loaded: {sorted(n_classes)}"
            )
    trains = expand_train_configs(grid.get("train", {}))
    members = [
        MemberSpec(
            arch=str(a["name"]),
            arch_config=dict(a.get("config") or {}),
            task=task,
            seed=seed,
            train=train,
            data_seed=data_seed,
        )
        for a in archs
        for task in tasks
        if not a.get("datasets") or task.dataset in a["datasets"]
        for seed in expand_seeds(grid["seeds"])
        for train in trains
    ]
    return members
