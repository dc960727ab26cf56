"""Fusion: ``kedro run --pipeline=fusion``.

The ``zoo_fusion`` zoo (deep and shallow MLPs and VGGs, the zoo template) feeds the
``fusion`` namespace: collect parents -> one-shot fusion (OTFusion, CLAFusion, K models)
-> fine-tuning comparison; a larger teacher and a small student from the same zoo ->
knowledge distillation into each student initialisation (Tables 4-5) -> report.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.fusion import nodes
from weightspace_kedro.pipelines.zoo.pipeline import zoo_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """The fusion zoo plus the fusion experiment."""
    p = "params:settings"
    fusion = Pipeline(
        [
            Node(
                nodes.collect_parents,
                ["zoo_fusion.zoo_models", "zoo_fusion.zoo_datasets", p],
                "parents",
                name="collect_parents",
            ),
            Node(nodes.fuse, ["parents", p], "shots", name="fuse_one_shot"),
            Node(nodes.fused_bundle, "shots", "fused_models", name="save_fused_models"),
            Node(nodes.finetune, ["parents", "shots", p], "finetuned", name="finetune_inits"),
            Node(
                nodes.collect_teacher_student,
                ["zoo_fusion.zoo_models", "zoo_fusion.zoo_datasets", p],
                "teacher_student_pairs",
                name="collect_teacher_student",
            ),
            Node(nodes.distill, ["teacher_student_pairs", p], "distilled", name="distill_students"),
            Node(
                nodes.report,
                ["shots", "finetuned", "distilled", p],
                ["metrics", "tables", "experiments", "plot_accuracy_vs_k", "plot_finetune_curves"],
                name="report_fusion",
            ),
        ],
        tags=["fusion"],
    )
    namespaced = Pipeline(
        fusion,
        namespace="fusion",
        inputs={"zoo_fusion.zoo_models", "zoo_fusion.zoo_datasets"},
        prefix_datasets_with_namespace=True,
    )
    return zoo_pipeline("zoo_fusion") + namespaced
