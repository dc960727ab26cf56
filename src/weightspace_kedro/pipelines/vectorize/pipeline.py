"""Zoo checkpoints -> weight sets (``data/04_feature/vectorize``) -> round-trip report."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.vectorize import nodes


def create_pipeline(**kwargs) -> Pipeline:
    """Vectorize the default zoo (namespace ``vectorize``, input ``zoo.zoo_models``)."""
    template = Pipeline(
        [
            Node(
                nodes.vectorize_zoo,
                ["zoo.zoo_models", "params:settings"],
                "weight_sets",
                name="vectorize_zoo",
            ),
            Node(nodes.report, "weight_sets", "metrics", name="report_vectorize"),
        ],
        tags=["vectorize"],
    )
    return Pipeline(template, namespace="vectorize", inputs={"zoo.zoo_models"})
