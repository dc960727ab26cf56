"""WeightFormer: ``kedro run --pipelines=weightformer`` (meta-ensemble parameter learning)."""

from weightspace_kedro.pipelines.weightformer.pipeline import create_pipeline

__all__ = ["create_pipeline"]
