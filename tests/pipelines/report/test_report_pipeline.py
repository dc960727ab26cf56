"""The report pipeline with SequentialRunner on the project catalog (``--env test`` paths,
under a temp folder): all five methods from their golden metrics, cards with commit and
config hash, the clear error for an absent method, catalog pattern resolution, and the
provenance record and its hash."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner

from conftest import merged_params
from weightspace.errors import MissingPipelineOutputError
from weightspace.reporting.comparison import METHODS
from weightspace.reporting.model_card import UNKNOWN
from weightspace_kedro.hooks import WeightspaceHooks
from weightspace_kedro.pipelines.report.pipeline import create_pipeline
from weightspace_kedro.provenance import (
    config_hash,
    git_state,
    provenance_record,
    save_provenance,
)

ROOT = Path(__file__).resolve().parents[3]
OUT = Path("data/test/08_reporting")


def project_catalog(params: dict) -> DataCatalog:
    """The whole project catalog as ``--env test`` resolves it, plus the parameters."""
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="test")
    catalog = DataCatalog.from_config(loader["catalog"])
    catalog["params:report.settings"] = MemoryDataset(params["report"]["settings"])
    return catalog


def seed_outputs(catalog: DataCatalog, without_provenance: str = "superweights") -> None:
    """Each method's golden metrics, and a provenance record for all but one."""
    for i, m in enumerate(METHODS):
        golden = ROOT / f"tests/pipelines/{m}/golden_metrics_test.json"
        catalog.save(f"{m}.metrics", json.loads(golden.read_text()))
        if m != without_provenance:
            catalog.save(f"{m}.provenance", {
                "pipeline": m, "git_commit": f"{i}" * 40, "git_dirty": False,
                "config_hash": f"{i}" * 64, "params": [], "parameters": {},
                "kedro_env": "test", "versions": {"torch": "x"},
            })  # fmt: skip


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_report(catalog: DataCatalog, env: str = "test") -> None:
    pipeline = create_pipeline()
    WeightspaceHooks().before_pipeline_run({"env": env}, pipeline, catalog)
    SequentialRunner().run(pipeline, catalog)


def test_report_lists_every_method_with_cards_and_provenance(workdir):
    catalog = project_catalog(merged_params("test"))
    seed_outputs(catalog)
    run_report(catalog)
    out = workdir / OUT / "report"
    md = (out / "comparison.md").read_text()
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert {r["method"] for r in rows} == set(METHODS)
    for i, m in enumerate(METHODS):
        card = (out / "cards" / f"{m}.md").read_text()
        if m == "superweights":  # no provenance: said, not crashed
            assert f"git commit: {UNKNOWN}" in card and f"config hash: {UNKNOWN}" in card
        else:
            assert f"`{str(i) * 40}`" in card and f"`{str(i) * 64}`" in card
            assert f"| {str(i) * 10} | {str(i) * 12} |" in md
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_methods"] == 5 and metrics["n_methods_with_provenance"] == 4
    assert metrics["n_rows"] == len(rows) and metrics["n_commits"] == 4
    assert "different commits" in md
    for plot in ("accuracy_vs_obtain_cost", "accuracy_vs_inference_cost"):
        assert (out / f"{plot}.png").stat().st_size > 10_000


def test_absent_method_names_the_pipeline_to_run(workdir):
    catalog = project_catalog(merged_params("test"))
    seed_outputs(catalog)
    (workdir / OUT / "distill" / "metrics.json").unlink()
    (workdir / OUT / "fusion" / "metrics.json").unlink()
    with pytest.raises(MissingPipelineOutputError) as err:
        run_report(catalog)
    text = str(err.value)
    assert "distill: `kedro run --pipelines=distill --env test`" in text
    assert "fusion: `kedro run --pipelines=fusion --env test`" in text
    assert "weightformer" not in text.split("run first")[1]
    assert not (workdir / OUT / "report" / "comparison.md").exists()


def test_absent_method_is_a_not_run_row_when_not_required(workdir):
    params = merged_params("test")
    params["report"]["settings"] = {**params["report"]["settings"], "require_all": False}
    catalog = project_catalog(params)
    seed_outputs(catalog)
    (workdir / OUT / "distill" / "metrics.json").unlink()
    run_report(catalog, env="local")
    out = workdir / OUT / "report"
    md = (out / "comparison.md").read_text()
    assert "| distill | not run |" in md and "`kedro run --pipelines=distill`" in md
    assert not (out / "cards" / "distill.md").exists()
    assert json.loads((out / "metrics.json").read_text())["n_methods_not_run"] == 1


def test_catalog_patterns_resolve_to_the_right_datasets():
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="test")
    catalog = DataCatalog.from_config(loader["catalog"])
    prov = catalog.get("fusion.provenance")
    assert type(prov).__name__ == "JSONDataset"
    assert str(prov._filepath).endswith("data/test/08_reporting/fusion/provenance.json")
    assert type(catalog.get("zoo_fusion.zoo_models")).__name__ == "ZooDataset"
    assert str(catalog.get("fusion.metrics")._filepath).endswith("fusion/metrics.json")
    assert str(catalog.get("report.provenance")._filepath).endswith("report/provenance.json")
    assert type(catalog.get("report.plot_x")).__name__ == "MatplotlibDataset"
    assert type(catalog.get("fusion.node_seconds")).__name__ == "NodeTimingsDataset"


def _tiny(catalog_params: dict) -> tuple[Pipeline, DataCatalog]:
    pipeline = Pipeline([Node(lambda a, s: a, ["params:a", "params:seed"], "x", name="n")])
    catalog = DataCatalog({f"params:{k}": MemoryDataset(v) for k, v in catalog_params.items()})
    return pipeline, catalog


def test_config_hash_follows_read_parameters_only(tmp_path):
    def record(params: dict) -> dict:
        pipeline, catalog = _tiny(params)
        return provenance_record("tiny", pipeline, catalog, tmp_path, "test", False)

    base = record({"a": {"lr": 0.1}, "seed": 0, "unread": 1})
    assert base["params"] == ["params:a", "params:seed"]  # threads/device unset: left out
    assert base["config_hash"] == config_hash({"params:a": {"lr": 0.1}, "params:seed": 0})
    assert record({"a": {"lr": 0.1}, "seed": 0, "unread": 2})["config_hash"] == base["config_hash"]
    assert record({"a": {"lr": 0.2}, "seed": 0, "unread": 1})["config_hash"] != base["config_hash"]
    assert record({"a": {"lr": 0.1}, "seed": 1, "unread": 1})["config_hash"] != base["config_hash"]
    assert (base["git_commit"], base["git_dirty"]) == (None, None)  # tmp_path: no git
    assert base == record({"a": {"lr": 0.1}, "seed": 0, "unread": 1})  # no timestamps


def test_provenance_is_saved_through_the_catalog(workdir, repo_root):
    pipeline, catalog = _tiny({"a": 1, "seed": 0})
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="test")
    catalog["tiny.provenance"] = DataCatalog.from_config(loader["catalog"]).get("tiny.provenance")
    run_params = {"pipeline_names": None, "project_path": str(repo_root), "env": "test"}
    # __default__ (no --pipelines): every registered pipeline, here the one
    save_provenance(run_params, catalog, {"tiny": pipeline, "__default__": pipeline})
    saved = json.loads((workdir / OUT / "tiny" / "provenance.json").read_text())
    assert saved["git_commit"] == git_state(repo_root)[0] and len(saved["git_commit"]) == 40
    assert saved["params"] == ["params:a", "params:seed"] and saved["kedro_env"] == "test"
    assert saved["config_hash"] == config_hash({"params:a": 1, "params:seed": 0})
    assert set(saved["versions"]) == {"weightspace", "torch", "kedro", "python"}
    assert saved["partial_run"] is False and not (workdir / OUT / "__default__").exists()
