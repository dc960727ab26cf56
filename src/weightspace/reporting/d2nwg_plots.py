"""Plots of a D2NWG run: sampled vs zoo accuracy, fine-tuning curves, latent projection."""

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
