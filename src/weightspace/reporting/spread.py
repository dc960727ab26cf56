"""Spread over repeated runs: mean ± sample standard deviation, ``mean ± std`` cells, and
the paired comparison behind a "beats X beyond the spread" claim.

Every report that states a claim over seeds or parent pairs uses these, so "beyond the
spread" means the same thing everywhere: the 95% Student-t interval of the mean paired
difference lies entirely above 0 (:func:`paired_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = ["PairedDifference", "mean_std", "paired_difference", "pm_cell"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value).

    Raises
    ------
    ValueError
        ``values`` is empty.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def pm_cell(metrics: Mapping[str, float], key: str, scale: float = 100.0, digits: int = 2) -> str:
    """``"<mean> ± <std>"`` of ``metrics[key]`` and ``metrics[key + "_std"]`` (scaled);
    the mean alone when there is no ``_std`` key; ``-`` when ``key`` is missing."""
    if key not in metrics:
        return "-"
    text = f"{scale * metrics[key]:.{digits}f}"
    std = metrics.get(f"{key}_std")
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


@dataclass(frozen=True)
class PairedDifference:
    """``d_i = a_i - b_i`` over ``n`` paired runs.

    ``ci_low``/``ci_high`` bound the 95% Student-t interval of the mean (equal to the mean
    for one pair); ``wins`` counts ``d_i > 0``; ``verdict`` is ``"better"`` when the
    interval lies above 0, ``"worse"`` when below, else ``"within the spread"``.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    wins: int

    @property
    def verdict(self) -> str:
        if self.n > 1 and self.ci_low > 0:
            return "better"
        if self.n > 1 and self.ci_high < 0:
            return "worse"
        return "within the spread"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Mean, std, 95% t-interval and wins of ``a_i - b_i``.

    Raises
    ------
    ValueError
        ``a`` and ``b`` differ in length or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty sequences, "
                         f"got {len(a)} and {len(b)} values")  # fmt: skip
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(d)
    half = float(stats.t.ppf(0.975, len(d) - 1)) * std / math.sqrt(len(d)) if len(d) > 1 else 0
    return PairedDifference(
        n=len(d), mean=mean, std=std, ci_low=mean - half, ci_high=mean + half,
        wins=sum(x > 0 for x in d),
    )  # fmt: skip
