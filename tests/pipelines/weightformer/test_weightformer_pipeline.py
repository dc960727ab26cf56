"""The weightformer pipeline under SequentialRunner on the ``--env test`` parameters: the
outputs, the keys the issue asks for, the split by checkpoint id, bad settings failing in
the first node."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kedro.runner import SequentialRunner

from conftest import merged_params, pipeline_catalog
from weightspace.errors import InvalidParameterError
from weightspace_kedro.pipelines.weightformer.pipeline import create_pipeline

METHODS = ("single", "ensemble", "kd", "kd_t0", "mlp", "wf", "wf_star")
KEYS = [f"{m}_{k}" for m in METHODS for k in ("acc", "ece", "nll")]
KEYS += ["wf_seconds_per_student", "kd_seconds_per_student", "wf_best_step"]
GOLDEN = Path(__file__).with_name("golden_metrics_test.json")
TOL = 0.02
"""Absolute tolerance on accuracies and losses (other CPUs round differently)."""


def _is_timing(key: str) -> bool:
    return key.endswith(("_seconds_per_student", "_cost_ratio"))


def _catalog(params: dict):
    return pipeline_catalog("weightformer", params)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("weightformer")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        catalog = _catalog(merged_params("test"))
        SequentialRunner().run(create_pipeline(), catalog)
        return root, catalog.load("weightformer.metrics")


def test_outputs_and_keys(run):
    root, metrics = run
    out = root / "data/08_reporting/weightformer"
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "tables.md", "teacher_number.png"}
    assert not [k for k in KEYS if k not in metrics]
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["n_sets"] == 2
    assert "curve_concatenate_3_acc" in metrics and "curve_heuristic_2_acc" in metrics
    tables = (out / "tables.md").read_text()
    header = "| metric | Single | Teacher 0 | Ensemble | KD | KD from teacher 0 | MLP | WF | WF* |"
    assert header in tables
    assert "- cross-layer flow" in tables and "- residual read-out" in tables


def test_saved_generators_rebuild_the_evaluated_ones(run, monkeypatch):
    """The bundle in data/06_models rebuilds WF exactly: same config, same layout, and the
    students it generates for the held-out sets score the accuracy the report holds."""
    from weightspace.config import from_mapping
    from weightspace.evaluation import weightformer_protocol as wp
    from weightspace.generators.weight_tokens import TokenLayout
    from weightspace.generators.weightformer import WeightFormer, WeightFormerConfig
    from weightspace.weights.stacking import stack_state_dicts
    from weightspace_kedro.pipelines.zoo.nodes import load_datasets

    root, metrics = run
    monkeypatch.chdir(root)  # the zoo reads its checkpoints relative to the project
    params = merged_params("test")
    catalog = _catalog(params)
    bundle = catalog.load("weightformer.generators")
    zoo = catalog.load("zoo_weightformer.zoo_models")
    data = load_datasets(params["zoo_weightformer"]["data"])["mnist1d"]
    meta = bundle["metadata"]
    held = meta["held_ids"]
    assert not set(held) & set(meta["train_ids"])
    template = zoo.module(held[0])
    layout = TokenLayout.from_module(template)
    assert meta["layout_fingerprint"] == layout.fingerprint
    wf = WeightFormer(layout, from_mapping(WeightFormerConfig, meta["configs"]["wf"]))
    prefix = "wf/"
    state = {k[len(prefix) :]: v for k, v in bundle["tensors"].items() if k.startswith(prefix)}
    wf.load_state_dict(state)
    pool = stack_state_dicts([zoo.state(m) for m in held], layout.spec)
    settings = from_mapping(wp.WeightFormerProtocol, meta["settings"]["protocol"])
    sets = wp.heldout_sets(len(held), settings)
    accs = [wp._generated_scores(wf, template, pool, i, data, 15)[0].acc for i in sets]
    assert sum(accs) / len(accs) == pytest.approx(metrics["wf_acc"], abs=1e-6)
    assert meta["best_step"]["wf"] == metrics["wf_best_step"]
    assert {"wf", "wf_star", "mlp", "wf_no_cross"} <= set(meta["best_step"])


def test_relations(run):
    _, m = run
    gap = m["ensemble_acc"] - m["single_acc"]
    if gap > 0:
        assert m["gap_closed"] == pytest.approx((m["wf_acc"] - m["single_acc"]) / gap)
    # every score is a probability or a positive loss
    for name in ("single", "ensemble", "kd", "kd_t0", "mlp", "wf", "wf_star"):
        assert 0 <= m[f"{name}_acc"] <= 1 and 0 <= m[f"{name}_ece"] <= 1
        assert m[f"{name}_nll"] > 0
    assert m["wf_seconds_per_student"] > 0 and m["kd_seconds_per_student"] > 0
    assert m["kd_vs_wf_cost_ratio"] == pytest.approx(
        m["kd_seconds_per_student"] / m["wf_seconds_per_student"]
    )


def test_metrics_match_the_golden_file(run):
    _, metrics = run
    golden = json.loads(GOLDEN.read_text())
    assert sorted(k for k in metrics if not _is_timing(k)) == sorted(golden)
    off = {k: (metrics[k], v) for k, v in golden.items() if abs(metrics[k] - v) > TOL}
    assert not off, f"metrics moved from {GOLDEN.name}: {off}"


def test_a_bad_setting_fails_in_the_first_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = merged_params("test")
    params["weightformer"]["settings"]["ablations"] = ["no_attention"]
    with pytest.raises(InvalidParameterError, match="unknown \\['no_attention'\\]"):
        SequentialRunner().run(create_pipeline(), _catalog(params))
    params = merged_params("test")
    params["weightformer"]["settings"]["model"]["max_teachers"] = 2
    with pytest.raises(InvalidParameterError, match="max_teachers \\(2\\) must be >="):
        SequentialRunner().run(create_pipeline(), _catalog(params))
    assert not (tmp_path / "data/03_primary/zoo_weightformer").exists()
