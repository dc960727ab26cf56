"""WeightFormer: ``kedro run --pipelines=weightformer``.

The ``zoo_weightformer`` zoo (72 checkpoints of one CNN: seeds x learning rates) feeds the
``weightformer`` namespace: typed settings -> split by checkpoint id (60 train / 12
held out) -> WF, the ablations, the MLP baseline -> WF* (fine-tuned on held-out sets) ->
evaluation on held-out teacher sets (with KD per set) and the teacher-number curve ->
report; every trained generator is saved in ``data/06_models/weightformer``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.weightformer import nodes
from weightspace_kedro.pipelines.zoo.pipeline import zoo_pipeline
from weightspace_kedro.runner import DISTRIBUTED

ZOO = ["zoo_weightformer.zoo_models", "zoo_weightformer.zoo_datasets"]


def create_pipeline(**kwargs) -> Pipeline:
    """The checkpoint zoo plus the WeightFormer experiment."""
    s = "settings"
    wf = Pipeline(
        [
            Node(nodes.build_settings, "params:settings", s, name="build_settings"),
            Node(nodes.split_checkpoints, [*ZOO, s], "pools", name="split_checkpoints"),
            Node(nodes.train_wf, ["pools", s], "wf", name="train_wf", tags=[DISTRIBUTED]),
            Node(nodes.train_ablations, ["pools", s], "ablations", name="train_ablations"),
            Node(nodes.train_mlp, ["pools", s], "mlp", name="train_mlp"),
            Node(nodes.finetune_wf_star, ["wf", "pools", s], "wf_star", name="finetune_wf_star"),
            Node(
                nodes.collect_generators,
                ["wf", "wf_star", "mlp", "ablations"],
                "trained",
                name="collect_generators",
            ),
            Node(nodes.evaluate, ["pools", "trained", s], "result", name="evaluate"),
            Node(nodes.teacher_curve, ["pools", "wf", s], "curve", name="teacher_curve"),
            Node(nodes.generators_bundle, ["pools", "trained", s], "generators", name="save"),
            Node(
                nodes.report,
                ["result", "curve", "node_seconds"],
                ["metrics", "tables", "plot_teacher_number"],
                name="report_weightformer",
            ),
        ],
        tags=["weightformer"],
    )
    namespaced = Pipeline(
        wf, namespace="weightformer", inputs=set(ZOO), prefix_datasets_with_namespace=True
    )
    return Pipeline(zoo_pipeline("zoo_weightformer"), tags=["weightformer"]) + namespaced
