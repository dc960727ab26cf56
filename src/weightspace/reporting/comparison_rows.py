"""The types shared by the comparison's extractors and its tables.

:class:`RowSpec` (where one variant's numbers live in a method's ``metrics.json``, each
field a :data:`Source`: a key, a :class:`Fixed` value or ``None``), :class:`Group` (the task
and zoo rows were measured on), :data:`Extracted` (what an extractor returns) and
:class:`ComparisonRow` (one resolved row) with :data:`NUMERIC`, its measured fields. Both
:mod:`weightspace.reporting.comparison_extractors` and
:mod:`weightspace.reporting.comparison` import this module, and it imports neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fixed:
    """A value known by construction (not measured), with the reason shown in the card."""

    value: float
    why: str


Source = str | Fixed | tuple[str, str] | None
"""A ``metrics.json`` key; a :class:`Fixed` value; ``(key, factor_key)`` for the product of
two keys (e.g. best-of-k sampling time = k x one sample's time); ``None``: not measured."""


@dataclass(frozen=True)
class RowSpec:
    """Where one variant's numbers live in a method's ``metrics.json``."""

    variant: str
    accuracy: str
    nll: Source = None
    ece: Source = None
    cece: Source = None
    n_parameters: Source = None
    forward_passes: Source = None
    seconds_to_obtain: Source = None
    memorization: Source = None
    note: str = ""
    headline: bool = False


@dataclass(frozen=True)
class Group:
    """The task (data) and zoo a set of rows was measured on."""

    task: str
    zoo: str

    @property
    def label(self) -> str:
        return f"{self.zoo} · {self.task}"


@dataclass(frozen=True)
class ComparisonRow:
    """One variant of one method; ``None`` = not measured by that pipeline."""

    method: str
    variant: str
    task: str
    zoo: str
    accuracy: float | None
    nll: float | None
    ece: float | None
    cece: float | None
    n_parameters: float | None
    forward_passes_per_prediction: float | None
    seconds_to_obtain: float | None
    memorization: float | None
    comparable_group: str = ""
    git_commit: str | None = None
    config_hash: str | None = None
    headline: bool = False
    note: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Field -> where its value came from (a metrics key, or the reason of a fixed value)."""

    @property
    def inference_cost(self) -> float | None:
        """Forward passes x parameters (parameters alone when passes are unknown)."""
        if self.n_parameters is None:
            return None
        return self.n_parameters * (self.forward_passes_per_prediction or 1.0)


NUMERIC = (
    "accuracy", "nll", "ece", "cece", "n_parameters", "forward_passes_per_prediction",
    "seconds_to_obtain", "memorization",
)  # fmt: skip
"""The measured fields of a :class:`ComparisonRow`, in table order."""

Extracted = list[tuple[Group, list[RowSpec]]]
"""What an extractor returns: each comparable group with the row specs measured on it."""

__all__ = ["NUMERIC", "ComparisonRow", "Extracted", "Fixed", "Group", "RowSpec", "Source"]
