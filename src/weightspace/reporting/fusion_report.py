"""The fusion report: score dataclasses -> flat ``metrics.json``, markdown tables (shaped
like CLAFusion's Tables 1, 2, 4 and 5) and figures.

The protocol (:mod:`weightspace.evaluation.fusion_protocol`) measures; this module names.
Every metric key is made here: per experiment the means over pairs of
:class:`~weightspace.evaluation.fusion_scores.PairScores` (``model_a_acc``, ...),
``<init>_finetuned_acc``, ``k<K>_finetuned_acc``, the cost keys, and for the
teacher–student experiment ``kd_<init>_{best,mean}_acc`` and the parameter counts.
``metrics.json`` holds every key prefixed with ``<experiment>.`` plus the headline
experiment's keys unprefixed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from weightspace.evaluation.fusion_scores import (
    CostScores,
    FinetuneScores,
    OneShotScores,
    PairScores,
    TeacherStudentScores,
)
from weightspace.reporting.markdown import markdown_table, pct, seconds_table
from weightspace.reporting.spread import PairedDifference, mean_std, paired_difference, pm_cell

PAIR_METRICS = tuple(f.name for f in dataclasses.fields(PairScores) if f.name != "mapping")
"""One-shot keys: means over pairs of every numeric :class:`PairScores` field."""

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


PAIRED = "ft_clafusion_vs_best_parent"
"""Key prefix of the paired comparison: per pair, fine-tuned CLAFusion minus the better of
that pair's two fine-tuned parents (``_mean``, ``_std``, ``_ci_low``, ``_ci_high``,
``_wins``; see :func:`weightspace.reporting.spread.paired_difference`)."""
_PAIRED_KEYS = ("mean", "std", "ci_low", "ci_high", "wins")


def table1(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Table 1: parents, ensemble, one-shot fused, and fine-tuning from each init (%),
    mean ± std over pairs."""
    header = ["experiment", "pairs"] + [c for _, c in TABLE1_COLUMNS]
    rows = [
        [name, str(int(m.get("n_pairs", 0)))] + [pm_cell(m, k) for k, _ in TABLE1_COLUMNS]
        for name, m in experiments.items()
    ]
    return markdown_table(header, rows)


def paired_table(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Fine-tuned CLAFusion against the best fine-tuned parent of the same pair (points):
    mean ± std of the per-pair difference, its 95% t-interval, pairs won, verdict."""
    header = ["experiment", "pairs", "FT M_F - best FT parent (points)", "95% interval",
              "pairs won", "verdict"]  # fmt: skip
    rows = []
    for name, m in experiments.items():
        if f"{PAIRED}_mean" not in m:
            continue
        d = PairedDifference(int(m["n_pairs"]), *(m[f"{PAIRED}_{k}"] for k in _PAIRED_KEYS))
        rows.append(
            [name, str(d.n), f"{100 * d.mean:+.2f} ± {100 * d.std:.2f}",
             f"[{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]", f"{int(d.wins)} / {d.n}",
             d.verdict]
        )  # fmt: skip
    return markdown_table(header, rows)


def baseline_table(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Same-depth baselines (vanilla averaging vs OTFusion) and the cost of fusion."""
    header = ["experiment"] + [c for _, c in BASELINE_COLUMNS]
    rows = []
    for name, m in experiments.items():
        cells = [pct(m.get(k)) for k, _ in BASELINE_COLUMNS[:3]]
        cells.append(f"{m.get('fusion_seconds', float('nan')):.3f}")
        ratio = m.get("fusion_cost_ratio", float("nan"))
        bound = "" if m.get("fusion_cost_reached", 1.0) else ">= "
        cells.append(f"{bound}{ratio:.0f}x")
        rows.append([name, *cells])
    return markdown_table(header, rows)


def table2(k_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Table 2: K models alternating deep/shallow: members, ensemble, fused, fine-tuned."""
    header = ["experiment", "K", "pre-trained models", "Ensemble", "M_F (one shot)", "FT M_F"]
    rows = []
    for name, rs in k_rows.items():
        for r in rs:
            members = ", ".join(pct(a) for a in r["member_accs"])
            rows.append(
                [name, str(r["k"]), members, pct(r["ensemble_acc"]), pct(r["fused_acc"]),
                 pct(r.get("finetuned_acc"))]
            )  # fmt: skip
    return markdown_table(header, rows)


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
            [name, sizes, pct(m.get("teacher_acc")), pct(m.get("kd_pretrained_b_student_acc")),
             pct(m["fused_student_oneshot_acc"])]
        )  # fmt: skip
    return markdown_table(header, rows)


def table5(experiments: Mapping[str, Mapping[str, float]]) -> str:
    """Table 5: knowledge distillation from the teacher into each student init (%)."""
    header = ["experiment", "row"] + [c for _, c in KD_INITS]
    rows = []
    for name, m in experiments.items():
        if "kd_fused_best_acc" not in m:
            continue
        for row, suffix in (("Best", "best"), ("Average over T", "mean")):
            rows.append([name, row] + [pct(m.get(f"kd_{k}_{suffix}_acc")) for k, _ in KD_INITS])
    return markdown_table(header, rows)


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


def experiment_metrics(
    shot: OneShotScores, finetuned: FinetuneScores, cost: CostScores
) -> dict[str, float]:
    """Flat metrics of one experiment: one shot, fine-tuning (means, and ``_std`` over
    pairs), the paired comparison (:data:`PAIRED`), cost (in that order)."""
    metrics: dict[str, float] = {"n_pairs": float(len(shot.pairs))}
    for name in PAIR_METRICS:
        metrics[name] = shot.mean(name)
        if name.endswith("_acc"):  # the spread of accuracies (not of wall times)
            metrics[f"{name}_std"] = mean_std(shot.values(name))[1]
    metrics.update({f"{n}_finetuned_acc": v for n, v in finetuned.best_test_acc.items()})
    for n, values in finetuned.pair_test_acc.items():
        metrics[f"{n}_finetuned_acc_std"] = mean_std(values)[1]
    pair = finetuned.pair_test_acc
    if {"clafusion", "parent_a", "parent_b"} <= pair.keys():
        best_parent = [max(a, b) for a, b in zip(pair["parent_a"], pair["parent_b"], strict=True)]
        diff = paired_difference(pair["clafusion"], best_parent)
        metrics.update(
            {f"{PAIRED}_{k}": float(getattr(diff, k)) for k in _PAIRED_KEYS}
        )  # fmt: skip
    metrics.update({f"k{k}_finetuned_acc": v for k, v in finetuned.k_best_test_acc.items()})
    metrics.update(
        {
            "train_to_fused_acc_epochs": float(cost.train_epochs),
            "train_to_fused_acc_seconds": cost.train_seconds,
            "fusion_cost_ratio": cost.ratio,
            "fusion_cost_reached": float(cost.reached),
        }
    )
    return metrics


def teacher_student_metrics(scores: TeacherStudentScores) -> dict[str, float]:
    """Flat metrics of a teacher–student experiment (Tables 4-5)."""
    metrics = {
        "fused_student_oneshot_acc": scores.fused_student_oneshot_acc,
        "teacher_acc": scores.teacher_acc,
        "kd_pretrained_b_student_acc": scores.student_acc,
    }
    for init, best in scores.kd_best_acc.items():
        metrics[f"kd_{init}_best_acc"] = best
        metrics[f"kd_{init}_mean_acc"] = scores.kd_mean_acc[init]
    metrics["n_params_teacher"] = scores.n_params_teacher
    metrics["n_params_student"] = scores.n_params_student
    metrics["n_params_fused_student"] = scores.n_params_fused_student
    return metrics


def k_rows(shot: OneShotScores, finetuned: FinetuneScores) -> list[dict[str, Any]]:
    """Table 2 rows of one experiment, with the fine-tuned fused accuracy per K."""
    return [
        {**dataclasses.asdict(r), "finetuned_acc": finetuned.k_best_test_acc.get(r.k)}
        for r in shot.k_rows
    ]


def flat_metrics(
    per_exp: Mapping[str, Mapping[str, float]],
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    headline: str | None,
) -> dict[str, float]:
    """``metrics.json``: the headline experiment unprefixed, then every experiment's keys
    as ``<experiment>.<key>`` followed by its ``k<K>_fused_acc`` / ``k<K>_ensemble_acc``."""
    metrics: dict[str, float] = dict(per_exp[headline or next(iter(per_exp))])
    for name, m in per_exp.items():
        metrics.update({f"{name}.{k}": v for k, v in m.items()})
        for r in rows.get(name, []):
            metrics[f"{name}.k{r['k']}_fused_acc"] = r["fused_acc"]
            metrics[f"{name}.k{r['k']}_ensemble_acc"] = r["ensemble_acc"]
    return metrics


def markdown_tables(
    per_exp: Mapping[str, Mapping[str, float]],
    kd: Mapping[str, Mapping[str, float]],
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    node_seconds: Mapping[str, float] | None = None,
) -> str:
    """``tables.md``: Tables 1, 2, 4, 5, the same-depth baselines and stage times."""
    sections = [
        ("## Table 1 (shape of CLAFusion Table 1): accuracy %, mean ± std over pairs\n",
         table1(per_exp)),
        ("## Fine-tuned CLAFusion vs the best fine-tuned parent of each pair\n",
         paired_table(per_exp)),
        ("## Same-depth baselines and cost\n", baseline_table(per_exp)),
        ("## Table 2: K models alternating deep/shallow\n", table2(rows)),
        ("## Table 4: teacher-student fusion (student widths, teacher depth)\n", table4(kd)),
        ("## Table 5: knowledge distillation into each student initialisation\n", table5(kd)),
    ]  # fmt: skip
    if node_seconds is not None:
        sections.append(("## Stage wall times\n", seconds_table(node_seconds)))
    return "\n\n".join(part for section in sections for part in section) + "\n"


def assemble_report(
    shots: Mapping[str, OneShotScores],
    finetuned: Mapping[str, FinetuneScores],
    costs: Mapping[str, CostScores],
    distilled: Mapping[str, TeacherStudentScores],
    headline: str | None = None,
    node_seconds: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], str, str, Figure, Figure]:
    """Flat metrics, markdown tables, per-experiment JSON and the two figures.

    Parameters
    ----------
    shots, finetuned, costs : mapping experiment -> scores of that stage
    distilled : mapping teacher-student experiment -> its scores
    headline : str, optional
        Experiment whose metrics are also written without a prefix (default: the first).
    node_seconds : mapping stage -> seconds, optional
        Wall times of the pipeline's stages, tabulated in ``tables.md``.

    Returns
    -------
    metrics, tables (markdown), details (JSON), accuracy-vs-K figure, curves figure
    """
    per_exp = {n: experiment_metrics(s, finetuned[n], costs[n]) for n, s in shots.items()}
    ts = {name: teacher_student_metrics(s) for name, s in distilled.items()}
    rows = {name: k_rows(s, finetuned[name]) for name, s in shots.items()}
    metrics = flat_metrics({**per_exp, **ts}, rows, headline)
    tables = markdown_tables(per_exp, ts, rows, node_seconds)
    curves = {name: dict(f.curves) for name, f in finetuned.items()}
    details = json.dumps({**per_exp, **ts}, indent=2)
    return metrics, tables, details, k_figure(rows), curves_figure(curves)
