"""Ensemble distillation: ``kedro run --pipelines=distill`` (KD, BatchEnsemble, LatentBE)."""

from weightspace_kedro.pipelines.distill.pipeline import create_pipeline

__all__ = ["create_pipeline"]
