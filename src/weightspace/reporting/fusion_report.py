"""Tables (shaped like CLAFusion's Tables 1, 2 and 5) and plots of the fusion experiment."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

TABLE1_COLUMNS = [
    ("model_a_acc", "M_A"),
    ("model_b_acc", "M_B"),
    ("ensemble_acc", "Ensemble"),
    ("clafusion_acc", "M_F (one shot)"),
    ("parent_a_finetuned_acc", "FT M_A"),
    ("parent_b_finetuned_acc", "FT M_B"),
    ("clafusion_finetuned_acc", "FT M_F"),
    ("depth_aligned_b_finetuned_acc", "FT M_B depth-aligned"),
    ("random_init_finetuned_acc", "FT random"),
]
BASELINE_COLUMNS = [
    ("vanilla_avg_acc", "vanilla avg (A, A')"),
    ("otfusion_acc", "OTFusion (A, A')"),
    ("same_depth_ensemble_acc", "ensemble (A, A')"),
    ("fusion_seconds", "CLAFusion s"),
    ("fusion_cost_ratio", "training / fusion time"),
]
KD_INITS = [
    ("random_b", "random M_B"),
    ("pretrained_b", "M_B"),
    ("depth_aligned_b", "M_B depth-aligned"),
    ("fused", "M_F"),
    ("random_fused", "random M_F arch"),
]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Table 1: parents, ensemble, one-shot fused, and fine-tuning from each init (%)."""
    header = ["experiment"] + [c for _, c in TABLE1_COLUMNS]
    rows = [[name] + [_pct(m.get(k)) for k, _ in TABLE1_COLUMNS] for name, m in experiments.items()]
    return _markdown(header, rows)


def baseline_table(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Same-depth baselines (vanilla averaging vs OTFusion) and the cost of fusion."""
    header = ["experiment"] + [c for _, c in BASELINE_COLUMNS]
    rows = []
    for name, m in experiments.items():
        cells = [_pct(m.get(k)) for k, _ in BASELINE_COLUMNS[:3]]
        cells.append(f"{m.get('fusion_seconds', float('nan')):.3f}")
        ratio = m.get("fusion_cost_ratio", float("nan"))
        bound = "" if m.get("fusion_cost_reached", 1.0) else ">= "
        cells.append(f"{bound}{ratio:.0f}x")
        rows.append([name, *cells])
    return _markdown(header, rows)


def table2(k_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Table 2: K models alternating deep/shallow: members, ensemble, fused, fine-tuned."""
    header = ["experiment", "K", "pre-trained models", "Ensemble", "M_F (one shot)", "FT M_F"]
    rows = []
    for name, rs in k_rows.items():
        for r in rs:
            members = ", ".join(_pct(a) for a in r["member_accs"])
            rows.append(
                [name, str(r["k"]), members, _pct(r["ensemble_acc"]), _pct(r["fused_acc"]),
                 _pct(r.get("finetuned_acc"))]
            )  # fmt: skip
    return _markdown(header, rows)


def table4(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Table 4 (teacher–student): sizes and one-shot accuracy of the fused student (%)."""
    header = ["experiment", "# params (teacher, student, fused)", "teacher", "student",
              "fused student (one shot)"]  # fmt: skip
    rows = []
    for name, m in experiments.items():
        if "fused_student_oneshot_acc" not in m:
            continue
        sizes = ", ".join(
            f"{int(m[k]):,}"
            for k in ("n_params_teacher", "n_params_student", "n_params_fused_student")
        )
        rows.append(
            [name, sizes, _pct(m.get("teacher_acc")), _pct(m.get("kd_pretrained_b_student_acc")),
             _pct(m["fused_student_oneshot_acc"])]
        )  # fmt: skip
    return _markdown(header, rows)


def table5(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Table 5: knowledge distillation from the teacher into each student init (%)."""
    header = ["experiment", "row"] + [c for _, c in KD_INITS]
    rows = []
    for name, m in experiments.items():
        if "kd_fused_best_acc" not in m:
            continue
        for row, suffix in (("Best", "best"), ("Average over T", "mean")):
            rows.append([name, row] + [_pct(m.get(f"kd_{k}_{suffix}_acc")) for k, _ in KD_INITS])
    return _markdown(header, rows)


def k_figure(k_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Test accuracy against the number of fused models K, per experiment."""
    fig, axes = plt.subplots(1, max(len(k_rows), 1), figsize=(4.2 * max(len(k_rows), 1), 3.4))
    axes = [axes] if len(k_rows) <= 1 else list(axes)
    for ax, (name, rs) in zip(axes, k_rows.items(), strict=False):
        ks = [r["k"] for r in rs]
        ax.plot(ks, [r["ensemble_acc"] for r in rs], "o-", label="ensemble")
        ax.plot(ks, [r["fused_acc"] for r in rs], "s-", label="CLAFusion one shot")
        if all("finetuned_acc" in r for r in rs):
            ax.plot(ks, [r["finetuned_acc"] for r in rs], "^-", label="CLAFusion + fine-tune")
        best = [max(r["member_accs"]) for r in rs]
        ax.plot(ks, best, "k:", label="best member")
        ax.set_title(name)
        ax.set_xlabel("number of fused models K")
        ax.set_xticks(ks)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Validation accuracy during fine-tuning from each initialisation, per experiment."""
    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4))
    axes = [axes] if n == 1 else list(axes)
    for ax, (name, cs) in zip(axes, curves.items(), strict=False):
        for init, curve in cs.items():
            ax.plot(range(len(curve)), curve, label=init)
        ax.set_title(name)
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def assemble_report(
    shots: Mapping[str, Mapping[str, Any]],
    finetuned: Mapping[str, Mapping[str, Any]],
    distilled: Mapping[str, Mapping[str, float]],
    headline: str | None = None,
) -> tuple[dict[str, float], str, str, Figure, Figure]:
    """Flat metrics, markdown tables, per-experiment JSON and the two figures.

    Parameters
    ----------
    shots : mapping experiment -> one-shot result (``metrics``, ``k_rows``)
    finetuned : mapping experiment -> fine-tuning result (``metrics``, ``curves``)
    distilled : mapping teacher-student experiment -> KD metrics
    headline : str, optional
        Experiment whose metrics are also written without a prefix (default: the first).

    Returns
    -------
    metrics, tables (markdown), details (JSON), accuracy-vs-K figure, curves figure
    """
    per_exp = {
        name: {**shot["metrics"], **finetuned[name]["metrics"]} for name, shot in shots.items()
    }
    k_rows = {
        name: [
            {**r, "finetuned_acc": per_exp[name].get(f"k{r['k']}_finetuned_acc")}
            for r in shot["k_rows"]
        ]
        for name, shot in shots.items()
    }
    metrics: dict[str, float] = dict(per_exp[headline or next(iter(per_exp))])
    for name, m in {**per_exp, **distilled}.items():
        metrics.update({f"{name}.{k}": v for k, v in m.items()})
        for r in k_rows.get(name, []):
            metrics[f"{name}.k{r['k']}_fused_acc"] = r["fused_acc"]
            metrics[f"{name}.k{r['k']}_ensemble_acc"] = r["ensemble_acc"]
    tables = "\n\n".join(
        [
            "## Table 1 (shape of CLAFusion Table 1): accuracy %, mean over pairs\n",
            table1(per_exp),
            "## Same-depth baselines and cost\n",
            baseline_table(per_exp),
            "## Table 2: K models alternating deep/shallow\n",
            table2(k_rows),
            "## Table 4: teacher-student fusion (student widths, teacher depth)\n",
            table4(distilled),
            "## Table 5: knowledge distillation into each student initialisation\n",
            table5(distilled),
        ]
    )
    curves = {name: f["curves"] for name, f in finetuned.items()}
    details = json.dumps({**per_exp, **distilled}, indent=2)
    return metrics, tables + "\n", details, k_figure(k_rows), curves_figure(curves)
