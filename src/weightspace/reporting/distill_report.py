"""The distillation report: :class:`~weightspace.evaluation.distill_scores.DistillScores`
-> flat ``metrics.json``, markdown tables in the shape of LatentBE's Tables 1-2 (Nam et
al., ICML 2022) and reliability diagrams.

The protocol (:mod:`weightspace.evaluation.distill_protocol`) measures; this module names.
Keys: ``<method>_<metric>`` (mean over student seeds) and ``<method>_<metric>_std``
(sample standard deviation, ddof = 1) for ``metric`` in ACC, NLL, ECE, cNLL, cECE, Brier
and ``method`` in ``de``, ``single``, ``kd``, ``be``, ``latentbe``, ``be_<kind>``,
``latentbe_<kind>``; ``latentbe[_<kind>]_be_agreement``; ``merge_<form>_{acc,nll,agreement}``;
``<method>_{params,forward_passes,inference_seconds_per_example}``;
``<method>_train_seconds``; the diversity of the DE and of the BE members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from weightspace.evaluation.distill_scores import METRICS, DistillScores, MethodScores
from weightspace.reporting.markdown import markdown_table, seconds_table
from weightspace.reporting.reliability import reliability_diagram
from weightspace.reporting.spread import mean_std, pm_cell

__all__ = ["assemble_report", "flat_metrics", "markdown_tables", "reliability_figure"]

LABELS: dict[str, str] = {
    "de": "DE-{m} teacher",
    "single": "single teacher (mean of members)",
    "kd": "KD [Hinton et al.]",
    "be": "BE one-to-one ({m} passes)",
    "latentbe": "KD + LatentBE",
    "latentbe_ods": "+ ODS",
    "latentbe_confods": "+ ConfODS",
    "latentbe_tdiv_sdiv": "+ TDiv-SDiv",
    "be_ods": "BE + ODS",
    "be_confods": "BE + ConfODS",
    "be_tdiv_sdiv": "BE + TDiv-SDiv",
}
"""Row labels, in the paper's order."""


def method_metrics(name: str, rows: Sequence[MethodScores]) -> dict[str, float]:
    """``<name>_<metric>`` and ``<name>_<metric>_std`` over seeds."""
    out: dict[str, float] = {}
    for metric in METRICS:
        mean, std = mean_std([getattr(r, metric) for r in rows])
        out[f"{name}_{metric}"] = mean
        out[f"{name}_{metric}_std"] = std
    return out


def flat_metrics(scores: DistillScores) -> dict[str, float]:
    """Every number of the report as ``metrics.json`` keys (see the module docstring)."""
    metrics: dict[str, float] = {"m": float(scores.m), "n_seeds": float(len(scores.seeds))}
    for name in ("de", "single"):
        metrics.update({f"{name}_{k}": v for k, v in scores.teachers[name].as_dict().items()})
    for name, rows in scores.students.items():
        metrics.update(method_metrics(name, rows))
    for name, values in scores.agreement.items():
        metrics[f"{name}_be_agreement"] = mean_std(values)[0]
    for form, rows in scores.merge_forms.items():
        for key in ("acc", "nll", "agreement"):
            metrics[f"merge_{form}_{key}"] = mean_std([r[key] for r in rows])[0]
    metrics.update(scores.diversity)
    for name, cost in scores.cost.items():
        metrics[f"{name}_params"] = cost["n_params"]
        metrics[f"{name}_forward_passes"] = cost["forward_passes"]
        metrics[f"{name}_inference_seconds_per_example"] = cost["seconds_per_example"]
    if "latentbe" in scores.cost and "be" in scores.cost:
        metrics["latentbe_be_inference_ratio"] = (
            scores.cost["latentbe"]["seconds_per_example"]
            / scores.cost["be"]["seconds_per_example"]
        )
    for method, seconds in scores.train_seconds.items():
        metrics[f"{method}_train_seconds"] = mean_std(seconds)[0]
    if "be" in scores.train_seconds and "kd" in scores.train_seconds:
        metrics["be_train_vs_m_kd"] = metrics["be_train_seconds"] / (
            scores.m * metrics["kd_train_seconds"]
        )
    return metrics


def results_table(metrics: Mapping[str, float], names: Sequence[str], m: int) -> str:
    """Tables 1-2 of the paper: ACC (%), NLL, ECE, cNLL, cECE, Brier, mean ± std."""
    rows = []
    for name in names:
        if f"{name}_acc" not in metrics:
            continue
        cells = [pm_cell(metrics, f"{name}_acc", 100.0, 2)]
        cells += [pm_cell(metrics, f"{name}_{k}", 1.0, 3) for k in METRICS[1:]]
        rows.append([LABELS.get(name, name).format(m=m), *cells])
    return markdown_table(["Method", "ACC", "NLL", "ECE", "cNLL", "cECE", "Brier"], rows)


def cost_table(metrics: Mapping[str, float], m: int) -> str:
    """Parameters, forward passes, inference and training time per method."""
    rows = []
    for name in ("de", "single", "kd", "be", "latentbe"):
        if f"{name}_params" not in metrics:
            continue
        train = metrics.get(f"{name}_train_seconds")
        rows.append(
            [
                LABELS[name].format(m=m),
                f"{int(metrics[f'{name}_params']):,}",
                f"{int(metrics[f'{name}_forward_passes'])}",
                f"{1e6 * metrics[f'{name}_inference_seconds_per_example']:.2f}",
                "-" if train is None else f"{train:.1f}",
            ]
        )
    header = ["Method", "params", "forward passes", "inference µs/example", "train s/student"]
    return markdown_table(header, rows)


def merge_table(metrics: Mapping[str, float]) -> str:
    """The merge forms of the plain BE, and each variant's agreement with its BE."""
    rows = []
    for form in ("product_of_means", "mean_of_products", "product_of_means_bn_recomputed"):
        if f"merge_{form}_acc" in metrics:
            rows.append(
                [
                    form,
                    f"{100 * metrics[f'merge_{form}_acc']:.2f}",
                    f"{metrics[f'merge_{form}_nll']:.3f}",
                    f"{100 * metrics[f'merge_{form}_agreement']:.2f}",
                ]
            )
    table = markdown_table(["merge form", "ACC", "NLL", "agreement with BE (%)"], rows)
    agree = [
        [LABELS.get(k[: -len("_be_agreement")], k), f"{100 * v:.2f}"]
        for k, v in metrics.items()
        if k.endswith("_be_agreement")
    ]
    return table + "\n\n" + markdown_table(["LatentBE student", "agreement with BE (%)"], agree)


def diversity_table(metrics: Mapping[str, float]) -> str:
    """Disagreement and normalized diversity (Fort et al.) of DE and BE members."""
    rows = []
    for name, label in (("de", "DE members"), ("be", "BE members (one-to-one)")):
        if f"{name}_disagreement" in metrics:
            rows.append(
                [
                    label,
                    f"{metrics[f'{name}_disagreement']:.4f}",
                    f"{metrics[f'{name}_normalized_diversity']:.3f}",
                ]
            )
    return markdown_table(["members", "pairwise disagreement", "normalized diversity"], rows)


def markdown_tables(
    metrics: Mapping[str, float], m: int, node_seconds: Mapping[str, float] | None = None
) -> str:
    """``tables.md``: results, BE variants, merge forms, cost, diversity, stage times."""
    main = [
        "de",
        "single",
        "kd",
        "latentbe",
        "latentbe_ods",
        "latentbe_confods",
        "latentbe_tdiv_sdiv",
    ]
    be = ["be", "be_ods", "be_confods", "be_tdiv_sdiv"]
    n = int(metrics.get("n_seeds", 0))
    head = f"## Results (shape of LatentBE Tables 1-2): DE-{m}, mean ± std over {n} seeds\n"
    sections = [
        (head, results_table(metrics, main, m)),
        ("## BatchEnsemble students before merging\n", results_table(metrics, be, m)),
        ("## LatentBE merge: forms and agreement with the BE\n", merge_table(metrics)),
        ("## Cost\n", cost_table(metrics, m)),
        ("## Diversity\n", diversity_table(metrics)),
    ]
    if node_seconds is not None:
        sections.append(("## Stage wall times\n", seconds_table(node_seconds)))
    return "\n\n".join(part for section in sections for part in section) + "\n"


def reliability_figure(scores: DistillScores) -> Figure:
    """Reliability diagrams of the DE, KD and the best LatentBE variant (first seed)."""
    items = list(scores.reliability.items())
    fig = Figure(figsize=(4.0 * max(len(items), 1), 4.2), layout="constrained")
    axes = fig.subplots(1, max(len(items), 1), squeeze=False)[0]
    for ax, (name, (probs, labels)) in zip(axes, items, strict=False):
        label = LABELS.get(name, name).format(m=scores.m)
        if name.startswith("latentbe_"):  # "+ ODS" alone is a table row, not a title
            label = f"LatentBE {label}"
        reliability_diagram(probs, labels, ax=ax, title=label)
    return fig


def assemble_report(
    scores: DistillScores, node_seconds: Mapping[str, float] | None = None
) -> tuple[dict[str, float], str, Figure]:
    """Flat metrics, markdown tables and the reliability figure."""
    metrics = flat_metrics(scores)
    return metrics, markdown_tables(metrics, scores.m, node_seconds), reliability_figure(scores)
