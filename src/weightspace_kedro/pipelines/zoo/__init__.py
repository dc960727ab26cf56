"""The zoo pipeline: train (or resume) a grid of models on the embedded datasets."""

from weightspace_kedro.pipelines.zoo.pipeline import create_pipeline

__all__ = ["create_pipeline"]
