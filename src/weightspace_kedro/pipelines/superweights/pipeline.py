"""SuperWeights: ``kedro run --pipelines=superweights``.

``superweights`` namespace: typed settings -> the dataset -> single model, deep ensembles,
BatchEnsemble and SuperWeight ensembles (homogeneous and heterogeneous, three parameter
budgets, several seeds; sensitivity to tau and beta; parameter allocation) -> report
(Tables 2, 3, 5, anytime inference, sensitivity, interpolation, cluster membership).
The raw result is kept in ``data/07_model_output/superweights/result.json``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.superweights import nodes

PLOTS = ["plot_anytime", "plot_sensitivity", "plot_interpolation", "plot_clusters"]


def create_pipeline(**kwargs) -> Pipeline:
    """The SuperWeights experiment."""
    s = "settings"
    sw = Pipeline(
        [
            Node(nodes.build_settings, "params:settings", s, name="build_settings"),
            Node(nodes.load_data, ["params:data", s], "dataset", name="load_data"),
            Node(nodes.run, ["dataset", s], "result", name="run_ensembles"),
            Node(
                nodes.report,
                ["result", "node_seconds"],
                ["metrics", "tables", *PLOTS],
                name="report_superweights",
            ),
        ],
        tags=["superweights"],
    )
    return Pipeline(sw, namespace="superweights", prefix_datasets_with_namespace=True)
