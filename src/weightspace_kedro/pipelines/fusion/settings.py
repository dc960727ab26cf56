"""Typed ``fusion.settings``: the fusion parameters block as one frozen dataclass.

The pipeline's first node builds :class:`FusionSettings` once with
:func:`~weightspace_kedro.typed.typed_settings`; every later node receives that object,
never the raw dict. The method and protocol parts are the library's configs
(:class:`~weightspace.fusion.OTFusionConfig`, :class:`~weightspace.fusion.CLAFusionConfig`,
:class:`~weightspace.evaluation.fusion_protocol.FinetuneConfig`, ...), so their defaults
live in one place. What is the pipeline's own: which zoo architectures and datasets each
experiment uses, the headline experiment and the device.

Architectures are named once, in ``zoo_fusion.grid.architectures`` (``key: mlp_deep``);
experiments reference the key (``deep: mlp_deep``) and :func:`resolve_architectures`
checks every reference against the grid before any work starts.

Every value is checked when the dataclasses are built (their ``__post_init__``, so the
library refuses the same values): types, ranges (``lr`` finite and > 0, epochs and batch
sizes >= 1, every K an integer >= 2, ...), known names, and rules across fields (K <= 2 x
the zoo's seeds, ``cla.balancing: merge`` only for MLP experiments). A bad
``fusion.settings`` fails in the pipeline's first node, before the zoo is trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from weightspace.errors import InvalidParameterError
from weightspace.evaluation.fusion_protocol import (
    CostConfig,
    FinetuneConfig,
    TeacherStudentConfig,
)
from weightspace.fusion import CLAFusionConfig, OTFusionConfig
from weightspace.zoo.grid import ArchEntry, as_grid, expand_seeds

GRID = "zoo_fusion.grid.architectures"
"""Where the architectures the settings reference are defined."""
KEY = "fusion.settings"
"""The parameters block these settings come from (``conf/base/parameters_fusion.yml``)."""
DEVICES = ("auto", "cpu", "cuda", "cuda:<N>", "mps")
"""Device names ``fusion.settings.device`` accepts (checked for syntax only: a GPU may
be missing where the settings are read, e.g. when the gpu environment is validated)."""
MERGE_FAMILIES = ("mlp",)
"""Architecture names for which ``cla.balancing: merge`` is defined (CLAFusion §3.2)."""


def _nonempty(where: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterError(f"{where} must be a non-empty string, got {value!r}")


def check_device(where: str, device: object) -> None:
    """``device`` parses as a torch device name (availability is checked at run time)."""
    if device == "auto":
        return
    try:
        ok = isinstance(device, str) and torch.device(device).type in ("cpu", "cuda", "mps")
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        raise InvalidParameterError(f"{where} must be one of {list(DEVICES)}, got {device!r}")


@dataclass(frozen=True)
class FinetuneOverride:
    """Per-experiment changes to ``fusion.settings.finetune`` (unset fields inherit)."""

    epochs: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None

    def apply(self, base: FinetuneConfig) -> FinetuneConfig:
        """``base`` with the fields this override sets."""
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class ExperimentSettings:
    """One fusion experiment: deep and shallow parents (grid keys) on one dataset."""

    name: str
    dataset: str
    deep: str
    shallow: str
    finetune: FinetuneOverride = field(default_factory=FinetuneOverride)

    def __post_init__(self) -> None:
        for name in ("name", "dataset", "deep", "shallow"):
            _nonempty(f"{KEY}.experiments[].{name}", getattr(self, name))


@dataclass(frozen=True)
class KDSettings(TeacherStudentConfig):
    """The teacher–student experiment: the protocol's sweep plus which zoo models."""

    enabled: bool = False
    name: str = "teacher_student"
    dataset: str = ""
    teacher: str = ""
    student: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = [k for k in ("dataset", "teacher", "student") if not getattr(self, k)]
        if self.enabled and missing:
            raise InvalidParameterError(
                f"fusion.settings.kd is enabled but names no {missing}; set them or enabled: false"
            )


@dataclass(frozen=True)
class FusionSettings:
    """Everything the fusion pipeline runs, typed (``fusion.settings``).

    ``cla.ot`` is filled from ``ot``: the OTFusion step is configured once, under
    ``fusion.settings.ot``, and used by CLAFusion and by the same-depth baseline.
    """

    experiments: tuple[ExperimentSettings, ...]
    ks: tuple[int, ...] = (2, 4, 6)
    ot: OTFusionConfig = field(default_factory=OTFusionConfig)
    cla: CLAFusionConfig = field(default_factory=CLAFusionConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    kd: KDSettings = field(default_factory=KDSettings)
    cost: CostConfig = field(default_factory=CostConfig)
    device: str = "auto"
    headline: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        names = [e.name for e in self.experiments]
        if not names or len(set(names)) != len(names):
            raise InvalidParameterError(
                f"{KEY}.experiments needs >= 1 experiment with distinct names, got {names}"
            )
        if self.headline is not None and self.headline not in names:
            raise InvalidParameterError(
                f"{KEY}.headline {self.headline!r} is not an experiment; choose one of {names}"
            )
        _check_ks(self.ks)
        check_device(f"{KEY}.device", self.device)
        if not isinstance(self.progress, bool):
            raise InvalidParameterError(
                f"{KEY}.progress must be true or false, got {self.progress!r}"
            )
        if self.cla.ot not in (OTFusionConfig(), self.ot):
            raise InvalidParameterError(
                f"set the OTFusion options once, under {KEY}.ot (not cla.ot)"
            )
        object.__setattr__(self, "cla", dataclasses.replace(self.cla, ot=self.ot))
        for i, e in enumerate(self.experiments):
            try:  # a bad override fails here, not mid-run
                e.finetune.apply(self.finetune)
            except InvalidParameterError as exc:
                raise InvalidParameterError(
                    f"{KEY}.experiments[{i}].finetune (experiment {e.name!r}): {exc}"
                ) from exc

    def finetune_for(self, experiment: str) -> FinetuneConfig:
        """The fine-tuning settings of one experiment (its override applied)."""
        exp = next(e for e in self.experiments if e.name == experiment)
        return exp.finetune.apply(self.finetune)


def _check_ks(ks: tuple[int, ...]) -> None:
    """Every K of Table 2 an integer >= 2, at least one, no repeats."""
    if not ks:
        raise InvalidParameterError(
            f"{KEY}.ks must list >= 1 number of models to fuse (e.g. [2, 4, 6]), got []"
        )
    for i, k in enumerate(ks):
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise InvalidParameterError(
                f"{KEY}.ks must be >= 2 (integers: fusion combines K >= 2 models), got "
                f"{KEY}.ks[{i}] = {k!r} in {list(ks)}"
            )
    if len(set(ks)) != len(ks):
        raise InvalidParameterError(f"{KEY}.ks must not repeat a K, got {list(ks)}")


def grid_architectures(grid: Mapping[str, Any]) -> dict[str, ArchEntry]:
    """``key -> ArchEntry`` of the zoo grid's entries that carry a ``key``."""
    out: dict[str, ArchEntry] = {}
    for i, entry in enumerate(as_grid(grid).architectures):
        if entry.key is not None and out.setdefault(entry.key, entry) is not entry:
            raise InvalidParameterError(f"{GRID}: key {entry.key!r} is used twice (entry {i})")
    return out


def _references(settings: FusionSettings) -> list[tuple[str, str, str]]:
    """``(dotted parameter, architecture key, dataset)`` of every reference."""
    refs = []
    for i, e in enumerate(settings.experiments):
        for role in ("deep", "shallow"):
            refs.append((f"fusion.settings.experiments[{i}].{role}", getattr(e, role), e.dataset))
    if settings.kd.enabled:
        for role in ("teacher", "student"):
            refs.append(
                (f"fusion.settings.kd.{role}", getattr(settings.kd, role), settings.kd.dataset)
            )
    return refs


def resolve_architectures(
    settings: FusionSettings, grid: Mapping[str, Any]
) -> dict[str, ArchEntry]:
    """The grid architectures the settings reference, checked.

    Raises
    ------
    InvalidParameterError
        A key no grid entry carries, or a dataset the entry does not train on.
    """
    archs = grid_architectures(grid)
    _check_seeds(settings, grid)
    for where, key, dataset in _references(settings):
        if key not in archs:
            raise InvalidParameterError(
                f"{where} = {key!r} names no architecture of {GRID} (keys: {sorted(archs)}); "
                f"add 'key: {key}' to an entry there (parameters_fusion.yml)"
            )
        if archs[key].datasets is not None and dataset not in archs[key].datasets:
            raise InvalidParameterError(
                f"{where} = {key!r} is trained on {list(archs[key].datasets)} only, not on "
                f"{dataset!r}; add the dataset to its 'datasets' in {GRID}"
            )
    used = {key: archs[key] for _, key, _ in _references(settings)}
    if settings.cla.balancing == "merge":
        for i, e in enumerate(settings.experiments):
            for role in ("deep", "shallow"):
                arch = used[getattr(e, role)]
                if arch.name not in MERGE_FAMILIES:
                    raise InvalidParameterError(
                        f"{KEY}.cla.balancing = 'merge' is defined for MLPs only (CLAFusion "
                        f"§3.2), but {KEY}.experiments[{i}].{role} = {arch.key!r} is a "
                        f"{arch.name!r}; use balancing: add"
                    )
    return used


def _check_seeds(settings: FusionSettings, grid: Mapping[str, Any]) -> None:
    """Enough zoo seeds for the pairs (>= 2) and for the largest K (K <= 2 x seeds)."""
    n = len(expand_seeds(as_grid(grid).seeds))
    if n < 2:
        raise InvalidParameterError(
            f"the fusion protocol needs >= 2 models of each architecture; raise "
            f"zoo_fusion.grid.seeds (now {n})"
        )
    if max(settings.ks) > 2 * n:
        raise InvalidParameterError(
            f"{KEY}.ks = {list(settings.ks)}: K = {max(settings.ks)} alternates deep and "
            f"shallow models and needs {(max(settings.ks) + 1) // 2} of each, but "
            f"zoo_fusion.grid.seeds trains {n}; lower K or raise the seeds"
        )
