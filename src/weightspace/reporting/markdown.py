"""Markdown pieces shared by the method reports: tables, percentages, stage times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["markdown_table", "pct", "seconds_table"]


def pct(value: float | None) -> str:
    """``0.9731 -> "97.31"``; ``None -> "-"``."""
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def seconds_table(node_seconds: Mapping[str, float]) -> str:
    """Wall time of each pipeline stage (recorded by the project hook)."""
    rows = [[name, f"{s:.1f}"] for name, s in node_seconds.items()]
    return markdown_table(["stage", "seconds"], rows or [["-", "-"]])
