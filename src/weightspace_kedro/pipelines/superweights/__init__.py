"""SuperWeights: ``kedro run --pipelines=superweights``."""

from weightspace_kedro.pipelines.superweights.pipeline import create_pipeline

__all__ = ["create_pipeline"]
