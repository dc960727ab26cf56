"""The whole D2NWG pipeline (both scenarios) under SequentialRunner on conf/test.

Checks the glue: both scenario instances of the template run from their zoos (through the
zoo template) to one merged report with the keys of ``metrics.json``; a rerun reuses the
saved zoos and reproduces every number; a misspelled parameter fails in the first node
with the key and the file.
"""

from __future__ import annotations

import time

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from conftest import merged_params
from weightspace.errors import InvalidParameterError
from weightspace.zoo import Zoo
from weightspace_kedro.datasets import NodeTimingsDataset, ZooDataset
from weightspace_kedro.pipelines.d2nwg.pipeline import create_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
ZOOS = ("zoo_d2nwg_backbones", "zoo_d2nwg_heads", "zoo_d2nwg_networks")


def _catalog(tmp_path, params: dict) -> DataCatalog:
    datasets = {}
    for ns in ZOOS:
        datasets[f"{ns}.zoo_previous"] = ZooDataset(str(tmp_path / ns), allow_missing=True)
        datasets[f"{ns}.zoo_models"] = ZooDataset(str(tmp_path / ns))
        for key, value in params[ns].items():
            datasets[f"params:{ns}.{key}"] = MemoryDataset(value)
    for ns in ("d2nwg_heads", "d2nwg_networks"):
        datasets[f"params:{ns}.settings"] = MemoryDataset(params[ns]["settings"])
        datasets[f"{ns}.node_seconds"] = NodeTimingsDataset(ns)
    return DataCatalog(datasets=datasets)


def _run(tmp_path, params: dict) -> tuple[dict, DataCatalog]:
    catalog = _catalog(tmp_path, params)
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog.load("d2nwg.metrics"), catalog


def _checkpoints_in(params: dict, folder) -> dict:
    """Generator training checkpoints under ``folder`` (not the project's data/)."""
    for ns in ("d2nwg_heads", "d2nwg_networks"):
        params[ns]["settings"]["generator"]["checkpoint_dir"] = str(folder)
    return params


def test_both_scenarios_run_resume_and_reproduce(tmp_path):
    params = _checkpoints_in(merged_params("test"), tmp_path / "generator_checkpoints")
    first, catalog = _run(tmp_path, params)
    # Scenario (a): 6 zoo tasks x 2 seeds of 3-way heads; seen/unseen/novel scored.
    assert first["n_zoo_heads"] == 12 and first["n_unseen_tasks"] == 2
    assert first["seen_zoo_mean_acc"] > 0.4  # 3-way: chance is 1/3
    assert first["backbone_digits_seen_test_acc"] > 0.2  # 7 seen classes, 2 epochs
    assert len(catalog.load("d2nwg.plot_finetune_curves").axes) >= 1
    # The method's sampling rules: its plain-sampling ablation and the known-class test.
    for g in ("seen", "unseen", "novel"):
        assert 0.0 <= first[f"{g}_plain_sampling_acc"] <= 1.0
        assert 0.0 <= first[f"{g}_no_identification_acc"] <= 1.0
        assert 0.0 <= first[f"{g}_known_task_share"] <= 1.0
    assert first["classwise_known_classes"] > 0 and first["classwise_novelty_tau"] > 0
    # Scenario (b): 3 datasets x 2 networks, prefixed keys.
    assert first["networks_n_zoo"] == 6 and first["networks_n_datasets"] == 3
    assert first["networks_zoo_mean_acc"] > 0.5  # 10 classes: chance is 0.1
    assert first["networks_retrieval_chance"] == pytest.approx(1 / 3)
    assert "networks_digits_rotate90_retrieval_accuracy" in first
    for ns in ZOOS:
        assert Zoo.load(tmp_path / ns).verify() == ([], [])
    # A second run reuses every saved checkpoint and reproduces every untimed number.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/checkpoints/*")}
    second, _ = _run(tmp_path, params)
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/checkpoints/*")}
    untimed = [k for k in first if "second" not in k and "speedup" not in k]
    assert {k: first[k] for k in untimed} == {k: second[k] for k in untimed}
    # The VAE and diffusion stages of both scenarios and the three class-wise diffusions
    # (method, two ablations) left checkpoints (the rerun resumed
    # from their final ones: same numbers).
    stages = {p.name.split("-")[0] for p in (tmp_path / "generator_checkpoints").iterdir()}
    assert stages == {"vae", "diffusion", "classwise_diffusion"}
    assert len(list((tmp_path / "generator_checkpoints").iterdir())) == 7


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("d2nwg_heads", "settings", "generator", "d2nwg", "vae", "latnet_dim"), 4,
         r"d2nwg_heads\.settings\.generator\.d2nwg\.vae\.latnet_dim"),
        (("d2nwg_networks", "settings", "evaluation", "shots"), "five",
         r"d2nwg_networks\.settings\.evaluation\.shots.*must be a int"),
        (("d2nwg_heads", "settings", "heads", "train", "lr"), -0.1, "lr must be > 0"),
        (("d2nwg_heads", "settings", "comparisons", "zoo_best_of"), 3,
         r"comparisons\.zoo_best_of \(3\) must be <= heads\.seeds \(2\)"),
    ],
)  # fmt: skip
def test_bad_parameter_fails_first_naming_key_and_file(tmp_path, path, value, match):
    params = _checkpoints_in(merged_params("test"), tmp_path / "generator_checkpoints")
    block = params
    for key in path[:-1]:
        block = block[key]
    block[path[-1]] = value
    start = time.perf_counter()
    with pytest.raises(InvalidParameterError, match=match) as info:
        _run(tmp_path, params)
    assert "parameters_d2nwg.yml" in str(info.value)
    assert time.perf_counter() - start < 30  # before any zoo is trained
    assert not (tmp_path / "zoo_d2nwg_heads").exists()
