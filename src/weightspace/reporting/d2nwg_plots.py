"""Plots of a D2NWG run: sampled vs zoo accuracy, fine-tuning curves, latents, retrieval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def accuracy_histogram(groups: Mapping[str, np.ndarray], title: str) -> Figure:
    """Overlaid histograms of test accuracy, one per named group (zoo, sampled, ...)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    for name, values in groups.items():
        ax.hist(
            values,
            bins=bins,
            alpha=0.55,
            label=f"{name} (n={len(values)}, mean {np.mean(values):.3f})",
        )
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("models")
    ax.set_title(title)
    ax.legend()
    return fig


def finetune_curves_figure(
    steps: Sequence[int], curves: Mapping[str, torch.Tensor], title: str
) -> Figure:
    """Mean query accuracy (with min-max band over tasks) against fine-tuning steps."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    x = [0, *steps]
    for name, acc in curves.items():
        a = acc.numpy()
        ax.plot(x, a.mean(0), marker="o", label=name)
        ax.fill_between(x, a.min(0), a.max(0), alpha=0.15)
    ax.set_xlabel("fine-tuning steps on the support set")
    ax.set_ylabel("query accuracy")
    ax.set_title(title)
    ax.legend()
    return fig


def latent_projection(latents: torch.Tensor, labels: Sequence[str], title: str) -> Figure:
    """First two principal components of latents (N, L), coloured by label."""
    x = latents.double() - latents.double().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ v[:2].T).numpy()
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    for name in sorted(set(labels)):
        idx = [i for i, label in enumerate(labels) if label == name]
        ax.scatter(proj[idx, 0], proj[idx, 1], s=10, alpha=0.7, label=name)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=1.5)
    return fig


def retrieval_figure(
    names: Sequence[str],
    accuracies: Mapping[str, np.ndarray],
    confusion: np.ndarray,
    title: str,
) -> Figure:
    """Model retrieval: grouped accuracy bars per dataset and the retrieval confusion.

    Parameters
    ----------
    names : sequence of str
        Dataset names (``T``).
    accuracies : mapping label -> array (T,)
        One bar per label and dataset (e.g. zoo mean, sampled mean, sampled best-of-K).
    confusion : array (T, T)
        Fraction of the samples conditioned on dataset ``t`` (row) whose nearest zoo
        member was trained on dataset ``u`` (column).
    """
    t = len(names)
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax, cx = fig.subplots(1, 2, width_ratios=[1.6, 1])
    width = 0.8 / max(len(accuracies), 1)
    x = np.arange(t)
    for i, (label, values) in enumerate(accuracies.items()):
        values = np.asarray(values, dtype=float)
        ax.bar(x + (i - (len(accuracies) - 1) / 2) * width, values, width,
               label=f"{label} (mean {values.mean():.3f})")  # fmt: skip
    ax.set_xticks(x, list(names), rotation=25, ha="right")
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=len(accuracies), fontsize=8)
    im = cx.imshow(np.asarray(confusion), vmin=0, vmax=1, cmap="viridis")
    for r in range(t):
        for c in range(t):
            v = float(confusion[r][c])
            cx.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.5 else "white")  # fmt: skip
    cx.set_xticks(x, list(names), rotation=25, ha="right", fontsize=8)
    cx.set_yticks(x, list(names), fontsize=8)
    cx.set_xlabel("dataset of the nearest zoo member")
    cx.set_ylabel("conditioning dataset")
    cx.set_title(f"retrieval (function space), accuracy {np.trace(confusion) / t:.3f}")
    fig.colorbar(im, ax=cx, shrink=0.8)
    return fig


def grouped_bars(
    rows: Mapping[str, Mapping[str, float]], groups: Sequence[str], title: str
) -> Figure:
    """Horizontal grouped bars: one bar per (variant, group); missing values are skipped."""
    names = list(rows)
    fig = Figure(figsize=(8, 0.25 * len(names) * len(groups) + 1.5), layout="constrained")
    ax = fig.subplots()
    h = 0.8 / len(groups)
    for j, g in enumerate(groups):
        ys = [i + j * h for i, n in enumerate(names) if g in rows[n]]
        xs = [rows[n][g] for n in names if g in rows[n]]
        ax.barh(ys, xs, height=h, label=g)
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy (mean over tasks and candidates)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig
