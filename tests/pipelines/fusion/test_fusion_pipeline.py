"""The fusion pipeline under SequentialRunner on the ``--env test`` parameters (conf/base
soft-merged with conf/test, as ``kedro run --env test`` reads them), with the project's
catalog entries rooted in a temp folder: real relations and a golden metrics file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fusion_env import load_env_params
from kedro.runner import SequentialRunner

from conftest import pipeline_catalog
from weightspace.errors import InvalidParameterError
from weightspace_kedro.pipelines.fusion.pipeline import create_pipeline

GOLDEN = Path(__file__).with_name("golden_metrics_test.json")
ACC_TOL = 0.02
"""Absolute tolerance on accuracies (other CPUs round differently); counts are exact."""


def _catalog(params: dict):
    return pipeline_catalog("fusion", params)


def _is_timing(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf.endswith("_seconds") or leaf == "fusion_cost_ratio"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the zoo + fusion pipeline in a temp project folder."""
    root = tmp_path_factory.mktemp("fusion")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        catalog = _catalog(load_env_params("test"))
        SequentialRunner().run(create_pipeline(), catalog)
        metrics = catalog.load("fusion.metrics")
    return root, metrics


def test_outputs_are_written(run):
    root, metrics = run
    out = root / "data/08_reporting/fusion"
    assert {p.name for p in out.iterdir()} >= {
        "metrics.json", "tables.md", "experiments.json", "accuracy_vs_k.png",
        "finetune_curves.png",
    }  # fmt: skip
    assert (root / "data/06_models/fusion/clafusion_pairs.safetensors").stat().st_size > 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    tables = (out / "tables.md").read_text()
    assert "| mlp_digits | 4 |" in tables and "| mlp_teacher_student | Best |" in tables


def test_real_relations_on_digits(run):
    _, m = run
    # OTFusion aligns neurons before averaging: far better than vanilla averaging of the
    # same two same-depth MLPs.
    assert m["mlp_digits.otfusion_acc"] > m["mlp_digits.vanilla_avg_acc"] + 0.1
    for init in ("parent_a", "parent_b", "clafusion", "depth_aligned_b"):
        assert m[f"mlp_digits.{init}_finetuned_acc"] > 0.5, init
    # fine-tuning the one-shot fused model improves it; the headline is unprefixed
    assert m["mlp_digits.clafusion_finetuned_acc"] > m["mlp_digits.clafusion_acc"]
    assert m["clafusion_acc"] == m["mlp_digits.clafusion_acc"]
    # the fused student has the teacher's depth and the student's widths: more
    # parameters than the student, and its KD run starts from a better point than random
    ts = "mlp_teacher_student"
    assert m[f"{ts}.n_params_student"] < m[f"{ts}.n_params_fused_student"]
    assert m[f"{ts}.kd_fused_best_acc"] > m[f"{ts}.kd_random_fused_best_acc"]


def test_metrics_match_the_golden_file(run):
    _, metrics = run
    golden = json.loads(GOLDEN.read_text())
    assert sorted(k for k in metrics if not _is_timing(k)) == sorted(golden)
    off = {
        k: (metrics[k], v)
        for k, v in golden.items()
        if abs(metrics[k] - v) > (ACC_TOL if k.endswith("_acc") else 0.0)
    }
    assert not off, f"metrics moved from {GOLDEN.name}: {off}"


def test_a_misspelled_key_fails_in_the_first_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_env_params("test")
    params["fusion"]["settings"]["finetune"]["lrr"] = 0.1
    with pytest.raises(InvalidParameterError) as info:
        SequentialRunner().run(create_pipeline(), _catalog(params))
    message = str(info.value)
    assert "'fusion.settings.finetune.lrr'" in message
    assert "parameters_fusion.yml" in message
    assert not (tmp_path / "data/03_primary/zoo_fusion").exists()  # no zoo was trained


def test_the_pipeline_nodes_and_outputs():
    pipeline = create_pipeline()
    names = [n.name for n in pipeline.nodes]
    assert names[0] == "fusion.build_settings"  # runs before the zoo is trained
    assert {
        "fusion.collect_parents", "fusion.fuse_one_shot", "fusion.finetune_inits",
        "fusion.fusion_cost", "fusion.distill_students", "fusion.report_fusion",
        "zoo_fusion.train_zoo",
    } <= set(names)  # fmt: skip
    assert {"fusion.node_seconds", "params:fusion.settings", "params:zoo_fusion.grid"} <= (
        pipeline.inputs()
    )
    assert {"fusion.metrics", "fusion.tables", "fusion.plot_accuracy_vs_k"} <= (
        pipeline.all_outputs()
    )
