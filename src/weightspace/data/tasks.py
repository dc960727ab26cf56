"""Tasks: class subsets and input transforms of a base dataset.

A zoo for dataset-conditioned weight generation needs many related classification
tasks (D2NWG, Sect. 4.1: classifier heads trained on many class subsets of a dataset and
evaluated on unseen subsets; the reviews' "5-way" tasks are 5-class subsets). A
:class:`TaskSpec` names one such task: the base dataset, an ordered class subset
(relabelled ``0..k-1`` in the given order) and an optional input transform from
:mod:`weightspace.data.transforms`. :func:`make_task` builds it from a base
:class:`~weightspace.data.base.SplitDataset`; :func:`sample_class_subsets` draws many
distinct subsets deterministically, optionally keeping novel classes out.

Task names are canonical and stable, e.g.::

    digits
    digits[0,3,5,7,9]
    mnist1d|noise(0.1)#0
    digits[1,2]|rotate(90)#0
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from weightspace.data.base import SPLITS, Split, SplitDataset
from weightspace.data.transforms import (
    PER_SPLIT_RANDOM,
    apply_transform,
    fit_transform_kwargs,
    get_transform,
)
from weightspace.errors import InvalidParameterError

_ENUMERATE_LIMIT = 200_000


def _format_number(value: float) -> str:
    """Shortest exact text for ``value``: ``90`` for 90.0, ``0.1`` for 0.1."""
    return str(int(value)) if value.is_integer() else repr(value)


def _check_classes(classes: Iterable[int], what: str) -> tuple[int, ...]:
    try:
        given = list(classes)
        out = tuple(int(c) for c in given)
    except (TypeError, ValueError) as err:
        raise InvalidParameterError(f"{what} must be integers, got {classes!r}.") from err
    if any(isinstance(c, bool | float) for c in given) or any(c < 0 for c in out):
        raise InvalidParameterError(f"{what} must be non-negative integers, got {given!r}.")
    duplicates = sorted({c for c in out if out.count(c) > 1})
    if duplicates:
        raise InvalidParameterError(f"{what} has duplicate class ids {duplicates}: {out}.")
    return out


@dataclass(frozen=True)
class TaskSpec:
    """Specification of a task derived from a base dataset.

    Parameters
    ----------
    dataset : str
        Name of the base dataset (``SplitDataset.name``), e.g. ``"digits"``.
    classes : tuple of int, optional
        Base class ids to keep, at least two, no duplicates. Class ``classes[j]`` becomes
        label ``j``. ``None`` keeps all classes with their labels.
    transform : str, optional
        Name of an input transform in :data:`weightspace.data.transforms.TRANSFORMS`.
    transform_param : float
        The transform's parameter (angle, shift, noise std; 0 for the others).
    transform_seed : int
        The transform's seed (permutation, noise).

    Raises
    ------
    InvalidParameterError
        On duplicate or negative class ids, fewer than two classes, or a transform
        parameter/seed given without a transform.
    UnknownDatasetError
        If ``transform`` is not a registered transform.
    """

    dataset: str
    classes: tuple[int, ...] | None = None
    transform: str | None = None
    transform_param: float = 0.0
    transform_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise InvalidParameterError(
                f"TaskSpec.dataset must be a dataset name, got {self.dataset!r}."
            )
        if self.classes is not None:
            classes = _check_classes(self.classes, "TaskSpec.classes")
            if len(classes) < 2:
                raise InvalidParameterError(
                    f"A task needs at least 2 classes, got {classes}; use classes=None for "
                    f"all classes."
                )
            object.__setattr__(self, "classes", classes)
        param = float(self.transform_param)
        if not math.isfinite(param):
            raise InvalidParameterError(f"transform_param must be finite, got {param}.")
        object.__setattr__(self, "transform_param", param)
        object.__setattr__(self, "transform_seed", int(self.transform_seed))
        if self.transform is None:
            if param != 0.0 or self.transform_seed != 0:
                raise InvalidParameterError(
                    "transform_param/transform_seed were set but transform is None; name the "
                    "transform or leave them at 0."
                )
        else:
            get_transform(self.transform)

    @property
    def name(self) -> str:
        """Canonical name: ``dataset[c0,c1,...]|transform(param)#seed``."""
        text = self.dataset
        if self.classes is not None:
            text += "[" + ",".join(str(c) for c in self.classes) + "]"
        if self.transform is not None:
            text += f"|{self.transform}({_format_number(self.transform_param)})"
            text += f"#{self.transform_seed}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain-types (YAML/JSON-ready) form; inverse of :meth:`from_dict`."""
        return {
            "dataset": self.dataset,
            "classes": None if self.classes is None else list(self.classes),
            "transform": self.transform,
            "transform_param": self.transform_param,
            "transform_seed": self.transform_seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Build a spec from a mapping such as a Kedro parameters block.

        Raises
        ------
        InvalidParameterError
            If a key is unknown or ``dataset`` is missing.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown TaskSpec keys {unknown}; allowed keys: {', '.join(sorted(known))}."
            )
        if "dataset" not in data:
            raise InvalidParameterError("TaskSpec needs a 'dataset' key.")
        values = dict(data)
        if values.get("classes") is not None:
            values["classes"] = tuple(values["classes"])
        return cls(**values)


def _split_seed(seed: int, split_index: int) -> int:
    """Independent, deterministic seed for one split, derived from ``seed``."""
    sequence = np.random.SeedSequence(seed, spawn_key=(split_index,))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _select(split: Split, lookup: torch.Tensor) -> Split:
    new_labels = lookup.to(split.y.device)[split.y]
    keep = new_labels >= 0
    return Split(split.x[keep], new_labels[keep])


def make_task(base: SplitDataset, spec: TaskSpec) -> SplitDataset:
    """Build the task ``spec`` from the base dataset.

    Every split keeps the samples of ``spec.classes``, relabelled so that
    ``spec.classes[j]`` becomes ``j``, then gets ``spec.transform``. Deterministic
    transforms and ``permute`` use the same seed for train, val and test (one
    permutation for all); ``noise`` draws independent noise per split from seeds
    derived from ``transform_seed``. ``invert`` reflects every split within the range of
    the base training split.

    Parameters
    ----------
    base : SplitDataset
        The dataset named ``spec.dataset``.
    spec : TaskSpec

    Returns
    -------
    SplitDataset
        Named ``spec.name``, ``n_classes = len(spec.classes)``, class names taken from the
        base in the new label order; ``input_shape`` is the transformed shape.

    Raises
    ------
    InvalidParameterError
        If ``base.name`` differs from ``spec.dataset`` or a class id is out of range.
    """
    if base.name != spec.dataset:
        raise InvalidParameterError(
            f"Task {spec.name!r} is defined on dataset {spec.dataset!r} but was given "
            f"{base.name!r}; load {spec.dataset!r} first."
        )
    classes = tuple(range(base.n_classes)) if spec.classes is None else spec.classes
    out_of_range = [c for c in classes if c >= base.n_classes]
    if out_of_range:
        raise InvalidParameterError(
            f"Task {spec.name!r}: class ids {out_of_range} out of range for {base.name!r}, "
            f"which has classes 0..{base.n_classes - 1}."
        )
    lookup = torch.full((base.n_classes,), -1, dtype=torch.int64)
    lookup[list(classes)] = torch.arange(len(classes))
    splits = {name: _select(base.split(name), lookup) for name in SPLITS}
    if spec.transform is not None:
        kwargs = fit_transform_kwargs(spec.transform, base.train.x)
        for index, name in enumerate(SPLITS):
            seed = spec.transform_seed
            if spec.transform in PER_SPLIT_RANDOM:
                seed = _split_seed(seed, index)
            x = apply_transform(
                spec.transform, splits[name].x, spec.transform_param, seed, **kwargs
            )
            splits[name] = Split(x, splits[name].y)
    return SplitDataset(
        name=spec.name,
        n_classes=len(classes),
        input_shape=tuple(splits["train"].x.shape[1:]),
        class_names=tuple(base.class_names[c] for c in classes),
        **splits,
    )


def sample_class_subsets(
    n_classes: int, k: int, count: int, seed: int, exclude: Iterable[int] = ()
) -> list[tuple[int, ...]]:
    """Draw ``count`` distinct class subsets of size ``k``, deterministically.

    Parameters
    ----------
    n_classes : int
        Classes are ``0..n_classes-1``.
    k : int
        Subset size, ``2 <= k``.
    count : int
        Number of subsets, ``0 <= count <= C(n_classes - len(exclude), k)``.
    seed : int
        Seed of the ``numpy.random.Generator``; the same arguments give the same list.
    exclude : iterable of int
        Classes that may not appear in any subset (e.g. novel classes held out for
        evaluation).

    Returns
    -------
    list of tuple of int
        ``count`` distinct subsets, each sorted ascending, in drawing order.

    Raises
    ------
    InvalidParameterError
        If the arguments are out of range or fewer than ``count`` distinct subsets exist.
    """
    n_classes, k, count = int(n_classes), int(k), int(count)
    excluded = set(_check_classes(exclude, "exclude"))
    if any(c >= n_classes for c in excluded):
        raise InvalidParameterError(
            f"exclude {sorted(excluded)} has ids outside 0..{n_classes - 1}."
        )
    available = [c for c in range(n_classes) if c not in excluded]
    if k < 2 or k > len(available):
        raise InvalidParameterError(
            f"subset size k={k} must be between 2 and the {len(available)} available "
            f"classes ({n_classes} minus {len(excluded)} excluded)."
        )
    total = math.comb(len(available), k)
    if count < 0 or count > total:
        raise InvalidParameterError(
            f"Cannot draw {count} distinct {k}-subsets from {len(available)} classes: only "
            f"{total} exist. Lower count or k, or exclude fewer classes."
        )
    rng = np.random.default_rng(seed)
    if total <= _ENUMERATE_LIMIT:
        every = list(itertools.combinations(available, k))
        return [every[i] for i in rng.choice(total, size=count, replace=False)]
    pool = np.asarray(available)
    chosen: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(chosen) < count:
        subset = tuple(int(c) for c in np.sort(rng.choice(pool, size=k, replace=False)))
        if subset not in seen:
            seen.add(subset)
            chosen.append(subset)
    return chosen
