"""Ensemble distillation: ``kedro run --pipelines=distill``.

The ``zoo_distill`` zoo (M seeds of one small CNN, the zoo template) feeds the ``distill``
namespace: typed settings -> teachers (the DE) -> KD students -> BatchEnsemble students
(one-to-one KD) -> BatchEnsemble students with ODS, ConfODS and TDiv−SDiv perturbations
-> evaluation (LatentBE merges, metrics, cost, diversity) -> the merged students' weights
and the report (with the stage times the hook recorded).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.distill import nodes
from weightspace_kedro.pipelines.zoo.pipeline import zoo_pipeline

ZOO = ["zoo_distill.zoo_models", "zoo_distill.zoo_datasets"]
RUNS = [
    "kd_students",
    "be_students",
    "be_ods_students",
    "be_confods_students",
    "be_tdiv_sdiv_students",
]
TRAIN = {
    "distill_kd": nodes.distill_kd,
    "distill_be": nodes.distill_be,
    "distill_be_ods": nodes.distill_be_ods,
    "distill_be_confods": nodes.distill_be_confods,
    "distill_be_tdiv_sdiv": nodes.distill_be_tdiv_sdiv,
}


def create_pipeline(**kwargs) -> Pipeline:
    """The teacher zoo plus the distillation experiment."""
    s = "settings"
    train = [
        Node(fn, ["teachers", s], out, name=name)
        for (name, fn), out in zip(TRAIN.items(), RUNS, strict=True)
    ]
    distill = Pipeline(
        [
            Node(
                nodes.build_settings,
                ["params:settings", "params:zoo_distill.grid"],
                [s, "teacher_arch"],
                name="build_settings",
            ),
            Node(
                nodes.collect_teachers,
                [*ZOO, s, "teacher_arch"],
                "teachers",
                name="collect_teachers",
            ),
            *train,
            Node(nodes.evaluate, ["teachers", s, *RUNS], "scores", name="evaluate"),
            Node(nodes.latentbe_bundle, [s, *RUNS[1:]], "latentbe_students", name="save_latentbe"),
            Node(
                nodes.report,
                ["scores", "node_seconds"],
                ["metrics", "tables", "plot_reliability"],
                name="report_distill",
            ),
        ],
        tags=["distill"],
    )
    namespaced = Pipeline(
        distill,
        namespace="distill",
        inputs=set(ZOO),
        parameters={"params:zoo_distill.grid"},
        prefix_datasets_with_namespace=True,
    )
    return Pipeline(zoo_pipeline("zoo_distill"), tags=["distill"]) + namespaced
