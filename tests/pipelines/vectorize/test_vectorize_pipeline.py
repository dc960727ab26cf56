"""The vectorize pipeline under SequentialRunner on a tiny zoo: exact round trips."""

from __future__ import annotations

import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.partitions import PartitionedDataset

from conftest import load_params
from weightspace.data import load_dataset
from weightspace.weights import WeightSet
from weightspace.zoo import ZooRunOptions, expand_grid, train_zoo
from weightspace_kedro.pipelines.vectorize.pipeline import create_pipeline


def test_vectorize_pipeline_round_trips(tmp_path):
    digits = load_dataset("digits")
    grid = {
        "tasks": [{"dataset": "digits"}, {"dataset": "digits", "classes": [0, 1, 2]}],
        "architectures": [
            {"name": "mlp", "config": {"hidden": [8]}},
            {"name": "vgg", "config": {"stages": [[4]], "norm": "batch"}},
        ],
        "seeds": 2,
        "train": {"epochs": 1},
    }
    members = expand_grid(grid, {"digits": digits.n_classes})
    zoo, _ = train_zoo(members, {"digits": digits}, options=ZooRunOptions("cpu", progress=False))
    zoo.save(tmp_path / "zoo")
    params = load_params("test", "vectorize")["vectorize"]["settings"]
    weight_sets = PartitionedDataset(
        path=str(tmp_path / "vectorize"),
        dataset="weightspace_kedro.datasets.TensorBundleDataset",
        filename_suffix=".safetensors",
    )
    catalog = DataCatalog(
        datasets={"zoo.zoo_models": MemoryDataset(zoo, copy_mode="assign"),
                  "params:vectorize.settings": MemoryDataset(params),
                  "vectorize.weight_sets": weight_sets,
                  "vectorize.metrics": MemoryDataset()}
    )  # fmt: skip
    SequentialRunner().run(create_pipeline(), catalog)
    bundles = catalog.load("vectorize.weight_sets")
    assert len(bundles) == 4  # 2 architectures x 2 class counts
    metrics = catalog.load("vectorize.metrics")
    assert metrics["n_models"] == len(members)
    assert metrics["max_roundtrip_error_vectorize"] == 0.0
    assert metrics["max_roundtrip_error_chunk"] == 0.0
    assert metrics["max_roundtrip_error_normalize"] < 1e-6

    # Through the on-disk format and back, then decode chunks to the exact checkpoints.
    for name, load in bundles.items():
        ws = WeightSet.from_bundle(load())
        assert name.startswith(("mlp_in1x8x8_c", "vgg_in1x8x8_c"))
        decoded = ws.decode(ws.chunks)
        stacked = zoo.stack(list(ws.model_ids))
        for key, value in decoded.items():
            torch.testing.assert_close(value, stacked[key], rtol=0, atol=1e-6)
        assert ws.chunks.shape[:2] == (len(ws.model_ids), ws.layout.num_chunks)
