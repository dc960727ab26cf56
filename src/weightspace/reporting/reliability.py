"""Reliability diagrams (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
Sec. 2, Fig. 1), the picture behind the ECE / cECE columns of LatentBE (Nam et al., ICML
2022, Tables 1-2).

The binning is :func:`weightspace.metrics.reliability_bins`, the same implementation that
:func:`weightspace.metrics.ece` uses, so the ECE printed in the title is exactly the ECE
of the metrics table. Figures are built on :class:`matplotlib.figure.Figure` directly,
never through ``pyplot``'s global state, so they are safe under the Agg backend, in
threads, and in Kedro's ``MatplotlibDataset``.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from weightspace.errors import ShapeError
from weightspace.metrics import ReliabilityBins, ece, reliability_bins

__all__ = ["ReliabilityBins", "reliability_bins", "reliability_diagram"]


def reliability_diagram(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    ax: Axes | None = None,
    title: str | None = None,
    mask: torch.Tensor | None = None,
) -> Figure:
    """Draw a reliability diagram of one model's predictions.

    One bar per confidence bin (``n_bins`` equal-width, right-closed bins on ``[0, 1]``)
    with height equal to the bin's accuracy, the diagonal of perfect calibration, and the
    gap between accuracy and mean confidence shaded; empty bins get zero-height bars so
    that there are always ``n_bins`` of each. The title carries the ECE.

    Parameters
    ----------
    probs : Tensor, shape (N, C)
        Predicted probabilities of a single model (rows sum to 1).
    labels : Tensor, shape (N,), int
        Class indices.
    n_bins : int
        Number of confidence bins (15 as in Guo et al.).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; its figure is returned. By default a new 4 x 4 inch figure.
    title : str, optional
        Prefix of the title, e.g. a model or method name.
    mask : Tensor, shape (N,), bool, optional
        ``False`` marks padded samples to ignore.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the accuracy bars are the container labelled ``"Accuracy"`` and the
        gap bars the one labelled ``"Gap"`` in ``ax.containers``.
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 2:
        raise ShapeError(
            f"reliability_diagram draws one model: probs must have shape (N, C), got "
            f"{tuple(probs.shape)}; select a model first, e.g. probs[i]"
        )
    bins = reliability_bins(probs, labels, n_bins, mask=mask)
    error = float(ece(probs, labels, n_bins, mask=mask))
    count = bins.count.cpu().numpy()
    conf = bins.confidence.double().cpu().numpy()
    acc = bins.accuracy.double().cpu().numpy()
    filled = count > 0

    if ax is None:
        fig = Figure(figsize=(4.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure(root=True)
    width = 1.0 / n_bins
    left = np.arange(n_bins) * width
    ax.bar(
        left,
        acc,
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="Accuracy",
    )
    ax.bar(
        left,
        np.where(filled, np.abs(conf - acc), 0.0),
        bottom=np.where(filled, np.minimum(conf, acc), 0.0),
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.5,
        label="Gap",
    )
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="gray", linewidth=1.0)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left")
    ece_text = f"ECE = {100 * error:.2f}%"
    ax.set_title(f"{title} ({ece_text})" if title else ece_text)
    return fig
