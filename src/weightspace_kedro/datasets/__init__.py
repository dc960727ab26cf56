"""Custom Kedro datasets: zoos (index + checkpoints) and safetensors bundles."""

from weightspace_kedro.datasets.tensor_bundle import TensorBundleDataset
from weightspace_kedro.datasets.zoo_dataset import ZooDataset

__all__ = ["TensorBundleDataset", "ZooDataset"]
