"""The zoo pipeline as a template, instantiated once per zoo namespace.

``zoo_pipeline("zoo")`` is the default zoo (``kedro run --pipelines=zoo``): parameters under
``zoo:`` in ``parameters_zoo.yml``, datasets ``zoo.*`` (see ``catalog.yml``). Other
pipelines instantiate their own zoos with another namespace (``zoo_heads``, ...).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.zoo import nodes
from weightspace_kedro.runner import DISTRIBUTED


def zoo_pipeline(namespace: str = "zoo", planned: bool = False) -> Pipeline:
    """The zoo template under ``namespace`` (parameters ``params:<namespace>.*``).

    By default the zoo loads ``params:<namespace>.data`` and expands
    ``params:<namespace>.grid`` into its members. With ``planned=True`` another pipeline
    plans the members: ``<namespace>.zoo_members`` and ``<namespace>.zoo_datasets`` are
    free inputs (e.g. D2NWG's heads over a feature pool), and only
    ``params:<namespace>.run`` is read.
    """
    planning = [
        Node(nodes.load_datasets, "params:data", "zoo_datasets", name="load_datasets"),
        Node(
            nodes.plan_members,
            ["zoo_datasets", "params:grid", "params:data"],
            "zoo_members",
            name="plan_members",
        ),
    ]
    template = Pipeline(
        [
            *([] if planned else planning),
            Node(
                nodes.describe_data,
                ["zoo_datasets", "zoo_members"],
                "zoo_dataset_cards",
                name="describe_data",
            ),
            Node(
                nodes.train,
                ["zoo_members", "zoo_datasets", "zoo_previous", "params:run"],
                ["zoo_models", "zoo_run_report"],
                name="train_zoo",
                tags=[DISTRIBUTED],
            ),
            Node(
                nodes.report,
                ["zoo_models", "zoo_run_report"],
                ["zoo_metrics", "zoo_accuracy_plot"],
                name="report_zoo",
            ),
        ],
        tags=["zoo"],
    )
    return Pipeline(template, namespace=namespace, prefix_datasets_with_namespace=True)


def create_pipeline(**kwargs) -> Pipeline:
    """The default zoo."""
    return zoo_pipeline("zoo")
