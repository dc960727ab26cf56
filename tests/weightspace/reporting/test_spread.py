"""Spread helpers against hand-computed cases: mean ± std, cells, the paired comparison
and its verdict."""

from __future__ import annotations

import math

import pytest

from weightspace.reporting.spread import mean_std, paired_difference, pm_cell


def test_mean_std_by_hand():
    assert mean_std([1.0, 2.0, 3.0, 6.0]) == (3.0, pytest.approx(math.sqrt(14 / 3)))
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_pm_cell():
    metrics = {"acc": 0.9512, "acc_std": 0.0049, "nll": 0.25}
    assert pm_cell(metrics, "acc") == "95.12 ± 0.49"
    assert pm_cell(metrics, "nll", 1.0, 3) == "0.250"
    assert pm_cell(metrics, "ece") == "-"


def test_paired_difference_verdicts():
    # differences 0.02, 0.04, 0.03: mean 0.03, std 0.01, t(0.975, 2) = 4.302653
    better = paired_difference([0.92, 0.94, 0.93], [0.90, 0.90, 0.90])
    half = 4.302652730 * 0.01 / math.sqrt(3)
    assert (better.mean, better.std) == (pytest.approx(0.03), pytest.approx(0.01))
    assert (better.ci_low, better.ci_high) == (
        pytest.approx(0.03 - half),
        pytest.approx(0.03 + half),
    )
    assert better.wins == 3 and better.verdict == "better"
    worse = paired_difference([0.90, 0.90, 0.90], [0.92, 0.94, 0.93])
    assert worse.verdict == "worse" and worse.wins == 0
    mixed = paired_difference([0.91, 0.89, 0.93], [0.90, 0.90, 0.90])
    assert mixed.verdict == "within the spread" and mixed.wins == 2
    one = paired_difference([0.95], [0.90])  # one pair says nothing about the spread
    assert one.ci_low == one.ci_high == pytest.approx(0.05) and one.verdict == "within the spread"
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([0.9, 0.8], [0.9])
