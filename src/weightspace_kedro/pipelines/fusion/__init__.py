"""The fusion pipeline: OTFusion and CLAFusion on a zoo of deep and shallow models."""

from weightspace_kedro.pipelines.fusion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
