"""The vectorize pipeline: zoo checkpoints -> weight matrices, chunks, normalization."""

from weightspace_kedro.pipelines.vectorize.pipeline import create_pipeline

__all__ = ["create_pipeline"]
