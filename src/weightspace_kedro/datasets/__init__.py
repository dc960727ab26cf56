"""Custom Kedro datasets: zoos (index + checkpoints), safetensors bundles, node timings."""

from weightspace_kedro.datasets.node_timings import NodeTimingsDataset
from weightspace_kedro.datasets.tensor_bundle import TensorBundleDataset
from weightspace_kedro.datasets.zoo_dataset import ZooDataset

__all__ = ["NodeTimingsDataset", "TensorBundleDataset", "ZooDataset"]
