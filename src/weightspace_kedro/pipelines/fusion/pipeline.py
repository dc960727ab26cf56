"""Fusion: ``kedro run --pipelines=fusion``.

The ``zoo_fusion`` zoo (deep and shallow MLPs and VGGs, the zoo template) feeds the
``fusion`` namespace: typed settings -> collect parents -> one-shot fusion (OTFusion,
CLAFusion, K models) -> fine-tuning comparison and fusion cost; a larger teacher and a
small student from the same zoo -> knowledge distillation into each student
initialisation (Tables 4-5) -> report (with the stage times the hook recorded).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.fusion import nodes
from weightspace_kedro.pipelines.zoo.pipeline import zoo_pipeline

ZOO = ["zoo_fusion.zoo_models", "zoo_fusion.zoo_datasets"]
PLOTS = ["plot_accuracy_vs_k", "plot_finetune_curves"]


def create_pipeline(**kwargs) -> Pipeline:
    """The fusion zoo plus the fusion experiment."""
    s, a = "settings", "architectures"
    fusion = Pipeline(
        [
            Node(
                nodes.build_settings,
                ["params:settings", "params:zoo_fusion.grid"],
                [s, a],
                name="build_settings",
            ),
            Node(
                nodes.collect_parents, [*ZOO, s, "architectures"], "parents", name="collect_parents"
            ),
            Node(nodes.fuse, ["parents", s], "shots", name="fuse_one_shot"),
            Node(nodes.fused_bundle, "shots", "fused_models", name="save_fused_models"),
            Node(nodes.finetune, ["parents", "shots", s], "finetuned", name="finetune_inits"),
            Node(nodes.cost, ["parents", "shots", s], "costs", name="fusion_cost"),
            Node(
                nodes.collect_teacher_student,
                [*ZOO, s, a],
                "teacher_student_pairs",
                name="collect_teacher_student",
            ),
            Node(nodes.distill, ["teacher_student_pairs", s], "distilled", name="distill_students"),
            Node(
                nodes.report,
                ["shots", "finetuned", "costs", "distilled", s, "node_seconds"],
                ["metrics", "tables", "experiments", *PLOTS],
                name="report_fusion",
            ),
        ],
        tags=["fusion"],
    )
    namespaced = Pipeline(
        fusion,
        namespace="fusion",
        inputs=set(ZOO),
        parameters={"params:zoo_fusion.grid"},
        prefix_datasets_with_namespace=True,
    )
    return Pipeline(zoo_pipeline("zoo_fusion"), tags=["fusion"]) + namespaced
