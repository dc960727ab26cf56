"""Nodes of the D2NWG stages every scenario shares: thin calls into the library.

Each takes the scenario's typed settings (``seed``, ``device``, ``generator``); the node
wall times come from the project hook, not from the nodes. Under torchrun the VAE and
diffusion stages train data-parallel over the ranks (:mod:`weightspace_kedro.runner`).
"""

from __future__ import annotations

from typing import Any

from weightspace.generators.d2nwg import D2NWG, fit_alignment, fit_diffusion
from weightspace.generators.d2nwg_stages import (
    VAEGateReport,
    ZooTasks,
    ZooWeights,
    fit_vae_gated,
    zoo_weights,
)
from weightspace.generators.training_checkpoint import CheckpointPolicy
from weightspace.zoo import Zoo
from weightspace_kedro.runner import node_device, node_world


def checkpoint_policy(settings: Any) -> CheckpointPolicy:
    """Periodic training checkpoints of the generator (``generator.checkpoint_dir: null``
    turns them off)."""
    g = settings.generator
    return CheckpointPolicy(g.checkpoint_dir, g.checkpoint_every)


def vectorize(zoo: Zoo, tasks: ZooTasks, settings: Any) -> ZooWeights:
    """Stage 0: the zoo as normalized, chunked weight data."""
    return zoo_weights(zoo, tasks, settings.generator.chunk_size)


def fit_weight_vae(
    weights: ZooWeights, tasks: ZooTasks, settings: Any
) -> tuple[D2NWG, VAEGateReport]:
    """Stage 1 + the VAE gate: decoded zoo models must keep their accuracy."""
    g = settings.generator
    model = D2NWG(
        g.d2nwg, weights.weight_set.layout, tasks.feature_dim, tasks.n_classes, seed=settings.seed
    ).to(node_device(settings.device))
    gate = fit_vae_gated(
        model, weights, tasks, g.vae_gate, settings.seed, progress=False,
        checkpoint=checkpoint_policy(settings), world=node_world(settings.device),
    )  # fmt: skip
    return model, gate


def align_dataset_encoder(
    model: D2NWG, weights: ZooWeights, tasks: ZooTasks, settings: Any
) -> tuple[D2NWG, list[float]]:
    """Stage 2: the dataset encoder aligned to the frozen latents (contrastive)."""
    chunks = weights.weight_set.chunks.to(node_device(settings.device))
    losses = fit_alignment(model, tasks.bank, weights.task_of_row, chunks, settings.seed)
    return model, losses


def train_latent_diffusion(
    model: D2NWG, weights: ZooWeights, tasks: ZooTasks, settings: Any
) -> tuple[D2NWG, list[float], dict[str, Any]]:
    """Stage 3: latent diffusion conditioned on the frozen encoder; and its checkpoint."""
    ws = weights.weight_set
    chunks = ws.chunks.to(node_device(settings.device))
    losses = fit_diffusion(
        model, tasks.bank, weights.task_of_row, chunks, settings.seed,
        progress=settings.generator.progress, checkpoint=checkpoint_policy(settings),
        world=node_world(settings.device),
    )  # fmt: skip
    return model, losses, model.to_bundle(ws.spec.fingerprint)
