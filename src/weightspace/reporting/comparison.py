"""Every method side by side: comparable rows, their tables and plots.

:func:`extract` resolves a method's row specs (from its extractor in
:mod:`weightspace.reporting.comparison_extractors`) against its flat ``metrics.json`` into
:class:`~weightspace.reporting.comparison_rows.ComparisonRow` s; :func:`comparison_markdown`
and :func:`comparison_csv` tabulate them and :func:`plots` draws them. A field the pipeline
does not measure is ``None`` (shown "—"); a value known by construction is a
:class:`~weightspace.reporting.comparison_rows.Fixed` with its reason; nothing is
estimated. An expected key that is absent raises :class:`~weightspace.errors.MetricsKeyError`
naming the method and the key, so a renamed metric fails here instead of vanishing from the
table. Timing keys are the one exception: they are not in the golden files (they vary run
to run), so a missing timing key becomes "—" unless ``strict_timing=True``.

Rows carry their task and zoo; rows that share both form a *comparable group*. The table
lists rows group by group with the group in a column, so numbers from different zoos or
tasks are never read as if they were side by side.

The types and extractors are re-exported here, so ``weightspace.reporting.comparison``
stays the one import for callers.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from weightspace.errors import InvalidParameterError, MetricsKeyError
from weightspace.reporting.comparison_extractors import (
    EXTRACTORS,
    METHODS,
    ONE_NETWORK,
    SW_KINDS,
)
from weightspace.reporting.comparison_rows import (
    NUMERIC,
    ComparisonRow,
    Extracted,
    Fixed,
    Group,
    RowSpec,
    Source,
)
from weightspace.reporting.markdown import markdown_table

MISSING = "—"
"""What the markdown table shows for a value the pipeline does not measure."""

TIMING = ("seconds_to_obtain",)
SPEC_FIELD = {"forward_passes_per_prediction": "forward_passes"}


def _resolve(
    method: str, spec: RowSpec, name: str, metrics: Mapping[str, float], strict_timing: bool
) -> tuple[float | None, str]:
    src = getattr(spec, SPEC_FIELD.get(name, name))
    if src is None:
        return None, ""
    if isinstance(src, Fixed):
        return float(src.value), f"{src.value:g}: {src.why}"
    keys = src if isinstance(src, tuple) else (src,)
    missing = [k for k in keys if k not in metrics]
    if missing and name in TIMING and not strict_timing:
        return None, f"{' x '.join(keys)} (absent: not timed in this run)"
    if missing:
        raise MetricsKeyError(
            f"{method} metrics.json has no key {missing[0]!r} (the {name} of its "
            f"'{spec.variant}' row); its report changed its keys: rerun `kedro run "
            f"--pipelines={method}` or update weightspace.reporting.comparison_extractors._{method}"
        )
    return math.prod(float(metrics[k]) for k in keys), " x ".join(keys)


def extract(
    method: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any] | None = None,
    strict_timing: bool = False,
) -> list[ComparisonRow]:
    """The comparable rows of one method.

    Parameters
    ----------
    method
        One of :data:`METHODS`.
    metrics
        The method pipeline's flat ``metrics.json``.
    params
        The parameters the method's run read (``"distill.settings" -> {...}``, from its
        provenance), used for the task/zoo description and ensemble sizes; ``None``: those
        show "?" and ensemble passes are not stated.
    strict_timing
        Raise on a missing timing key too (timing keys are not in the golden files).

    Raises
    ------
    MetricsKeyError
        An expected key is absent (names the method, the key and the row).
    """
    if method not in EXTRACTORS:
        raise InvalidParameterError(f"no extractor for method {method!r}; known: {list(METHODS)}")
    rows = []
    for group, specs in EXTRACTORS[method](metrics, params):
        for spec in specs:
            values, sources = {}, {}
            for name in NUMERIC:
                values[name], sources[name] = _resolve(method, spec, name, metrics, strict_timing)
            rows.append(
                ComparisonRow(
                    method=method, variant=spec.variant, task=group.task, zoo=group.zoo,
                    comparable_group=group.label, headline=spec.headline, note=spec.note,
                    sources={k: v for k, v in sources.items() if v}, **values,
                )
            )  # fmt: skip
    return rows


def with_provenance(
    rows: Iterable[ComparisonRow], commit: str | None, config_hash: str | None
) -> list[ComparisonRow]:
    """The rows stamped with the commit and config hash their run came from."""
    return [replace(r, git_commit=commit, config_hash=config_hash) for r in rows]


def not_run_row(method: str, command: str) -> ComparisonRow:
    """A placeholder row for a method whose outputs are absent (``require_all: false``)."""
    return ComparisonRow(
        method=method, variant="not run", task=MISSING, zoo=MISSING,
        comparable_group="not run", note=f"run `{command}` first", **dict.fromkeys(NUMERIC),
    )  # fmt: skip


def group_ids(rows: Sequence[ComparisonRow]) -> dict[str, str]:
    """Comparable group label -> ``G1``, ``G2``, ... in order of first appearance."""
    labels = dict.fromkeys(r.comparable_group for r in rows)
    return {label: f"G{i + 1}" for i, label in enumerate(labels)}


def ordered(rows: Sequence[ComparisonRow]) -> list[ComparisonRow]:
    """Rows grouped by comparable group (groups in order of first appearance), stable."""
    ids = group_ids(rows)
    return sorted(rows, key=lambda r: int(ids[r.comparable_group][1:]))


FORMATS: dict[str, Callable[[float], str]] = {
    "accuracy": lambda v: f"{100 * v:.2f}",
    "nll": lambda v: f"{v:.3f}",
    "ece": lambda v: f"{v:.3f}",
    "cece": lambda v: f"{v:.3f}",
    "n_parameters": lambda v: f"{v:,.0f}",
    "forward_passes_per_prediction": lambda v: f"{v:g}",
    "seconds_to_obtain": lambda v: f"{v:.3g}",
    "memorization": lambda v: f"{v:.3f}",
}
HEADERS = {
    "accuracy": "acc (%)", "nll": "NLL", "ece": "ECE", "cece": "cECE",
    "n_parameters": "params", "forward_passes_per_prediction": "forward passes",
    "seconds_to_obtain": "seconds to obtain", "memorization": "memorization",
}  # fmt: skip


def fmt(name: str, value: float | None) -> str:
    """One cell of the markdown table (``MISSING`` for ``None``)."""
    return MISSING if value is None else FORMATS[name](value)


def short(value: str | None, n: int) -> str:
    return "unknown" if value is None else value[:n]


CSV_COLUMNS = (
    "group", "comparable_group", "method", "variant", "task", "zoo", *NUMERIC,
    "inference_cost", "headline", "git_commit", "config_hash", "note",
)  # fmt: skip


def comparison_csv(rows: Sequence[ComparisonRow]) -> str:
    """Every row, full precision; empty cells where a value is not measured."""
    ids, buf = group_ids(rows), io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in ordered(rows):
        cells = {f.name: getattr(r, f.name) for f in fields(r)}
        cells |= {"group": ids[r.comparable_group], "inference_cost": r.inference_cost}
        writer.writerow(["" if cells[c] is None else cells[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def comparison_markdown(rows: Sequence[ComparisonRow], missing: Sequence[str] = ()) -> str:
    """The comparison table grouped by comparable group, its legend and the caveats."""
    ids = group_ids(rows)
    header = ["group", "method", "variant", *HEADERS.values(), "commit", "config hash"]
    body = []
    for r in ordered(rows):
        name = f"**{r.variant}**" if r.headline else r.variant
        cells = [fmt(n, getattr(r, n)) for n in NUMERIC]
        prov = [short(r.git_commit, 10), short(r.config_hash, 12)]
        if r.variant == "not run":
            prov = [MISSING, MISSING]
        body.append([ids[r.comparable_group], r.method, name, *cells, *prov])
    legend = []
    for label, gid in ids.items():
        methods = dict.fromkeys(r.method for r in rows if r.comparable_group == label)
        legend.append([gid, label, ", ".join(methods)])
    commits = {r.git_commit for r in rows if r.variant != "not run"}
    parts = [
        "# Cross-method comparison\n",
        "Rows are grouped by **comparable group**: rows of one group share the zoo and the "
        "task, so their numbers can be read side by side; numbers of different groups come "
        "from different data or models and are not comparable. **Bold**: each method's "
        f"headline variant. {MISSING}: not measured by that pipeline (see its model card).\n",
        markdown_table(header, body),
        "\n## Comparable groups\n",
        markdown_table(["group", "zoo · task", "methods"], legend),
        "\n## Notes\n",
        "- accuracy: test split; D2NWG rows are means over tasks, others as each method's "
        "report defines (model cards give the details).",
        "- seconds to obtain: wall time to produce the model once its inputs exist "
        "(sampling, fusion, distillation, training of the ensemble); zoo training is not "
        "included; methods timed on different machines or loads are not comparable.",
        "- forward passes: per prediction; inference cost in the plot = forward passes x "
        "parameters (stored parameters; for ensembles the total over members).",
    ]
    if len(commits) > 1:
        shown = ", ".join(sorted(short(c, 10) for c in commits))
        parts.append(f"- the methods ran at different commits ({shown}): rerun them for one.")
    if missing:
        cmds = "; ".join(f"`kedro run --pipelines={m}`" for m in missing)
        parts.append(f"- not run: {', '.join(missing)} ({cmds}).")
    return "\n".join(parts) + "\n"


def _scatter(rows: Sequence[ComparisonRow], x: Callable[[ComparisonRow], float | None],
             xlabel: str, title: str) -> Figure:  # fmt: skip
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    markers = "osD^vP*X"
    skipped = []
    for i, method in enumerate(dict.fromkeys(r.method for r in rows)):
        mine = [r for r in rows if r.method == method and r.accuracy is not None]
        pts = [(x(r), 100 * r.accuracy, r) for r in mine if x(r) is not None and x(r) > 0]
        if not pts:
            skipped.append(method)
            continue
        color = f"C{i}"
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                   color=color, alpha=0.35, s=22)  # fmt: skip
        head = [p for p in pts if p[2].headline] or pts[:1]
        for px, py, r in head:
            ax.scatter([px], [py], marker=markers[i % len(markers)], color=color, s=80,
                       edgecolor="black", label=f"{method}: {r.variant}")  # fmt: skip
            ax.annotate(method, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title + (f"\n(no value for: {', '.join(skipped)})" if skipped else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plots(rows: Sequence[ComparisonRow]) -> dict[str, Figure]:
    """Accuracy vs seconds to obtain, and vs inference cost: every row with a value,
    one marker per method, each method's headline variant large and labelled. Groups
    differ in task, so compare positions within a method more than across methods."""
    return {
        "accuracy_vs_obtain_cost": _scatter(
            rows, lambda r: r.seconds_to_obtain, "seconds to obtain the model (log)",
            "accuracy vs cost to obtain (rows of different groups: different tasks)",
        ),
        "accuracy_vs_inference_cost": _scatter(
            rows, lambda r: r.inference_cost, "forward passes x parameters (log)",
            "accuracy vs inference cost (rows of different groups: different tasks)",
        ),
    }  # fmt: skip


__all__ = [
    "EXTRACTORS",
    "METHODS",
    "MISSING",
    "NUMERIC",
    "ONE_NETWORK",
    "SW_KINDS",
    "ComparisonRow",
    "Extracted",
    "Fixed",
    "Group",
    "RowSpec",
    "Source",
    "comparison_csv",
    "comparison_markdown",
    "extract",
    "fmt",
    "group_ids",
    "not_run_row",
    "ordered",
    "plots",
    "with_provenance",
]
