"""The WeightFormer report: protocol results -> flat ``metrics.json``, markdown tables in
the shape of the paper's Tables 1 and 4, and the teacher-number figure (Figure 3).

Keys: ``<method>_<metric>`` (mean over the held-out teacher sets) and
``<method>_<metric>_2sigma`` for ``method`` in single, ensemble, kd, mlp, wf, wf_star,
``teacher0`` (the set's first teacher), ``kd_t0`` (KD from teacher 0) and the ablations
(``wf_no_cross``, ``wf_no_shift``, ``wf_no_cutoff``, ``wf_no_residual``) and ``metric``
in acc, acc5, ece, nll; ``gap_closed = (wf_acc - single_acc) / (ensemble_acc - single_acc)``;
``<method>_seconds_per_student`` of every timed method (``wf``, ``kd``, ``kd_t0``, the
other generators) and ``kd_vs_wf_cost_ratio``; the curve as
``curve_<config>_<n>_acc``; ``<generator>_best_step``, the training step each generator
was kept at (0: validation never beat its start, for the residual read-out teacher 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from weightspace.evaluation.weightformer_protocol import METRICS, Scores
from weightspace.reporting.markdown import markdown_table, seconds_table

__all__ = ["assemble_report", "curve_figure", "flat_metrics"]

MAIN = ("single", "teacher0", "ensemble", "kd", "kd_t0", "mlp", "wf", "wf_star")
ABLATION = ("wf", "wf_no_cross", "wf_no_shift", "wf_no_cutoff", "wf_no_residual")
LABELS = {
    "single": "Single", "teacher0": "Teacher 0", "ensemble": "Ensemble", "kd": "KD",
    "kd_t0": "KD from teacher 0", "mlp": "MLP", "wf": "WF", "wf_star": "WF*",
    "wf_no_cross": "- cross-layer flow",
    "wf_no_shift": "- shift consistency", "wf_no_cutoff": "- weight cutoff",
    "wf_no_residual": "- residual read-out",
}  # fmt: skip


def _mean_2sigma(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, 2.0 * math.sqrt(var)


def flat_metrics(result: Mapping[str, object], curve: Mapping[str, list]) -> dict[str, float]:
    """Every number of the report as ``metrics.json`` keys (see the module docstring)."""
    scores: Mapping[str, list[Scores]] = result["scores"]  # type: ignore[assignment]
    seconds: Mapping[str, list[float]] = result["seconds"]  # type: ignore[assignment]
    out: dict[str, float] = {"n_sets": float(len(scores["single"]))}
    for name, rows in scores.items():
        for m in METRICS:
            values = [getattr(r, m) for r in rows]
            if any(math.isnan(v) for v in values):
                continue
            out[f"{name}_{m}"], out[f"{name}_{m}_2sigma"] = _mean_2sigma(values)
    gap = out["ensemble_acc"] - out["single_acc"]
    out["gap_closed"] = (out["wf_acc"] - out["single_acc"]) / gap if gap > 0 else math.nan
    for name, values in seconds.items():  # wf, kd and every other method timed
        out[f"{name}_seconds_per_student"] = _mean_2sigma(values)[0]
    out["kd_vs_wf_cost_ratio"] = out["kd_seconds_per_student"] / out["wf_seconds_per_student"]
    for name, step in dict(result.get("best_step", {})).items():  # type: ignore[call-overload]
        out[f"{name}_best_step"] = float(step)
    for config, points in curve.items():
        for n, acc in points:
            out[f"curve_{config}_{n}_acc"] = acc
    return {k: v for k, v in out.items() if not math.isnan(v)}


def _table(metrics: Mapping[str, float], names: Sequence[str]) -> str:
    rows = []
    for m, label, scale in (("acc", "ACC-1", 100), ("acc5", "ACC-5", 100), ("ece", "ECE", 100),
                            ("nll", "NLL", 1)):  # fmt: skip
        if f"single_{m}" not in metrics:
            continue
        cells = []
        for n in names:
            key = f"{n}_{m}"
            cells.append(
                "-" if key not in metrics
                else f"{scale * metrics[key]:.2f} ± {scale * metrics[key + '_2sigma']:.2f}"
            )  # fmt: skip
        rows.append([label, *cells])
    return markdown_table(["metric", *[LABELS.get(n, n) for n in names]], rows)


def _steps(metrics: Mapping[str, float]) -> str:
    keys = [k for k in metrics if k.endswith("_best_step")]
    return ", ".join(f"{LABELS.get(k[:-10], k[:-10])} {metrics[k]:.0f}" for k in keys) or "-"


def markdown_tables(
    metrics: Mapping[str, float], node_seconds: Mapping[str, float] | None = None
) -> str:
    """``tables.md``: Table 1 (methods), Table 4 (ablation), cost, stage times."""
    n = int(metrics["n_sets"])
    ablation = [k for k in ABLATION if f"{k}_acc" in metrics]
    main = [k for k in MAIN if f"{k}_acc" in metrics]
    cost = markdown_table(
        ["one student by", "seconds"],
        [["WF (one forward pass)", f"{metrics['wf_seconds_per_student']:.4f}"],
         ["KD (training from a random start)", f"{metrics['kd_seconds_per_student']:.2f}"],
         ["ratio KD / WF", f"{metrics['kd_vs_wf_cost_ratio']:.0f}x"]],
    )  # fmt: skip
    sections = [
        (f"## Table 1: held-out sets, mean ± 2 sigma over {n} sets\n", _table(metrics, main)),
        ("## Table 4: ablation\n", _table(metrics, ablation)),
        (f"gap closed by WF: {metrics.get('gap_closed', math.nan):.2f}\n\n"
         f"training step kept (0 = the start): {_steps(metrics)}\n\n## Cost\n", cost),
    ]  # fmt: skip
    if node_seconds is not None:
        sections.append(("## Stage wall times\n", seconds_table(node_seconds)))
    return "\n\n".join(part for section in sections for part in section) + "\n"


def curve_figure(curve: Mapping[str, list], metrics: Mapping[str, float]) -> Figure:
    """Figure 3: accuracy against the number of teachers, both configurations."""
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for config, points in curve.items():
        if points:
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=config)
    for name, style in (("single", ":"), ("ensemble", "--")):
        if f"{name}_acc" in metrics:
            ax.axhline(100 * metrics[f"{name}_acc"], linestyle=style, color="gray", label=name)
    ax.set_xlabel("teachers")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    return fig


def assemble_report(
    result: Mapping[str, object],
    curve: Mapping[str, list],
    node_seconds: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], str, Figure]:
    """Flat metrics, markdown tables and the teacher-number figure."""
    metrics = flat_metrics(result, curve)
    return metrics, markdown_tables(metrics, node_seconds), curve_figure(curve, metrics)
