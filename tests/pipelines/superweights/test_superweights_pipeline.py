"""The superweights pipeline under SequentialRunner on the ``--env test`` parameters: the
outputs, the keys the issue asks for, relations between them, a golden metrics file, and
bad settings failing in the first node."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kedro.runner import SequentialRunner

from conftest import merged_params, pipeline_catalog
from weightspace.errors import InvalidParameterError
from weightspace_kedro.pipelines.superweights.pipeline import create_pipeline

GOLDEN = Path(__file__).with_name("golden_metrics_test.json")
TOL = 0.02
"""Absolute tolerance on accuracies and losses (other CPUs round differently)."""
KEYS = ["single_acc", "de_acc", "de_params", "be_acc", "be_params"]
KEYS += [
    f"swn_{kind}_{budget}_{m}"
    for kind in ("ho", "he_width")
    for budget in ("q25", "q50", "q80")
    for m in ("acc", "nll", "ece", "params", "diversity")
]
PLOTS = ("anytime", "sensitivity", "interpolation", "clusters")


def _is_timing(key: str) -> bool:
    return "seconds" in key


def _catalog(params: dict):
    return pipeline_catalog("superweights", params)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("superweights")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        catalog = _catalog(merged_params("test"))
        SequentialRunner().run(create_pipeline(), catalog)
        return root, catalog.load("superweights.metrics")


def test_outputs_and_keys(run):
    root, metrics = run
    out = root / "data/08_reporting/superweights"
    expected = {"metrics.json", "tables.md", *(f"{p}.png" for p in PLOTS)}
    assert {p.name for p in out.iterdir()} >= expected
    assert (root / "data/07_model_output/superweights/result.json").exists()
    assert not [k for k in KEYS if k not in metrics]
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    tables = (out / "tables.md").read_text()
    assert "±" in tables


def test_relations(run):
    root, m = run
    result = json.loads((root / "data/07_model_output/superweights/result.json").read_text())
    for kind in ("ho", "he_width"):
        de = result["de_params"][kind]
        for budget, fraction in (("q25", 0.6), ("q50", 0.7), ("q80", 0.8)):
            assert m[f"swn_{kind}_{budget}_params"] <= fraction * de
    assert m["de_params"] == result["de_params"]["ho"]
    for name in ("single", "de", "be"):
        assert 0 <= m[f"{name}_acc"] <= 1 and m[f"{name}_nll"] > 0
    # every anytime curve has 2^N - 1 subsets for an N-member ensemble (BE: N prefixes)
    n = 3
    assert len(result["anytime"]["de_ho"]) == 2**n - 1
    assert len(result["anytime"]["be"]) == n


def test_metrics_match_the_golden_file(run):
    _, metrics = run
    golden = json.loads(GOLDEN.read_text())
    assert sorted(k for k in metrics if not _is_timing(k)) == sorted(golden)
    off = {k: (metrics[k], v) for k, v in golden.items() if abs(metrics[k] - v) > TOL}
    assert not off, f"metrics moved from {GOLDEN.name}: {off}"


def test_a_bad_setting_fails_in_the_first_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = merged_params("test")
    params["superweights"]["settings"]["protocol"]["kinds"] = ["ho", "mixed"]
    with pytest.raises(InvalidParameterError, match="mixed"):
        SequentialRunner().run(create_pipeline(), _catalog(params))
    params = merged_params("test")
    params["superweights"]["settings"]["protocol"]["train"]["tau"] = 1.5
    with pytest.raises(InvalidParameterError, match="tau"):
        SequentialRunner().run(create_pipeline(), _catalog(params))
    assert not (tmp_path / "data/07_model_output").exists()
