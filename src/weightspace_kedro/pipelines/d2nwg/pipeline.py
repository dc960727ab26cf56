"""D2NWG, two scenarios sharing one report.

(a) zoo of heads -> vectorize/chunk -> VAE (+gate) -> align encoder -> diffusion -> evaluate;
(b) ``networks_*``: zoo of whole networks over related datasets -> the same stages ->
    per-dataset sampling and model retrieval.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.d2nwg import networks, nodes


def _networks_nodes(p: str) -> list[Node]:
    """Scenario (b): whole networks over related datasets, the model-retrieval setting."""
    return [
        Node(networks.build_tasks, p, "networks_tasks", name="networks_build_tasks"),
        Node(
            networks.train_networks,
            ["networks_tasks", "networks_previous", p],
            "networks_zoo",
            name="networks_train_zoo",
        ),
        Node(
            networks.vectorize_networks,
            ["networks_zoo", "networks_tasks", p],
            "networks",
            name="networks_vectorize_chunk",
        ),
        Node(
            networks.train_networks_vae,
            ["networks", "networks_tasks", "networks_zoo", p],
            ["networks_vae_stage", "networks_vae_report"],
            name="networks_train_weight_vae",
        ),
        Node(
            networks.align_networks_encoder,
            ["networks_vae_stage", "networks", "networks_tasks", p],
            ["networks_aligned", "networks_align_report", "networks_feature_bank"],
            name="networks_align_dataset_encoder",
        ),
        Node(
            networks.train_networks_diffusion,
            ["networks_aligned", "networks", "networks_feature_bank", p],
            [
                "networks_generator",
                "networks_diffusion_report",
                "networks_generator_checkpoint",
            ],
            name="networks_train_latent_diffusion",
        ),
        Node(
            networks.evaluate_networks,
            [
                "networks_generator",
                "networks",
                "networks_zoo",
                "networks_tasks",
                "networks_vae_report",
                "networks_align_report",
                "networks_diffusion_report",
                p,
            ],
            ["networks_metrics", "plot_networks_accuracy"],
            name="networks_sample_and_retrieve",
        ),
    ]


def create_pipeline(**kwargs) -> Pipeline:
    """D2NWG on few-shot heads (a) and whole networks (b), namespace d2nwg."""
    p = "params:settings"
    template = Pipeline(
        [
            Node(
                nodes.train_backbones,
                p,
                ["extractors", "domains", "backbone_report"],
                name="train_feature_extractors",
            ),
            Node(
                nodes.build_pool,
                ["domains", "extractors", p],
                ["pool", "tasks"],
                name="encode_class_pool",
            ),
            Node(
                nodes.train_heads,
                ["pool", "tasks", "heads_previous", p],
                "heads_zoo",
                name="train_heads_zoo",
            ),
            Node(
                nodes.vectorize_heads,
                ["heads_zoo", "pool", "tasks", p],
                "heads",
                name="vectorize_chunk_heads",
            ),
            Node(
                nodes.train_weight_vae,
                ["heads", "pool", "tasks", "heads_zoo", p],
                ["vae_stage", "vae_report"],
                name="train_weight_vae",
            ),
            Node(
                nodes.align_encoder,
                ["vae_stage", "heads", "pool", "tasks", p],
                ["aligned", "align_report", "feature_bank"],
                name="align_dataset_encoder",
            ),
            Node(
                nodes.train_diffusion,
                ["aligned", "heads", "feature_bank", p],
                ["generator", "diffusion_report", "generator_checkpoint"],
                name="train_latent_diffusion",
            ),
            Node(
                nodes.evaluate,
                ["generator", "heads", "heads_zoo", "pool", "tasks", p],
                "evaluation",
                name="sample_and_evaluate",
            ),
            *_networks_nodes(p),
            Node(
                nodes.report,
                [
                    "evaluation",
                    "backbone_report",
                    "vae_report",
                    "align_report",
                    "diffusion_report",
                    "networks_metrics",
                ],
                ["metrics", "plot_accuracy_hist", "plot_finetune_curves", "plot_latents"],
                name="report_d2nwg",
            ),
        ],
        tags=["d2nwg"],
    )
    return Pipeline(template, namespace="d2nwg", prefix_datasets_with_namespace=True)
