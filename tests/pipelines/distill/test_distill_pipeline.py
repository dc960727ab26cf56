"""The distill pipeline under SequentialRunner on the ``--env test`` parameters (conf/base
soft-merged with conf/test), with the project's catalog entries rooted in a temp folder:
the outputs, the metric keys the issue asks for, relations that hold whatever the seed,
a golden metrics file, and bad settings failing before any work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kedro.runner import SequentialRunner

from conftest import merged_params, pipeline_catalog
from weightspace.errors import InvalidParameterError
from weightspace_kedro.pipelines.distill.pipeline import create_pipeline

GOLDEN = Path(__file__).with_name("golden_metrics_test.json")
TOL = 0.02
"""Absolute tolerance on accuracies (other CPUs round differently)."""
METHODS = ("de", "single", "kd", "be", "latentbe", "latentbe_ods", "latentbe_confods")
REQUIRED = [
    f"{m}_{k}"
    for m in (*METHODS, "latentbe_tdiv_sdiv")
    for k in ("acc", "nll", "ece", "cnll", "cece")
] + [
    "latentbe_be_agreement",
    "de_inference_seconds_per_example",
    "be_inference_seconds_per_example",
    "latentbe_inference_seconds_per_example",
]


def _catalog(params: dict):
    return pipeline_catalog("distill", params)


def _is_timing(key: str) -> bool:
    return key.endswith(("_seconds", "_seconds_per_example", "_inference_ratio", "_vs_m_kd"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the zoo + distill pipeline in a temp project folder."""
    root = tmp_path_factory.mktemp("distill")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        catalog = _catalog(merged_params("test"))
        SequentialRunner().run(create_pipeline(), catalog)
        metrics = catalog.load("distill.metrics")
    return root, metrics


def test_outputs_are_written(run):
    root, metrics = run
    out = root / "data/08_reporting/distill"
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "tables.md", "reliability.png"}
    assert (root / "data/06_models/distill/latentbe_students.safetensors").stat().st_size > 0
    assert not [k for k in REQUIRED if k not in metrics]
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    tables = (out / "tables.md").read_text()
    assert "| DE-3 teacher |" in tables and "| + TDiv-SDiv |" in tables


def test_relations(run):
    _, m = run
    assert m["m"] == 3 and m["n_seeds"] == 2
    # one forward pass for the merged student, M for the DE and the BE
    assert m["latentbe_forward_passes"] == 1 and m["be_forward_passes"] == 3
    assert m["de_forward_passes"] == 3
    # the merged student has exactly the teachers' architecture
    assert m["latentbe_params"] == m["single_params"] == m["kd_params"]
    assert m["de_params"] == 3 * m["single_params"]
    assert m["be_params"] > m["single_params"]  # shared weights + fast weights
    for key in ("latentbe_be_agreement", "merge_mean_of_products_agreement"):
        assert 0.0 <= m[key] <= 1.0
    for name in METHODS:
        assert m[f"{name}_nll"] > 0 and 0 <= m[f"{name}_ece"] <= 1
    # Jensen: the log of the mean probability is at least the mean log probability, so
    # the DE's NLL never exceeds its members' mean NLL
    assert m["de_nll"] <= m["single_nll"]


def test_metrics_match_the_golden_file(run):
    _, metrics = run
    golden = json.loads(GOLDEN.read_text())
    assert sorted(k for k in metrics if not _is_timing(k)) == sorted(golden)
    off = {
        k: (metrics[k], v)
        for k, v in golden.items()
        if abs(metrics[k] - v) > (TOL if not k.endswith(("_params", "_passes")) else 0.0)
    }
    assert not off, f"metrics moved from {GOLDEN.name}: {off}"


def test_a_bad_setting_fails_in_the_first_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = merged_params("test")
    params["distill"]["settings"]["protocol"]["kd"]["temprature"] = 2.0
    with pytest.raises(InvalidParameterError) as info:
        SequentialRunner().run(create_pipeline(), _catalog(params))
    assert "'distill.settings.protocol.kd.temprature'" in str(info.value)
    assert "parameters_distill.yml" in str(info.value)
    params = merged_params("test")
    params["distill"]["settings"]["members"] = 1
    with pytest.raises(InvalidParameterError, match=r"members .* must be an integer >= 2"):
        SequentialRunner().run(create_pipeline(), _catalog(params))
    params = merged_params("test")
    params["distill"]["settings"]["members"] = 5
    with pytest.raises(InvalidParameterError, match="gives 3 seeds; train at least 5"):
        SequentialRunner().run(create_pipeline(), _catalog(params))
    assert not (tmp_path / "data/03_primary/zoo_distill").exists()  # no zoo was trained


def test_the_pipeline_nodes_and_outputs():
    pipeline = create_pipeline()
    names = [n.name for n in pipeline.nodes]
    assert names[0] == "distill.build_settings"
    assert {
        "distill.collect_teachers", "distill.distill_kd", "distill.distill_be",
        "distill.distill_be_ods", "distill.distill_be_confods", "distill.distill_be_tdiv_sdiv",
        "distill.evaluate", "distill.save_latentbe", "distill.report_distill",
        "zoo_distill.train_zoo",
    } <= set(names)  # fmt: skip
    assert {"distill.metrics", "distill.tables", "distill.plot_reliability"} <= (
        pipeline.all_outputs()
    )
