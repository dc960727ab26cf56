"""zoo of heads -> vectorize/chunk -> VAE (+gate) -> align encoder -> diffusion -> evaluate."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from weightspace_kedro.pipelines.d2nwg import nodes


def create_pipeline(**kwargs) -> Pipeline:
    """D2NWG on few-shot heads over the digits + MNIST-1D class pool (namespace d2nwg)."""
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
            Node(
                nodes.report,
                ["evaluation", "backbone_report", "vae_report", "align_report", "diffusion_report"],
                ["metrics", "plot_accuracy_hist", "plot_finetune_curves", "plot_latents"],
                name="report_d2nwg",
            ),
        ],
        tags=["d2nwg"],
    )
    return Pipeline(template, namespace="d2nwg", prefix_datasets_with_namespace=True)
