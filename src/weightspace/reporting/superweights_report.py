"""The SuperWeights report: the result of ``run_superweights`` -> flat ``metrics.json``,
markdown tables in the shape of the supplement's Tables 2, 3 and 5 (Teterwak et al.,
"Learning to Compose SuperWeights for Neural Parameter Allocation Search", supplementary
Sections 3.4-3.9) and Figures 1 (anytime inference), 3 (interpolation), 4 (τ/β
sensitivity) and 5 (SuperWeight cluster membership).

The protocol (:mod:`weightspace.evaluation.superweights_protocol`) measures; this module
names. Every key is the mean over seeds; ``<key>_std`` (sample standard deviation, ddof =
1, 0 for one seed) comes with acc, nll, ece, diversity and member_acc_mean:

- ``swn_<kind>_<budget>_{acc,nll,ece,params,diversity,member_acc_mean,flops}`` for the
  learned clusters (kinds ``ho``, ``he_width``, ``he_depth_width``; budgets ``q25``,
  ``q50``, ``q80`` of the deep ensemble's parameters), and ``swn_<kind>_<budget>_de_fraction``
  (its parameters over the deep ensemble's of that kind);
- ``swn_one_sw_<budget>_*``: one SuperWeight per layer, no refinement (kind ``ho``; another
  kind gives ``swn_one_sw_<kind>_<budget>_*``);
- ``single_*``, ``be_*``, ``de_*`` (the deep ensemble of the base architecture, kind ``ho``)
  and ``de_<kind>_*`` for every kind;
- sensitivity (Figure 4): ``swn_tau_<v>_*``, ``swn_beta_<v>_*``, ``swn_not_shared_*``,
  ``swn_shared_*``, with ``<v>`` made key-safe: ``tau=0.1 -> swn_tau_0p1``,
  ``tau=-0.5 -> swn_tau_m0p5``;
- parameter allocation: ``npas_<budget>_*`` (one network under a budget smaller than its
  size) and ``narrow_<budget>_*`` (a narrower network with as many parameters);
- ``<prefix>_train_seconds`` for every prefix above; ``n_seeds``;
- ``anytime_<label>_{n_subsets,best_acc,full_acc,full_nll,full_ece,cheapest_acc}`` and
  ``anytime_<label>_full_seconds`` when measured; ``interp_<label>_{end_acc,min_acc,dip}``
  (``dip``: mean accuracy of the two end points minus the lowest point);
  ``clusters_<label>_{n_clusters,n_layers}``.

NaN and missing values are dropped; every value is a float.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from weightspace.errors import InvalidParameterError
from weightspace.reporting.markdown import markdown_table, seconds_table
from weightspace.reporting.spread import mean_std, pm_cell

__all__ = [
    "anytime_figure",
    "assemble_report",
    "clusters_figure",
    "flat_metrics",
    "interpolation_figure",
    "markdown_tables",
    "sensitivity_figure",
]

STATS = ("acc", "nll", "ece", "diversity", "member_acc_mean")
"""Row fields reported as mean and ``_std``."""
MEANS = ("params", "flops", "train_seconds")
"""Row fields reported as a mean only."""
METHODS = ("single", "de", "be", "swn")
KIND_LABELS = {"ho": "HO", "he_width": "HE multi-width", "he_depth_width": "HE multi-depth/width"}
REFERENCES = (("swn_not_shared", "not shared", ":"), ("swn_shared", "shared", "--"))
"""Figure 4's references: coefficients not shared, fully shared (prefix, label, style)."""
_SENSITIVITY = re.compile(r"^(tau|beta)=(.+)$")


def _safe(text: str) -> str:
    """A key-safe token: ``-0.5 -> m0p5``, other odd characters -> ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", str(text).replace("-", "m").replace(".", "p"))


def _unsafe(token: str) -> str:
    """The display form of a :func:`_safe` number: ``m0p5 -> -0.5``, ``1em3 -> 1e-3``."""
    return token.replace("m", "-").replace("p", ".")


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def row_prefix(row: Mapping[str, Any]) -> str:
    """The metric prefix of one result row (see the module docstring)."""
    method, kind, budget = row.get("method"), row.get("kind"), row.get("budget")
    variant = row.get("variant")
    if method not in METHODS:
        raise InvalidParameterError(
            f"unknown method {method!r} in a superweights row; use one of {METHODS}"
        )
    base = kind in (None, "ho")
    if variant in ("npas", "narrow"):
        return f"{variant}_{_safe(budget)}"
    if variant in ("not_shared", "shared"):
        return f"swn_{variant}"
    if isinstance(variant, str) and (match := _SENSITIVITY.match(variant)):
        return f"swn_{match[1]}_{_safe(match[2])}"
    if variant == "one_sw":
        return f"swn_one_sw_{_safe(budget)}" if base else f"swn_one_sw_{kind}_{_safe(budget)}"
    if method == "swn":
        if variant not in (None, "learned") or kind is None or budget is None:
            raise InvalidParameterError(
                f"SWN row with kind={kind!r}, budget={budget!r}, variant={variant!r}: a learned "
                "row needs a kind and a budget; variants are one_sw, not_shared, shared, "
                "tau=<v>, beta=<v>, npas, narrow"
            )
        return f"swn_{_safe(kind)}_{_safe(budget)}"
    if method == "de":
        return f"de_{_safe(kind)}" if kind else "de"
    return method if base else f"{method}_{_safe(kind)}"


def _row_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        prefix = row_prefix(row)
        groups.setdefault(prefix, []).append(row)
        if prefix == "de_ho":  # the deep ensemble of the base architecture is also plain "de"
            groups.setdefault("de", []).append(row)
    out: dict[str, float] = {}
    for prefix, group in groups.items():
        for field in STATS + MEANS:
            values = [float(r[field]) for r in group if _finite(r.get(field))]
            if not values:
                continue
            mean, std = mean_std(values)
            out[f"{prefix}_{field}"] = mean
            if field in STATS:
                out[f"{prefix}_{field}_std"] = std
    return out


def _anytime_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    seconds = result.get("anytime_seconds") or {}
    for label, points in (result.get("anytime") or {}).items():
        if not points:
            continue
        key = f"anytime_{_safe(label)}"
        full = max(range(len(points)), key=lambda i: (len(points[i]["members"]), -i))
        out[f"{key}_n_subsets"] = len(points)
        out[f"{key}_best_acc"] = max(p["acc"] for p in points)
        for m in ("acc", "nll", "ece"):
            out[f"{key}_full_{m}"] = points[full][m]
        out[f"{key}_cheapest_acc"] = min(points, key=lambda p: p["flops"])["acc"]
        if label in seconds and len(seconds[label]) == len(points):
            out[f"{key}_full_seconds"] = seconds[label][full]
    for label, curve in (result.get("interpolation") or {}).items():
        if curve:
            accs = [a for _, a in sorted(curve)]
            key = f"interp_{_safe(label)}"
            out[f"{key}_end_acc"] = (accs[0] + accs[-1]) / 2
            out[f"{key}_min_acc"] = min(accs)
            out[f"{key}_dip"] = out[f"{key}_end_acc"] - out[f"{key}_min_acc"]
    for label, clusters in (result.get("clusters") or {}).items():
        out[f"clusters_{_safe(label)}_n_clusters"] = len(set(clusters["cluster"].values()))
        out[f"clusters_{_safe(label)}_n_layers"] = sum(len(m) for m in clusters["members"])
    return out


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Every number of the report as ``metrics.json`` keys (see the module docstring)."""
    rows = result.get("rows")
    if not rows:
        raise InvalidParameterError("the superweights result has no 'rows'; run the protocol")
    out = _row_metrics(rows)
    for kind, params in (result.get("de_params") or {}).items():
        out.setdefault(f"de_{_safe(kind)}_params", float(params))
        if kind == "ho":
            out.setdefault("de_params", float(params))
    for key in [k for k in out if k.startswith("swn_") and k.endswith("_params")]:
        parts = key[4:-7].rsplit("_", 1)
        if len(parts) == 2 and out.get(f"de_{parts[0]}_params", 0) > 0:
            out[f"swn_{parts[0]}_{parts[1]}_de_fraction"] = out[key] / out[f"de_{parts[0]}_params"]
    out.update(_anytime_metrics(result))
    out["n_seeds"] = len({r["seed"] for r in rows})
    return {k: float(v) for k, v in out.items() if _finite(v)}


def _params(metrics: Mapping[str, float], prefix: str) -> str:
    value = metrics.get(f"{prefix}_params")
    return "-" if value is None else f"{round(value):,}"


def _budget_order(budget: str) -> tuple[float, str]:
    digits = re.sub(r"\D", "", budget)
    return (float(digits) if digits else math.inf, budget)


def swn_grid(metrics: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """The kinds (known ones first) and budgets (ascending) of the learned SWN rows."""
    other = ("swn_one_sw_", "swn_tau_", "swn_beta_", "swn_not_shared", "swn_shared")
    pairs = set()
    for key in metrics:  # a key ending in "_acc" is always "<prefix>_acc"
        if key.startswith("swn_") and key.endswith("_acc") and not key.startswith(other):
            kind, _, budget = key[4:-4].rpartition("_")
            if kind:
                pairs.add((kind, budget))
    known = list(KIND_LABELS)
    kinds = sorted(
        {k for k, _ in pairs}, key=lambda k: (known.index(k) if k in known else len(known), k)
    )
    return kinds, sorted({b for _, b in pairs}, key=_budget_order)


def _kind(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


def table5(metrics: Mapping[str, float]) -> str:
    """Table 5 shape: params, ACC (%), NLL, ECE (%), mean ± std over seeds."""
    kinds, budgets = swn_grid(metrics)
    names = [("single", "Single model"), ("be", "BatchEnsemble")]
    names += [(f"swn_ho_{b}", f"SWN-HO ({b})") for b in budgets]
    names += [
        (f"swn_{k}_{b}", f"SWN-{_kind(k)} ({b})") for k in kinds if k != "ho" for b in budgets
    ]
    names += [("de", "Deep ensemble")]
    names += [(f"de_{k}", f"Deep ensemble ({_kind(k)})") for k in kinds if k != "ho"]
    rows = [
        [label, _params(metrics, p), pm_cell(metrics, f"{p}_acc"),
         pm_cell(metrics, f"{p}_nll", 1.0, 3), pm_cell(metrics, f"{p}_ece")]
        for p, label in names if f"{p}_acc" in metrics
    ]  # fmt: skip
    return markdown_table(["Method", "Params", "ACC (%)", "NLL", "ECE (%)"], rows)


def table2(metrics: Mapping[str, float]) -> str:
    """Table 2 shape: params, ACC, diversity (Fort et al.) and the mean member ACC."""
    kinds, budgets = swn_grid(metrics)
    names = [("de", "Deep ensemble")]
    names += [(f"de_{k}", f"Deep ensemble ({_kind(k)})") for k in kinds if k != "ho"]
    names += [("be", "BatchEnsemble")]
    names += [(f"swn_{k}_{b}", f"SWN-{_kind(k)} ({b})") for k in kinds for b in budgets]
    rows = [
        [label, _params(metrics, p), pm_cell(metrics, f"{p}_acc"),
         pm_cell(metrics, f"{p}_diversity", 1.0, 3), pm_cell(metrics, f"{p}_member_acc_mean")]
        for p, label in names if f"{p}_acc" in metrics
    ]  # fmt: skip
    header = ["Method", "Params", "ACC (%)", "Diversity", "mean member ACC (%)"]
    return markdown_table(header, rows)


def table3(metrics: Mapping[str, float]) -> str:
    """Table 3 shape: ACC (%) (params) per budget; DE/BE/single as unconstrained references."""
    kinds, budgets = swn_grid(metrics)
    names = [("swn_one_sw_{b}", "SWN one SuperWeight per layer (HO)")]
    names += [(f"swn_{k}_{{b}}", f"SWN gradient clusters ({_kind(k)})") for k in kinds]

    def cell(prefix: str) -> str:
        acc = pm_cell(metrics, f"{prefix}_acc")
        return acc if acc == "-" else f"{acc} ({_params(metrics, prefix)})"

    rows = [
        [label, *[cell(p.format(b=b)) for b in budgets], "-"]
        for p, label in names if any(f"{p.format(b=b)}_acc" in metrics for b in budgets)
    ]  # fmt: skip
    for p, label in (("de", "Deep ensemble"), ("be", "BatchEnsemble"), ("single", "Single model")):
        if f"{p}_acc" in metrics:
            rows.append([label, *["-"] * len(budgets), cell(p)])
    return markdown_table(["Method", *budgets, "reference"], rows)


def _sweep(metrics: Mapping[str, float], name: str) -> list[tuple[float, str]]:
    """``(value, key prefix)`` of a τ or β sweep, by value."""
    found = []
    for key in metrics:
        if match := re.match(rf"^swn_{name}_([A-Za-z0-9]+)_acc$", key):
            try:
                found.append((float(_unsafe(match[1])), f"swn_{name}_{match[1]}"))
            except ValueError:
                continue
    return sorted(found)


def sensitivity_table(metrics: Mapping[str, float]) -> str:
    """Figure 4 as a table: τ and β sweeps, coefficients not shared and fully shared."""
    names = [(p, f"τ = {v:g}") for v, p in _sweep(metrics, "tau")]
    names += [(p, f"β = {v:g}") for v, p in _sweep(metrics, "beta")]
    names += [("swn_not_shared", "coefficients not shared"), ("swn_shared", "fully shared")]
    rows = [
        [label, pm_cell(metrics, f"{p}_acc"), pm_cell(metrics, f"{p}_nll", 1.0, 3),
         pm_cell(metrics, f"{p}_ece")]
        for p, label in names if f"{p}_acc" in metrics
    ]  # fmt: skip
    return markdown_table(["setting", "ACC (%)", "NLL", "ECE (%)"], rows or [["-"] * 4])


def npas_table(metrics: Mapping[str, float]) -> str:
    """Parameter allocation: one network under a budget vs a narrower one of as many params."""
    budgets = sorted({k[5:-4] for k in metrics if re.match(r"^npas_.+_acc$", k)}, key=_budget_order)
    rows = []
    for b in budgets:
        npas, narrow = metrics.get(f"npas_{b}_acc"), metrics.get(f"narrow_{b}_acc")
        delta = "-" if narrow is None else f"{100 * (npas - narrow):+.2f}"
        rows.append(
            [b, _params(metrics, f"npas_{b}"), pm_cell(metrics, f"npas_{b}_acc"),
             _params(metrics, f"narrow_{b}"), pm_cell(metrics, f"narrow_{b}_acc"), delta]
        )  # fmt: skip
    header = ["budget", "NPAS params", "NPAS ACC (%)", "narrow params", "narrow ACC (%)", "Δ"]
    return markdown_table(header, rows or [["-"] * 6])


def cost_table(metrics: Mapping[str, float]) -> str:
    """Parameters, inference FLOPs and training seconds of every trained setting."""
    prefixes = [k[: -len("_train_seconds")] for k in metrics if k.endswith("_train_seconds")]
    if "de_ho" in prefixes:  # "de" repeats "de_ho"
        prefixes.remove("de")
    rows = [
        [p, _params(metrics, p),
         "-" if f"{p}_flops" not in metrics else f"{metrics[f'{p}_flops']:.3g}",
         f"{metrics[f'{p}_train_seconds']:.1f}"]
        for p in prefixes
    ]  # fmt: skip
    return markdown_table(["setting", "params", "FLOPs", "train s"], rows or [["-"] * 4])


def markdown_tables(
    metrics: Mapping[str, float], node_seconds: Mapping[str, float] | None = None
) -> str:
    """``tables.md``: Tables 5, 2, 3, sensitivity, NPAS, cost and stage wall times."""
    n = int(metrics.get("n_seeds", 0))
    sections = [
        (f"## Table 5: ensembles, mean ± std over {n} seeds\n", table5(metrics)),
        ("## Table 2: diversity (Fort et al.)\n", table2(metrics)),
        ("## Table 3: accuracy under parameter budgets (params)\n", table3(metrics)),
        ("## Figure 4: τ / β sensitivity\n", sensitivity_table(metrics)),
        ("## Neural parameter allocation\n", npas_table(metrics)),
        ("## Cost\n", cost_table(metrics)),
    ]
    if node_seconds is not None:
        sections.append(("## Stage wall times\n", seconds_table(node_seconds)))
    return "\n\n".join(part for section in sections for part in section) + "\n"


def _style(label: str) -> dict[str, Any]:
    if label.startswith("de"):
        return {"linestyle": "--", "marker": "s"}
    if label.startswith("be"):
        return {"linestyle": ":", "marker": "^"}
    return {"linestyle": "-", "marker": "o"}


def _frontier(x: Sequence[float], acc: Sequence[float]) -> tuple[list[float], list[float]]:
    """Best accuracy per cost level, then its running max: the anytime frontier."""
    best: dict[float, float] = {}
    for xi, ai in zip(x, acc, strict=True):
        best[xi] = max(best.get(xi, -math.inf), ai)
    xs, ys, top = [], [], -math.inf
    for xi in sorted(best):
        top = max(top, best[xi])
        xs.append(xi)
        ys.append(top)
    return xs, ys


def anytime_figure(result: Mapping[str, Any]) -> Figure:
    """Figure 1: accuracy vs FLOPs (log) over every member subset; a second panel against
    measured seconds when ``anytime_seconds`` is present. Faint dots: every subset; line:
    at each cost, the best subset costing at most that."""
    anytime = {k: v for k, v in (result.get("anytime") or {}).items() if v}
    seconds = result.get("anytime_seconds") or {}
    costs = [("flops", "inference FLOPs")] + ([("seconds", "seconds")] if seconds else [])
    fig = Figure(figsize=(5.5 * len(costs), 4.0), layout="constrained")
    for ax, (cost, xlabel) in zip(
        fig.subplots(1, len(costs), squeeze=False)[0], costs, strict=True
    ):
        for i, (label, points) in enumerate(anytime.items()):
            if cost == "flops":
                x = [float(p["flops"]) for p in points]
            elif label in seconds:
                if len(seconds[label]) != len(points):
                    raise InvalidParameterError(
                        f"anytime_seconds[{label!r}] has {len(seconds[label])} entries for "
                        f"{len(points)} subsets; give one time per subset, in the same order"
                    )
                x = [float(s) for s in seconds[label]]
            else:
                continue
            acc = [100 * float(p["acc"]) for p in points]
            color = f"C{i % 10}"
            ax.scatter(x, acc, s=12, alpha=0.25, color=color)
            ax.plot(*_frontier(x, acc), color=color, label=label, **_style(label))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on < 1 decade
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def sensitivity_figure(metrics: Mapping[str, float]) -> Figure:
    """Figure 4: (a) β, (b) τ; "not shared" and "shared" coefficients as horizontal lines."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    for ax, (name, symbol) in zip(fig.subplots(1, 2), (("beta", "β"), ("tau", "τ")), strict=True):
        sweep = _sweep(metrics, name)
        if sweep:
            v = np.array([x for x, _ in sweep])
            acc = np.array([100 * metrics[f"{p}_acc"] for _, p in sweep])
            std = np.array([100 * metrics.get(f"{p}_acc_std", 0.0) for _, p in sweep])
            ax.plot(v, acc, marker="o", label=f"SWN, {symbol}")
            ax.fill_between(v, acc - std, acc + std, alpha=0.2)
        else:
            ax.text(0.5, 0.5, f"no {symbol} sweep", ha="center", transform=ax.transAxes)
        for p, label, style in REFERENCES:
            if f"{p}_acc" in metrics:
                ax.axhline(100 * metrics[f"{p}_acc"], linestyle=style, color="gray", label=label)
        ax.set_xlabel(symbol)
        ax.set_ylabel("test accuracy (%)")
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def interpolation_figure(result: Mapping[str, Any]) -> Figure:
    """Figure 3: accuracy along the straight line between two members' composed weights."""
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for label, curve in (result.get("interpolation") or {}).items():
        if curve:
            t, acc = zip(*sorted(curve), strict=True)
            ax.plot(t, [100 * a for a in acc], label=label, **_style(label))
    ax.set_xlabel("interpolation t (member 0 -> member 1)")
    ax.set_ylabel("test accuracy (%)")
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def _colors(n: int) -> list[tuple[float, ...]]:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, evenly spaced turbo beyond."""
    if n <= 20:
        cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(i) for i in range(max(n, 1))]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def cluster_grid(clusters: Mapping[str, Any]) -> np.ndarray:
    """``(members, max depth)`` cluster ids, NaN where a member has no layer at that depth."""
    members = clusters["members"]
    grid = np.full((len(members), max((len(m) for m in members), default=0)), np.nan)
    for i, layers in enumerate(members):
        for d, name in enumerate(layers):
            key = f"{i}/{name}"
            if key not in clusters["cluster"]:
                raise InvalidParameterError(f"no cluster id for layer {key!r}")
            grid[i, d] = clusters["cluster"][key]
    return grid


def clusters_figure(result: Mapping[str, Any]) -> Figure:
    """Figure 5: SuperWeight cluster of every layer, members x depth, one panel per label
    (each with its colorbar of cluster ids)."""
    items = [(k, v) for k, v in (result.get("clusters") or {}).items() if any(v["members"])]
    fig = Figure(figsize=(8.0, 1.2 + 1.0 * sum(len(v["members"]) for _, v in items)),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(max(len(items), 1), 1, squeeze=False)[:, 0]
    if not items:
        axes[0].text(0.5, 0.5, "no clusters recorded", ha="center", transform=axes[0].transAxes)
    for ax, (label, clusters) in zip(axes, items, strict=False):
        grid = cluster_grid(clusters)
        ids = np.unique(grid[~np.isnan(grid)])
        rank = np.where(np.isnan(grid), np.nan, np.searchsorted(ids, np.nan_to_num(grid)))
        cmap = ListedColormap(_colors(len(ids)))
        norm = BoundaryNorm(np.arange(len(ids) + 1) - 0.5, cmap.N)
        image = ax.imshow(np.ma.masked_invalid(rank), cmap=cmap, norm=norm, aspect="auto")
        if grid.shape[1] <= 40:
            for (i, d), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(d, i, f"{int(value)}", ha="center", va="center", fontsize=7)
        ax.set_yticks(range(grid.shape[0]), [f"member {i}" for i in range(grid.shape[0])])
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xlabel("layer depth")
        ax.set_title(f"SuperWeight clusters: {label}")
        bar = fig.colorbar(image, ax=ax, ticks=range(len(ids)))
        bar.ax.set_yticklabels([f"{int(i)}" for i in ids])
        bar.set_label("cluster")
    return fig


def assemble_report(
    result: Mapping[str, Any], node_seconds: Mapping[str, float] | None = None
) -> tuple[dict[str, float], str, dict[str, Figure]]:
    """Flat metrics, markdown tables and the four figures."""
    metrics = flat_metrics(result)
    figures = {
        "anytime": anytime_figure(result),
        "sensitivity": sensitivity_figure(metrics),
        "interpolation": interpolation_figure(result),
        "clusters": clusters_figure(result),
    }
    return metrics, markdown_tables(metrics, node_seconds), figures
