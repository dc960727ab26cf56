"""The SuperWeights report from a hand-made result dict: means and stds by hand, key names,
the tables' shape, the figures' axes and lines, and missing optional parts."""

from __future__ import annotations

import copy
import math

import pytest
from matplotlib.figure import Figure

from weightspace.errors import InvalidParameterError
from weightspace.reporting import superweights_report as sr

KINDS = ("ho", "he_width", "he_depth_width")
BUDGETS = ("q25", "q50", "q80")
DE_PARAMS = {"ho": 4000, "he_width": 2800, "he_depth_width": 3200}


def _row(method, kind, budget, variant, seed, acc, params, diversity=None, seconds=1.0):
    return {
        "method": method, "kind": kind, "budget": budget, "variant": variant, "seed": seed,
        "acc": acc, "nll": 1.0 - acc, "ece": 0.1 * (1.0 - acc), "params": params,
        "diversity": diversity, "member_acc_mean": None if diversity is None else acc - 0.05,
        "flops": 2.0e6, "train_seconds": seconds,
    }  # fmt: skip


def _rows(seeds=(0, 1)):
    rows = []
    for s in seeds:
        d = 0.01 * s  # seed 1 is one point better everywhere
        rows.append(_row("single", "ho", None, None, s, 0.80 + d, 1000))
        rows.append(_row("be", "ho", None, None, s, 0.82 + d, 1100, diversity=0.40))
        for kind in KINDS:
            rows.append(_row("de", kind, None, None, s, 0.86 + d, DE_PARAMS[kind], 0.88))
        for i, budget in enumerate(BUDGETS):
            frac = (0.25, 0.5, 0.8)[i]
            for j, kind in enumerate(KINDS):
                acc = 0.83 + 0.01 * i + 0.002 * j + d
                rows.append(
                    _row("swn", kind, budget, "learned", s, acc, int(frac * DE_PARAMS[kind]), 0.7)
                )
            rows.append(_row("swn", "ho", budget, "one_sw", s, 0.82 + 0.01 * i + d, 1000 + i))
            rows.append(_row("swn", None, budget, "npas", s, 0.78 + d, 300 * (i + 1)))
            rows.append(_row("single", None, budget, "narrow", s, 0.76 + d, 300 * (i + 1)))
        for v in ("-0.5", "0.1", "0.5", "1e-3"):
            rows.append(_row("swn", "he_width", "q25", f"tau={v}", s, 0.84 + d, 700))
        for v in ("0.1", "0.9"):
            rows.append(_row("swn", "he_width", "q25", f"beta={v}", s, 0.845 + d, 700))
        rows.append(_row("swn", "he_width", "q25", "not_shared", s, 0.83 + d, 800))
        rows.append(_row("swn", "he_width", "q25", "shared", s, 0.835 + d, 650))
    return rows


def _anytime(n_members, flops_each):
    points = []
    for mask in range(1, 2**n_members):
        members = [i for i in range(n_members) if mask >> i & 1]
        acc = 0.7 + 0.03 * len(members) + 0.001 * members[0]
        flops = sum(flops_each[i] for i in members)
        points.append({"members": members, "flops": flops, "acc": acc, "nll": 1 - acc, "ece": 0.02})
    return points


def _result(seeds=(0, 1)):
    return {
        "rows": _rows(seeds),
        "de_params": dict(DE_PARAMS),
        "anytime": {
            "de_ho": _anytime(3, [1e6, 1e6, 1e6]),
            "swn_he_width_q25": _anytime(3, [2e6, 1e6, 0.5e6]),
            "be": _anytime(2, [1e6, 1e6]),
        },
        "anytime_seconds": {"de_ho": [0.01 * (i + 1) for i in range(7)]},
        "interpolation": {
            "de_ho": [[0.0, 0.86], [0.5, 0.30], [1.0, 0.84]],
            "swn_ho_q25": [[1.0, 0.83], [0.0, 0.85], [0.5, 0.60]],
        },
        "clusters": {
            "swn_he_depth_width_q50": {
                "members": [["l0", "l1", "l2", "l3"], ["l0", "l1"]],
                "cluster": {"0/l0": 0, "0/l1": 3, "0/l2": 0, "0/l3": 7, "1/l0": 3, "1/l1": 7},
            },
            "swn_ho_q25": {
                "members": [["a", "b"], ["a", "b"]],
                "cluster": {"0/a": 1, "0/b": 2, "1/a": 1, "1/b": 2},
            },
        },
    }


@pytest.fixture(scope="module")
def report():
    return sr.assemble_report(_result(), node_seconds={"train_swn": 12.5, "evaluate": 3.0})


def test_means_and_stds_by_hand(report):
    m = report[0]
    assert m["n_seeds"] == 2.0
    assert m["single_acc"] == pytest.approx(0.805)
    assert m["single_acc_std"] == pytest.approx(math.sqrt(2 * 0.005**2))  # ddof = 1
    # he_width, q50: i = 1, j = 1 -> 0.842 and 0.852
    assert m["swn_he_width_q50_acc"] == pytest.approx(0.847)
    assert m["swn_he_width_q50_acc_std"] == pytest.approx(0.01 / math.sqrt(2))
    assert m["swn_he_width_q50_nll"] == pytest.approx(0.153)
    assert m["swn_he_width_q50_params"] == 1400.0
    assert m["swn_he_width_q50_de_fraction"] == pytest.approx(0.5)
    assert m["swn_ho_q25_diversity"] == pytest.approx(0.7)
    assert m["swn_ho_q25_diversity_std"] == 0.0
    assert m["de_acc"] == m["de_ho_acc"] == pytest.approx(0.865)
    assert m["de_params"] == 4000.0 and m["de_he_width_params"] == 2800.0
    assert m["be_params"] == 1100.0 and m["be_diversity"] == pytest.approx(0.4)
    assert m["swn_one_sw_q50_params"] == 1001.0
    assert m["npas_q80_params"] == m["narrow_q80_params"] == 900.0
    assert m["narrow_q25_acc"] == pytest.approx(0.765)
    assert m["swn_ho_q25_train_seconds"] == 1.0


def test_key_names(report):
    m = report[0]
    for kind in KINDS:
        for budget in BUDGETS:
            for field in ("acc", "nll", "ece", "params", "diversity"):
                assert f"swn_{kind}_{budget}_{field}" in m
        assert f"de_{kind}_diversity" in m
    for budget in BUDGETS:
        for field in ("acc", "nll", "ece", "params"):
            assert f"swn_one_sw_{budget}_{field}" in m
    sensitivity = [
        "swn_tau_m0p5_acc",
        "swn_tau_0p1_acc",
        "swn_tau_1em3_acc",
        "swn_tau_0p5_ece",
        "swn_beta_0p9_nll",
    ]
    sensitivity += ["swn_not_shared_acc", "swn_shared_acc", "swn_shared_nll"]
    for key in [*sensitivity, "single_acc", "be_acc", "de_acc"]:
        assert key in m, key
    assert not any("." in k or "-" in k or "=" in k for k in m)
    assert "single_diversity" not in m  # None is dropped, not written as NaN
    assert "swn_one_sw_q25_diversity" not in m


def test_every_metric_is_a_finite_float(report):
    for key, value in report[0].items():
        assert type(value) is float and math.isfinite(value), key


def test_anytime_interpolation_cluster_metrics(report):
    m = report[0]
    assert m["anytime_de_ho_n_subsets"] == 7.0
    assert m["anytime_be_n_subsets"] == 3.0
    assert m["anytime_de_ho_full_acc"] == pytest.approx(0.79)
    assert m["anytime_de_ho_full_seconds"] == pytest.approx(0.07)
    assert "anytime_be_full_seconds" not in m
    assert m["anytime_swn_he_width_q25_cheapest_acc"] == pytest.approx(0.732)  # member 2
    assert m["interp_de_ho_end_acc"] == pytest.approx(0.85)
    assert m["interp_de_ho_dip"] == pytest.approx(0.55)
    assert m["interp_swn_ho_q25_min_acc"] == pytest.approx(0.60)
    assert m["clusters_swn_he_depth_width_q50_n_clusters"] == 3.0
    assert m["clusters_swn_he_depth_width_q50_n_layers"] == 6.0


def test_tables(report):
    tables = report[1]
    for header in ("## Table 5", "## Table 2", "## Table 3", "## Figure 4", "parameter allocation",
                   "## Cost", "## Stage wall times"):  # fmt: skip
        assert header in tables, header
    assert "| Method | Params | ACC (%) | NLL | ECE (%) |" in tables
    assert "| Method | Params | ACC (%) | Diversity | mean member ACC (%) |" in tables
    assert "| Method | q25 | q50 | q80 | reference |" in tables
    assert "| Single model | 1,000 | 80.50 ± 0.71 | 0.195 ± 0.007 | 1.95 ± 0.07 |" in tables
    assert "| SWN-HO (q25) | 1,000 | 83.50 ± 0.71 |" in tables
    assert "| Deep ensemble | 4,000 | 86.50 ± 0.71 | 0.880 ± 0.000 |" in tables
    assert "| SWN one SuperWeight per layer (HO) | 82.50 ± 0.71 (1,000) |" in tables
    assert "| SWN gradient clusters (HE multi-width) | 83.70 ± 0.71 (700) |" in tables
    assert "| Deep ensemble | - | - | - | 86.50 ± 0.71 (4,000) |" in tables
    for label in ("τ = -0.5", "τ = 0.1", "τ = 0.5", "β = 0.1", "β = 0.9",
                  "coefficients not shared", "fully shared"):  # fmt: skip
        assert f"| {label} |" in tables, label
    assert tables.index("τ = -0.5") < tables.index("τ = 0.001") < tables.index("τ = 0.1")
    assert tables.index("τ = 0.1") < tables.index("τ = 0.5")
    assert "| q50 | 600 | 78.50 ± 0.71 | 600 | 76.50 ± 0.71 | +2.00 |" in tables
    assert "| train_swn | 12.5 |" in tables
    assert tables.count("±") > 50


def test_figures(report):
    figs = report[2]
    assert set(figs) == {"anytime", "sensitivity", "interpolation", "clusters"}
    assert all(isinstance(f, Figure) for f in figs.values())
    flops_ax, seconds_ax = figs["anytime"].axes
    assert flops_ax.get_xscale() == "log"
    assert len(flops_ax.lines) == 3 and len(flops_ax.collections) == 3  # frontier + all subsets
    assert len(seconds_ax.lines) == 1  # only de_ho has measured times
    de = next(line for line in flops_ax.lines if line.get_label() == "de_ho")
    x, y = de.get_data()
    assert list(x) == [1e6, 2e6, 3e6]  # one point per FLOPs level, sorted
    assert list(y) == pytest.approx([73.2, 76.1, 79.0])  # the best subset at each level
    swn = next(line for line in flops_ax.lines if line.get_label() == "swn_he_width_q25")
    assert list(swn.get_ydata()) == sorted(swn.get_ydata())  # the anytime frontier
    beta_ax, tau_ax = figs["sensitivity"].axes
    assert len(beta_ax.lines) == 3 and len(tau_ax.lines) == 3  # sweep + not shared + shared
    assert list(tau_ax.lines[0].get_xdata()) == [-0.5, 0.001, 0.1, 0.5]
    (interp_ax,) = figs["interpolation"].axes
    assert len(interp_ax.lines) == 2
    assert list(interp_ax.lines[1].get_xdata()) == [0.0, 0.5, 1.0]  # sorted by t
    assert len(figs["clusters"].axes) == 4  # two panels, each with its colorbar
    image = figs["clusters"].axes[0].images[0].get_array()
    assert image.shape == (2, 4) and image.mask[1, 2] and image.mask[1, 3]
    assert [t.get_text() for t in figs["clusters"].axes[0].texts] == ["0", "3", "0", "7", "3", "7"]


def test_missing_optional_parts_and_one_seed():
    result = _result(seeds=(3,))
    result["rows"] = [
        r for r in result["rows"] if not str(r["variant"]).startswith(("tau", "beta"))
    ]
    result["rows"] = [r for r in result["rows"] if r["variant"] not in ("shared", "not_shared")]
    del result["anytime_seconds"], result["interpolation"], result["clusters"]
    result["anytime"] = {"be": [{"members": [0], "flops": 1e6, "acc": 0.8, "nll": 0.5, "ece": 0.1}]}
    metrics, tables, figs = sr.assemble_report(result)
    assert metrics["n_seeds"] == 1.0
    assert metrics["single_acc_std"] == 0.0 and metrics["single_acc"] == pytest.approx(0.83)
    assert not any(k.startswith(("swn_tau", "swn_beta", "swn_shared", "interp_")) for k in metrics)
    assert "## Stage wall times" not in tables and "± 0.00" in tables
    assert len(figs["anytime"].axes) == 1  # no seconds panel
    (line,) = figs["anytime"].axes[0].lines
    assert list(line.get_ydata()) == [80.0]
    assert [len(ax.lines) for ax in figs["sensitivity"].axes] == [0, 0]
    assert len(figs["interpolation"].axes[0].lines) == 0
    assert len(figs["clusters"].axes) == 1


def test_nan_values_are_dropped():
    result = _result()
    for row in result["rows"]:
        if row["method"] == "be":
            row["ece"] = math.nan
    metrics = sr.flat_metrics(result)
    assert "be_ece" not in metrics and "be_acc" in metrics


def test_bad_input_is_named():
    with pytest.raises(InvalidParameterError, match="no 'rows'"):
        sr.flat_metrics({"rows": []})
    bad = copy.deepcopy(_result())
    bad["rows"][0]["method"] = "mimo"
    with pytest.raises(InvalidParameterError, match="mimo"):
        sr.flat_metrics(bad)
    bad = copy.deepcopy(_result())
    del bad["clusters"]["swn_ho_q25"]["cluster"]["1/b"]
    with pytest.raises(InvalidParameterError, match="1/b"):
        sr.clusters_figure(bad)
    bad = copy.deepcopy(_result())
    bad["anytime_seconds"]["de_ho"] = [0.1]
    with pytest.raises(InvalidParameterError, match="one time per subset"):
        sr.anytime_figure(bad)
