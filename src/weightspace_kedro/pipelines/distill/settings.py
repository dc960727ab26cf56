"""Typed ``distill.settings``: the distillation parameters block as one frozen dataclass.

The protocol part is the library's :class:`~weightspace.evaluation.distill_protocol.DistillProtocol`
(whose ``kd`` is :class:`~weightspace.ensembles.kd.KDConfig`), so its defaults live in one
place. What is the pipeline's own: which zoo architecture (a ``key`` of
``zoo_distill.grid.architectures``) and dataset the teachers come from, how many of its
seeds form the deep ensemble, and the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weightspace.errors import InvalidParameterError
from weightspace.evaluation.distill_protocol import DistillProtocol
from weightspace.zoo.grid import ArchEntry, as_grid, expand_seeds

GRID = "zoo_distill.grid"
"""Where the teachers' architecture is defined."""


@dataclass(frozen=True)
class DistillSettings:
    """Everything the distill pipeline runs (``distill.settings``).

    Parameters
    ----------
    dataset : str
        Zoo task the teachers were trained on.
    teacher : str
        ``key`` of the teachers' entry in ``zoo_distill.grid.architectures``.
    members : int
        Ensemble size M: the teachers are that entry's first M seeds (``>= 2``).
    protocol : DistillProtocol
        Student seeds, KD hyper-parameters, perturbation step and variants, merge form.
    device : str
        ``auto``, ``cpu`` or ``cuda[:i]`` for distillation and scoring.
    """

    dataset: str = "mnist1d"
    teacher: str = "teacher"
    members: int = 4
    protocol: DistillProtocol = field(default_factory=DistillProtocol)
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 2:
            raise InvalidParameterError(
                f"distill.settings.members (the ensemble size M) must be an integer >= 2, got "
                f"{self.members!r}; a deep ensemble needs at least two teachers"
            )


def resolve_teacher(settings: DistillSettings, grid: Mapping[str, Any]) -> ArchEntry:
    """The grid entry ``settings.teacher`` names, checked against the grid's seeds and data.

    Raises
    ------
    InvalidParameterError
        No entry carries that key, the entry does not train on ``settings.dataset``, or the
        grid trains fewer seeds than ``settings.members``.
    """
    typed = as_grid(grid)
    entries = [a for a in typed.architectures if a.key == settings.teacher]
    if not entries:
        keys = sorted(a.key for a in typed.architectures if a.key is not None)
        raise InvalidParameterError(
            f"distill.settings.teacher = {settings.teacher!r} names no entry of "
            f"{GRID}.architectures (keys: {keys}); add 'key: {settings.teacher}' to one"
        )
    entry = entries[0]
    if entry.datasets is not None and settings.dataset not in entry.datasets:
        raise InvalidParameterError(
            f"the teacher entry {settings.teacher!r} trains on {list(entry.datasets)}, not on "
            f"distill.settings.dataset = {settings.dataset!r}"
        )
    n_seeds = len(expand_seeds(typed.seeds))
    if n_seeds < settings.members:
        raise InvalidParameterError(
            f"distill.settings.members = {settings.members} but {GRID}.seeds gives {n_seeds} "
            f"seeds; train at least {settings.members}"
        )
    return entry
