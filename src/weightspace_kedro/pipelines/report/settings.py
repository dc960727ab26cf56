"""Typed ``report.settings``: which methods the report compares, and what a missing one
means."""

from __future__ import annotations

from dataclasses import dataclass

from weightspace.errors import InvalidParameterError
from weightspace.reporting.comparison import METHODS


@dataclass(frozen=True)
class ReportSettings:
    """Everything the report pipeline reads (``report.settings``).

    Parameters
    ----------
    methods : tuple of str
        Method pipelines to compare (default: all five).
    require_all : bool
        ``True``: a method whose ``metrics.json`` is absent stops the run with the command
        that writes it; ``False``: it gets a "not run" row and the report goes on.
    """

    methods: tuple[str, ...] = METHODS
    require_all: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise InvalidParameterError(
                f"report.settings.methods: unknown {unknown} (or empty); choose from "
                f"{list(METHODS)}"
            )
