"""The cross-method comparison: every extractor against the golden metrics files (and the
base benchmark results, timing keys included), exact rows from a hand-built metrics dict,
markdown/CSV agreement, missing values, plots and model cards."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from conftest import merged_params
from weightspace.errors import MetricsKeyError
from weightspace.reporting import comparison as cmp
from weightspace.reporting.model_card import UNKNOWN, model_card

ROOT = Path(__file__).resolve().parents[3]


def golden(method: str) -> dict[str, float]:
    return json.loads((ROOT / f"tests/pipelines/{method}/golden_metrics_test.json").read_text())


def base_metrics(method: str) -> dict[str, float]:
    return json.loads((ROOT / f"benchmarks/results/{method}_base.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def test_params() -> dict:
    """``"distill.settings" -> {...}``: the parameters of a ``--env test`` run."""
    merged = merged_params("test")
    return {f"{a}.{b}": v for a, blk in merged.items() if isinstance(blk, dict)
            for b, v in blk.items()}  # fmt: skip


@pytest.mark.parametrize("method", cmp.METHODS)
def test_every_extractor_reads_its_golden_file(method, test_params):
    metrics = golden(method)
    rows = cmp.extract(method, metrics, test_params)
    assert len([r for r in rows if r.headline]) == 1
    for r in rows:
        assert r.method == method and "?" not in r.comparable_group
        assert r.accuracy == metrics[r.sources["accuracy"]]
        for name in ("nll", "ece", "cece", "n_parameters", "memorization"):
            src = r.sources.get(name)
            if src is not None:
                assert getattr(r, name) == metrics[src], (r.variant, name)


@pytest.mark.parametrize("method", cmp.METHODS)
def test_every_extractor_reads_the_base_run_timing_included(method):
    rows = cmp.extract(method, base_metrics(method), None, strict_timing=True)
    timed = [r for r in rows if r.seconds_to_obtain is not None]
    assert timed and all(r.seconds_to_obtain > 0 for r in timed)


@pytest.mark.parametrize("method", cmp.METHODS)
def test_a_vanished_key_names_method_and_key(method, test_params):
    metrics = golden(method)
    head = next(r for r in cmp.extract(method, metrics, test_params) if r.headline)
    key = head.sources["nll"] if "nll" in head.sources else head.sources["accuracy"]
    del metrics[key]
    with pytest.raises(MetricsKeyError, match=rf"{method} metrics.json has no .*{key}"):
        cmp.extract(method, metrics, test_params)


def test_a_missing_timing_key_is_strict_only_on_request():
    metrics = base_metrics("distill")
    del metrics["kd_train_seconds"]
    kd = next(r for r in cmp.extract("distill", metrics) if r.variant == "KD student")
    assert kd.seconds_to_obtain is None and "not timed" in kd.sources["seconds_to_obtain"]
    with pytest.raises(MetricsKeyError, match="kd_train_seconds"):
        cmp.extract("distill", metrics, strict_timing=True)


def hand_built_distill() -> dict[str, float]:
    """Distinct values for every key the distill extractor reads."""
    m: dict[str, float] = {}
    for i, name in enumerate(["de", "single", "kd", "be", "latentbe", "latentbe_ods"]):
        for j, stat in enumerate(["acc", "nll", "ece", "cece"]):
            m[f"{name}_{stat}"] = 0.1 * i + 0.01 * j
        m[f"{name}_params"] = 100.0 * (i + 1)
        m[f"{name}_forward_passes"] = 4.0 if name in ("de", "be") else 1.0
    m |= {"kd_train_seconds": 5.0, "be_train_seconds": 7.0, "be_ods_train_seconds": 9.0}
    return m


def test_hand_built_metrics_give_exact_rows():
    rows = cmp.extract("distill", hand_built_distill(), {"distill.settings": {"dataset": "x"}})
    assert [r.variant for r in rows] == [
        "deep ensemble (teachers)", "single teacher (mean of members)", "KD student",
        "BatchEnsemble one-to-one", "KD + LatentBE", "KD + LatentBE + ods",
    ]  # fmt: skip
    ods = rows[-1]
    assert (ods.accuracy, ods.nll, ods.ece, ods.cece) == (0.5, 0.51, 0.52, 0.53)
    # the perturbed LatentBE shares LatentBE's architecture; its BE's training time
    assert (ods.n_parameters, ods.forward_passes_per_prediction) == (500.0, 1.0)
    assert ods.seconds_to_obtain == 9.0 and ods.inference_cost == 500.0
    de = rows[0]
    assert de.seconds_to_obtain is None and de.inference_cost == 4 * 100.0
    assert {r.comparable_group for r in rows} == {"zoo_distill · x"}
    assert rows[4].headline and not any(r.headline for r in rows[:4] + rows[5:])


def test_best_of_k_time_is_k_samples_and_fixed_values_say_why():
    m = base_metrics("d2nwg")
    rows = cmp.extract("d2nwg", m)
    best = next(r for r in rows if r.headline)
    assert best.seconds_to_obtain == pytest.approx(
        m["sample_seconds_per_model"] * m["n_candidates"]
    )
    assert best.forward_passes_per_prediction == 1.0
    assert best.sources["forward_passes_per_prediction"] == "1: one network"
    assert best.nll is None and best.n_parameters is None  # not measured: no guess


def test_markdown_and_csv_agree_and_missing_is_a_dash(test_params):
    rows = [r for m in cmp.METHODS for r in cmp.extract(m, golden(m), test_params)]
    md, text = cmp.comparison_markdown(rows), cmp.comparison_csv(rows)
    table = [line for line in md.splitlines() if line.startswith("| G")]
    table = [line for line in table if line.count("|") > 5]  # not the legend
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == len(records) == len(rows)
    header = [h.strip() for h in md.splitlines()[4].strip("|").split("|")]
    for line, rec in zip(table, records, strict=True):
        cells = dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True))
        assert cells["group"] == rec["group"] and cells["method"] == rec["method"]
        for name, title in cmp.HEADERS.items():
            expected = cmp.MISSING if rec[name] == "" else cmp.fmt(name, float(rec[name]))
            assert cells[title] == expected, (rec["variant"], name)
    # weightformer measures no cECE: a dash in md, an empty cell in csv
    wf = next(r for r in records if r["method"] == "weightformer")
    assert wf["cece"] == "" and "| — |" in next(x for x in table if "weightformer" in x)
    # groups: rows of one group are contiguous, and different methods never share one here
    groups = [r["group"] for r in records]
    assert groups == sorted(groups, key=lambda g: int(g[1:]))
    assert len({(r["group"], r["method"]) for r in records}) == len(set(groups))


def test_not_run_rows_and_different_commits_are_called_out():
    rows = cmp.with_provenance(cmp.extract("distill", hand_built_distill()), "a" * 40, "h" * 64)
    other = cmp.with_provenance(cmp.extract("superweights", golden("superweights")), "b" * 40, None)
    md = cmp.comparison_markdown(
        [*rows, *other, cmp.not_run_row("fusion", "kedro run --pipelines=fusion")], ["fusion"]
    )
    assert "different commits (aaaaaaaaaa, bbbbbbbbbb)" in md
    assert "| fusion | not run |" in md and "`kedro run --pipelines=fusion`" in md
    assert "| hhhhhhhhhhhh |" in md and "| unknown |" in md  # superweights: no config hash


def test_plots_draw_every_method(tmp_path):
    rows = [r for m in cmp.METHODS for r in cmp.extract(m, base_metrics(m))]
    figures = cmp.plots(rows)
    assert set(figures) == {"accuracy_vs_obtain_cost", "accuracy_vs_inference_cost"}
    for name, fig in figures.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.stat().st_size > 10_000
        labels = fig.axes[0].get_legend_handles_labels()[1]
        if name == "accuracy_vs_obtain_cost":  # every method is timed in the base run
            assert sorted(label.split(":")[0] for label in labels) == sorted(cmp.METHODS)
    # no parameter count in weightformer's metrics: named as absent, not plotted
    assert "no value for: weightformer" in figures["accuracy_vs_inference_cost"].axes[0].get_title()


def test_model_card_names_provenance_or_says_unknown(test_params):
    rows = cmp.extract("weightformer", golden("weightformer"), test_params)
    card = model_card("weightformer", rows, None, None)
    assert card.count(UNKNOWN) >= 2 and "cECE" in card.split("Not measured")[1]
    prov = {"git_commit": "c" * 40, "git_dirty": True, "config_hash": "f" * 64,
            "params": ["params:weightformer.settings"], "kedro_env": "test",
            "versions": {"torch": "2"}}  # fmt: skip
    card = model_card("weightformer", rows, prov, test_params)
    assert f"`{'c' * 40}` (with uncommitted changes)" in card and f"`{'f' * 64}`" in card
    assert "`zoo_weightformer`: vgg" in card and UNKNOWN not in card
    assert "wf_acc" in card  # where each number comes from
