"""D2NWG: one pipeline template, instantiated per scenario, and one report.

``d2nwg_pipeline(namespace, zoo, prepare, evaluate)`` is the method's shape: the
scenario's own nodes (``prepare``) deliver its zoo (through the zoo template, namespace
``zoo``) and a ``zoo_tasks`` object; the shared stages follow (vectorize -> VAE + gate ->
align -> diffusion); then the scenario's protocol and report (``evaluate``). Two
instances, which show in kedro-viz as the same shape with different inputs:

(a) ``d2nwg_heads``: few-shot heads over a class pool (zoos ``zoo_d2nwg_backbones`` and
    ``zoo_d2nwg_heads``, planned by the scenario);
(b) ``d2nwg_networks``: whole networks over related datasets (zoo ``zoo_d2nwg_networks``,
    the zoo template's own grid).

The ``d2nwg`` namespace merges both reports into ``data/08_reporting/d2nwg/metrics.json``.

A scenario's zoos run between its own nodes (the heads scenario plans its zoos, then
learns from them), so their nodes sit inside the scenario's namespace
(``d2nwg_heads.zoo_d2nwg_heads.train_zoo``): each namespace stays one contiguous block of
the DAG (Kedro warns about an interrupted namespace otherwise, and kedro-viz collapses a
scenario, zoos included, into one box). Only node names carry the nesting: every dataset
keeps its name (``zoo_d2nwg_heads.zoo_models``, ...), and so its catalog entry and files.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.d2nwg import heads, networks, stages
from weightspace_kedro.pipelines.zoo.pipeline import zoo_pipeline
from weightspace_kedro.runner import DISTRIBUTED

S = "settings"


def _stage_nodes(zoo: str) -> list[Node]:
    """The stages every scenario shares, on ``<zoo>.zoo_models`` and ``zoo_tasks``."""
    return [
        Node(stages.vectorize, [f"{zoo}.zoo_models", "zoo_tasks", S], "weights",
             name="vectorize_chunk"),
        Node(stages.fit_weight_vae, ["weights", "zoo_tasks", S], ["vae_stage", "vae_gate"],
             name="fit_weight_vae", tags=[DISTRIBUTED]),
        Node(stages.align_dataset_encoder, ["vae_stage", "weights", "zoo_tasks", S],
             ["aligned", "align_losses"], name="align_dataset_encoder"),
        Node(stages.train_latent_diffusion, ["aligned", "weights", "zoo_tasks", S],
             ["generator", "diffusion_losses", "generator_checkpoint"],
             name="train_latent_diffusion", tags=[DISTRIBUTED]),
    ]  # fmt: skip


def d2nwg_pipeline(
    namespace: str, zoo: str, prepare: list[Node], evaluate: list[Node], outputs: set[str]
) -> Pipeline:
    """One D2NWG scenario: ``prepare`` -> zoo -> shared stages -> ``evaluate``.

    Datasets of the zoo namespaces (``zoo_*``) and ``outputs`` (report parts, figures)
    keep their names outside the namespace.
    """
    body = Pipeline([*prepare, *_stage_nodes(zoo), *evaluate], tags=["d2nwg", namespace])
    zoo_io = {d for d in body.datasets() if d.startswith("zoo_") and "." in d}
    zoo_params = {d for d in body.inputs() if d.startswith("params:zoo_")}
    return Pipeline(
        body,
        namespace=namespace,
        inputs=zoo_io & body.inputs(),
        outputs=(zoo_io - body.inputs()) | outputs,
        parameters={p: p for p in zoo_params},
        prefix_datasets_with_namespace=True,
    )


def scenario_zoos(namespace: str, *zoos: Pipeline) -> Pipeline:
    """The zoo template instances of one scenario, their nodes nested in ``namespace``.

    Node names get the scenario prefix (``d2nwg_heads.zoo_d2nwg_heads.train_zoo``); dataset
    and parameter names stay those of the zoo namespace (``zoo_d2nwg_heads.zoo_models``).
    """
    return Pipeline(
        list(zoos),
        namespace=namespace,
        prefix_datasets_with_namespace=False,
        tags=["d2nwg", namespace],
    )


def heads_pipeline() -> Pipeline:
    """Scenario (a): few-shot heads; its zoos are planned by the scenario."""
    bb, hz = "zoo_d2nwg_backbones", "zoo_d2nwg_heads"
    prepare = [
        Node(heads.build_settings, "params:settings", S, name="build_settings"),
        Node(heads.plan_backbones, S, [f"{bb}.zoo_members", f"{bb}.zoo_datasets"],
             name="plan_backbones"),
        Node(heads.build_pool, [f"{bb}.zoo_models", f"{bb}.zoo_members", f"{bb}.zoo_datasets", S],
             ["pool", "tasks", "backbone_report"], name="encode_class_pool"),
        Node(heads.plan_heads, ["pool", "tasks", S], [f"{hz}.zoo_members", f"{hz}.zoo_datasets"],
             name="plan_heads"),
        Node(heads.zoo_tasks, ["pool", "tasks", S], "zoo_tasks", name="zoo_tasks"),
        Node(heads.oracle, ["pool", "tasks", S], "oracle", name="train_oracle_heads"),
    ]  # fmt: skip
    evaluate = [
        Node(heads.fit_classwise_generator, ["weights", "zoo_tasks", "tasks", S],
             ["classwise_generator", "classwise_report", "classwise_checkpoint"],
             name="train_classwise_generator", tags=[DISTRIBUTED]),
        Node(heads.fit_classwise_ablations, ["weights", "zoo_tasks", "tasks", S],
             "classwise_ablations", name="train_classwise_ablations"),
        Node(heads.evaluate,
             ["classwise_generator", "classwise_ablations", "generator", "weights",
              f"{hz}.zoo_models", "pool", "tasks", "oracle", S],
             "scores", name="sample_and_evaluate"),
        Node(heads.report,
             ["scores", "generator", "weights", "pool", "tasks", "vae_gate", "align_losses",
              "diffusion_losses", "classwise_report", "backbone_report", "node_seconds", S],
             ["d2nwg.heads_metrics", "d2nwg.plot_accuracy_hist", "d2nwg.plot_finetune_curves",
              "d2nwg.plot_latents", "d2nwg.plot_baselines"], name="report_heads"),
    ]  # fmt: skip
    outputs = {
        "d2nwg.heads_metrics",
        "d2nwg.plot_accuracy_hist",
        "d2nwg.plot_finetune_curves",
        "d2nwg.plot_latents",
        "d2nwg.plot_baselines",
    }
    zoos = scenario_zoos(
        "d2nwg_heads", zoo_pipeline(bb, planned=True), zoo_pipeline(hz, planned=True)
    )
    return zoos + d2nwg_pipeline("d2nwg_heads", hz, prepare, evaluate, outputs)


def networks_pipeline() -> Pipeline:
    """Scenario (b): whole networks; its zoo is the zoo template's grid."""
    nz = "zoo_d2nwg_networks"
    prepare = [
        Node(networks.build_settings, ["params:settings", f"params:{nz}.data"], S,
             name="build_settings"),
        Node(networks.zoo_tasks, [f"{nz}.zoo_members", f"{nz}.zoo_datasets", S], "zoo_tasks",
             name="zoo_tasks"),
    ]  # fmt: skip
    evaluate = [
        Node(networks.evaluate, ["generator", "weights", "zoo_tasks", S], "scores",
             name="sample_and_retrieve"),
        Node(networks.report,
             ["scores", f"{nz}.zoo_members", f"{nz}.zoo_models", "weights", "vae_gate",
              "align_losses", "diffusion_losses", "node_seconds"],
             ["d2nwg.networks_metrics", "d2nwg.plot_networks_accuracy"], name="report_networks"),
    ]  # fmt: skip
    outputs = {"d2nwg.networks_metrics", "d2nwg.plot_networks_accuracy"}
    zoos = scenario_zoos("d2nwg_networks", zoo_pipeline(nz))
    return zoos + d2nwg_pipeline("d2nwg_networks", nz, prepare, evaluate, outputs)


def merge_reports(heads_metrics: dict, networks_metrics: dict) -> dict[str, float]:
    """One flat ``metrics.json``: scenario (a) unprefixed, scenario (b) ``networks_*``."""
    return {**heads_metrics, **networks_metrics}


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines=d2nwg``: both scenarios and the merged report."""
    report = Pipeline(
        [
            Node(
                merge_reports,
                ["d2nwg.heads_metrics", "d2nwg.networks_metrics"],
                "d2nwg.metrics",
                name="report_d2nwg",
                namespace="d2nwg",
            )
        ],
        tags=["d2nwg"],
    )
    return heads_pipeline() + networks_pipeline() + report
