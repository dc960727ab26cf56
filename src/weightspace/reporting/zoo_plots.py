"""Plots of a zoo: test-accuracy histograms by architecture and by task."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def zoo_accuracy_figure(
    index: pd.DataFrame, metric: str = "test_accuracy", max_tasks: int = 40
) -> Figure:
    """Accuracy histogram per architecture (left) and distribution per task (right).

    With more than ``max_tasks`` tasks (a zoo of 1,250 five-way head tasks), one box per
    task would make a figure hundreds of inches tall that nobody can read (and that took
    seconds to lay out); the right panel then shows instead how the per-task mean is
    distributed, per architecture.

    Parameters
    ----------
    index : DataFrame
        Zoo index (final checkpoints are used when an ``is_final`` column is present).
    metric : str
        Column to plot.
    max_tasks : int
        Most tasks drawn one box each.
    """
    if "is_final" in index.columns:
        index = index[index["is_final"].astype(bool)]
    tasks = sorted(index["task"].unique())
    if len(tasks) > max_tasks:
        return _many_tasks_figure(index, metric, len(tasks))
    fig = Figure(figsize=(13, max(4.0, 0.28 * len(tasks) + 1.5)), layout="constrained")
    ax_hist, ax_task = fig.subplots(1, 2, width_ratios=[1, 1.3])
    _by_architecture(ax_hist, index, metric)
    archs = sorted(index["arch"].unique())
    by = {key: g[metric].to_numpy() for key, g in index.groupby(["task", "arch"])}
    height = 0.8 / max(len(archs), 1)
    for a, arch in enumerate(archs):
        data = [by.get((t, arch), np.empty(0)) for t in tasks]
        positions = np.arange(len(tasks)) + (a - (len(archs) - 1) / 2) * height
        keep = [i for i, d in enumerate(data) if len(d)]
        if not keep:
            continue
        box = ax_task.boxplot(
            [data[i] for i in keep],
            positions=positions[keep],
            orientation="horizontal",
            widths=height * 0.9,
            patch_artist=True,
            manage_ticks=False,
            showfliers=False,
        )
        color = f"C{a}"
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        ax_task.plot([], [], color=color, lw=6, alpha=0.6, label=arch)
    ax_task.set_yticks(np.arange(len(tasks)), tasks, fontsize=7)
    ax_task.set_xlabel(metric.replace("_", " "))
    ax_task.set_title("by task")
    ax_task.legend(loc="lower left")
    return fig


def _by_architecture(ax, index: pd.DataFrame, metric: str) -> None:
    """Histogram of ``metric`` over the models, one colour per architecture."""
    bins = np.linspace(0.0, 1.0, 41)
    for arch, group in index.groupby("arch"):
        ax.hist(group[metric], bins=bins, alpha=0.6, label=f"{arch} (n={len(group)})")
    ax.set_xlabel(metric.replace("_", " "))
    ax.set_ylabel("models")
    ax.set_title(f"{len(index)} models: {metric.replace('_', ' ')} by architecture")
    ax.legend()


def _many_tasks_figure(index: pd.DataFrame, metric: str, n_tasks: int) -> Figure:
    """Models by architecture (left); per-task mean and spread across tasks (right)."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    ax_hist, ax_task = fig.subplots(1, 2, width_ratios=[1, 1.3])
    _by_architecture(ax_hist, index, metric)
    bins = np.linspace(0.0, 1.0, 41)
    per_task = index.groupby(["arch", "task"])[metric].agg(["mean", "min", "max"])
    for a, (arch, g) in enumerate(per_task.groupby(level="arch")):
        color = f"C{a}"
        ax_task.hist(g["mean"], bins=bins, alpha=0.6, color=color,
                     label=f"{arch}: task mean ({len(g)} tasks)")  # fmt: skip
        ax_task.hist(g["max"] - g["min"], bins=bins, histtype="step", color=color, lw=1.5,
                     label=f"{arch}: task spread (max - min)")  # fmt: skip
    name = metric.replace("_", " ")
    ax_task.set_xlabel(name)
    ax_task.set_ylabel("tasks")
    ax_task.set_title(f"by task ({n_tasks} tasks, too many for one box each)")
    ax_task.legend(loc="upper left", fontsize=8)
    return fig
