"""The zoo pipeline under SequentialRunner, on the test parameters, in a temp folder."""

from __future__ import annotations

import json

from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from conftest import load_params
from weightspace.zoo import Zoo
from weightspace_kedro.datasets import ZooDataset
from weightspace_kedro.pipelines.zoo.pipeline import zoo_pipeline


def _catalog(tmp_path, params: dict) -> DataCatalog:
    datasets = {
        "zoo.zoo_previous": ZooDataset(str(tmp_path / "zoo"), allow_missing=True),
        "zoo.zoo_models": ZooDataset(str(tmp_path / "zoo")),
    }
    for key in ("data", "grid", "run"):
        datasets[f"params:zoo.{key}"] = MemoryDataset(params["zoo"][key])
    return DataCatalog(datasets=datasets)


def test_zoo_pipeline_trains_then_resumes(tmp_path):
    params = load_params("test", "zoo")
    pipeline = zoo_pipeline("zoo")
    assert {n.name for n in pipeline.nodes} == {
        "zoo.load_datasets", "zoo.plan_members", "zoo.describe_data", "zoo.train_zoo",
        "zoo.report_zoo",
    }  # fmt: skip
    catalog = _catalog(tmp_path, params)
    SequentialRunner().run(pipeline, catalog)
    metrics = catalog.load("zoo.zoo_metrics")
    grid = params["zoo"]["grid"]
    n_models = len(grid["architectures"]) * len(grid["tasks"]) * grid["seeds"]
    assert metrics["n_models"] == n_models
    assert metrics["run_n_trained"] == n_models
    assert 0.0 < metrics["mean_test_accuracy"] <= 1.0
    assert metrics["train_seconds"] > 0 and metrics["models_per_second"] > 0
    assert json.dumps(metrics)  # flat, JSON-able numbers
    cards = catalog.load("zoo.zoo_dataset_cards")
    assert {c["name"] for c in cards["datasets"]} == {"digits", "mnist1d"}
    assert len(cards["tasks"]) == len(grid["tasks"])
    zoo = Zoo.load(tmp_path / "zoo")
    # snapshot_every=1 with 2 epochs: one trajectory checkpoint + the final one per member
    assert len(zoo) == 2 * n_models
    assert zoo.verify() == ([], [])

    catalog = _catalog(tmp_path, params)
    SequentialRunner().run(pipeline, catalog)
    again = catalog.load("zoo.zoo_metrics")
    assert again["run_n_trained"] == 0 and again["run_n_reused"] == n_models
    assert again["mean_test_accuracy"] == metrics["mean_test_accuracy"]
    assert again["train_seconds"] == metrics["train_seconds"]


def test_a_run_with_another_grid_in_the_same_folder_keeps_the_first_zoo(tmp_path):
    """Another environment's (or a smaller) grid writing the same folder deletes nothing:
    the first grid's checkpoints stay and its next run retrains none of them."""
    params = load_params("test", "zoo")
    pipeline = zoo_pipeline("zoo")
    SequentialRunner().run(pipeline, _catalog(tmp_path, params))
    files = sorted(p.name for p in (tmp_path / "zoo" / "checkpoints").iterdir())
    other = {**params["zoo"], "grid": {**params["zoo"]["grid"], "seeds": 1, "train": {
        **params["zoo"]["grid"]["train"], "lr": 0.02}}}  # fmt: skip
    catalog = _catalog(tmp_path, {"zoo": other})
    SequentialRunner().run(pipeline, catalog)
    n_other = catalog.load("zoo.zoo_metrics")["n_models"]
    assert n_other == len(params["zoo"]["grid"]["tasks"]) * len(
        params["zoo"]["grid"]["architectures"]
    )
    after = sorted(p.name for p in (tmp_path / "zoo" / "checkpoints").iterdir())
    assert set(files) <= set(after) and len(after) == len(files) + 2 * n_other
    catalog = _catalog(tmp_path, params)
    SequentialRunner().run(pipeline, catalog)
    again = catalog.load("zoo.zoo_metrics")
    assert again["run_n_trained"] == 0 and again["n_models"] == len(files) // 2
    assert Zoo.load(tmp_path / "zoo").verify() == ([], [])
