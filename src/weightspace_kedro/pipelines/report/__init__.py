"""Cross-method report: ``kedro run --pipelines=report`` (comparison table + model cards)."""

from weightspace_kedro.pipelines.report.pipeline import create_pipeline

__all__ = ["create_pipeline"]
