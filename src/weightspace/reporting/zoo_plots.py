"""Plots of a zoo: test-accuracy histograms by architecture and by task."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def zoo_accuracy_figure(index: pd.DataFrame, metric: str = "test_accuracy") -> Figure:
    """Accuracy histogram per architecture (left) and distribution per task (right).

    Parameters
    ----------
    index : DataFrame
        Zoo index (final checkpoints are used when an ``is_final`` column is present).
    metric : str
        Column to plot.
    """
    if "is_final" in index.columns:
        index = index[index["is_final"].astype(bool)]
    tasks = sorted(index["task"].unique())
    fig = Figure(figsize=(13, max(4.0, 0.28 * len(tasks) + 1.5)), layout="constrained")
    ax_hist, ax_task = fig.subplots(1, 2, width_ratios=[1, 1.3])
    bins = np.linspace(0.0, 1.0, 41)
    for arch, group in index.groupby("arch"):
        ax_hist.hist(group[metric], bins=bins, alpha=0.6, label=f"{arch} (n={len(group)})")
    ax_hist.set_xlabel(metric.replace("_", " "))
    ax_hist.set_ylabel("models")
    ax_hist.set_title(f"{len(index)} models: {metric.replace('_', ' ')} by architecture")
    ax_hist.legend()
    archs = sorted(index["arch"].unique())
    height = 0.8 / max(len(archs), 1)
    for a, arch in enumerate(archs):
        data = [
            index[(index["task"] == t) & (index["arch"] == arch)][metric].to_numpy() for t in tasks
        ]
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
