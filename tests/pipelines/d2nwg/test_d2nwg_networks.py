"""D2NWG scenario (b) (whole networks, model retrieval) under SequentialRunner, test params."""

from __future__ import annotations

from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from conftest import load_params
from weightspace.zoo import Zoo
from weightspace_kedro.datasets import ZooDataset
from weightspace_kedro.pipelines.d2nwg.pipeline import create_pipeline


def _run(tmp_path, params: dict) -> dict:
    pipeline = Pipeline(
        [n for n in create_pipeline().nodes if n.name.startswith("d2nwg.networks_")]
    )
    catalog = DataCatalog(
        datasets={
            "d2nwg.networks_previous": ZooDataset(str(tmp_path / "nets"), allow_missing=True),
            "d2nwg.networks_zoo": ZooDataset(str(tmp_path / "nets")),
            "params:d2nwg.settings": MemoryDataset(params["d2nwg"]["settings"]),
        }
    )
    SequentialRunner().run(pipeline, catalog)
    figure = catalog.load("d2nwg.plot_networks_accuracy")
    assert len(figure.axes) >= 2  # accuracy bars + retrieval confusion
    return catalog.load("d2nwg.networks_metrics")


def test_networks_scenario_runs_resumes_and_is_deterministic(tmp_path):
    params = load_params("test", "d2nwg")
    first = _run(tmp_path, params)
    assert all(k.startswith("networks_") for k in first)
    net = params["d2nwg"]["settings"]["networks"]
    n_datasets = 1 + len(net["tasks"][1]["transforms"])
    assert first["networks_n_datasets"] == n_datasets
    assert first["networks_n_zoo"] == n_datasets * len(net["train"]["lr"])
    for key in ("zoo_mean_acc", "sampled_mean_acc", "sampled_best_acc", "retrieval_accuracy"):
        assert 0.0 <= first[f"networks_{key}"] <= 1.0
        assert f"networks_digits_rotate90_{key}" in first
    assert first["networks_retrieval_chance"] == 1.0 / n_datasets
    zoo = Zoo.load(tmp_path / "nets")
    assert len(zoo) == first["networks_n_zoo"] and zoo.verify() == ([], [])
    # A second run reuses the saved zoo and reproduces every number but the timings.
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "nets/checkpoints").iterdir()}
    second = _run(tmp_path, params)
    assert stamps == {
        p.name: p.stat().st_mtime_ns for p in (tmp_path / "nets/checkpoints").iterdir()
    }
    untimed = [k for k in first if not k.endswith("seconds") and "per_model" not in k]
    assert {k: first[k] for k in untimed} == {k: second[k] for k in untimed}
