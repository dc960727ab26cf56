"""D2NWG's training stages over a zoo, the same for every scenario.

A scenario (few-shot heads over a class pool, whole networks over related datasets)
only decides which tasks the zoo holds and which features condition the generator: it
hands over a :class:`ZooTasks`. From there every scenario runs the same stages
(``d2nwg_diffusion_weight_generation_review_discussion.txt``, §3.2-3.3 as the authors
explain them in the discussion):

1. :func:`zoo_weights` — layer-wise vectors, per-layer normalization, equal-size chunks;
2. :func:`fit_vae_gated` — the chunk beta-VAE, then the *VAE gate*: decoded zoo models
   must keep a share of the originals' test accuracy before diffusion is trained;
3. :func:`fit_alignment` — the Set Transformer aligned to the frozen latents;
4. :func:`fit_diffusion` — latent diffusion conditioned on the frozen encoder;
5. :func:`weight_sampler` — support sets -> decoded weight stacks, the callable every
   evaluation protocol takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from weightspace.data.base import SplitDataset
from weightspace.data.features import ClassFeatureBank
from weightspace.distributed import SINGLE, World
from weightspace.errors import EmptyZooError
from weightspace.generators.d2nwg import D2NWG, check_vae_gate, fit_vae, reconstruct
from weightspace.generators.training_checkpoint import CheckpointPolicy
from weightspace.weights import ParameterSpec, WeightSet
from weightspace.zoo import Zoo
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.tasks import TaskStack

Sampler = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]
"""``sampler(sets (B, K, S, ...), n) -> stacked weights {name: (B * n, *shape)}``; row
``b * n + i`` is candidate ``i`` for set ``b``."""


@dataclass(frozen=True)
class ZooTasks:
    """The tasks a D2NWG zoo was trained on, in a fixed order, with their conditioning.

    Attributes
    ----------
    names : tuple of str
        ``TaskSpec.name`` of every zoo task (the zoo index's ``task`` column).
    datasets : tuple of SplitDataset
        The task datasets, same order (their test splits score the VAE gate).
    bank : ClassFeatureBank
        Per-class conditioning features of every task (support sets are drawn from it).
    feature_dim : int
        Width of one conditioning feature.
    n_classes : int
        Classes of every task (the generated models' outputs).
    """

    names: tuple[str, ...]
    datasets: tuple[SplitDataset, ...]
    bank: ClassFeatureBank
    feature_dim: int
    n_classes: int

    def task_of_row(self, zoo: Zoo) -> torch.Tensor:
        """Task index ``(N,)`` of every zoo row (raises if a row's task is not listed)."""
        pos = {n: i for i, n in enumerate(self.names)}
        missing = sorted(set(zoo.index["task"]) - set(pos))
        if missing:
            raise EmptyZooError(
                f"zoo members of tasks {missing[:3]} are not among this scenario's tasks; "
                "the zoo folder holds another run's members: rerun the pipeline"
            )
        return torch.tensor([pos[t] for t in zoo.index["task"]])

    def test_stack(self) -> TaskStack:
        """Padded test splits of every task."""
        return TaskStack.from_splits([d.test for d in self.datasets])


@dataclass(frozen=True)
class ZooWeights:
    """A zoo as weight data: the weight set, each row's task and a module template."""

    weight_set: WeightSet
    task_of_row: torch.Tensor
    template: nn.Module
    stacked: dict[str, torch.Tensor]


@dataclass(frozen=True)
class VAEGateReport:
    """Stage 1's outcome: reconstruction quality in function space and the last loss."""

    recon_acc_ratio: float
    recon_mean_acc: float
    zoo_mean_acc: float
    final_loss: float


def zoo_weights(zoo: Zoo, tasks: ZooTasks, chunk_size: int) -> ZooWeights:
    """Vectorize, normalize and chunk every zoo member (model ids in zoo order)."""
    ids = zoo.model_ids
    if not ids:
        raise EmptyZooError("the D2NWG zoo is empty; check the zoo parameters")
    template = zoo.arch_spec(ids[0]).build()
    stacked = zoo.stack(ids)
    ws = WeightSet.build(
        stacked,
        ParameterSpec.from_module(template),
        ids,
        zoo.row(ids[0])["arch_key"],
        chunk_size=chunk_size,
    )
    return ZooWeights(ws, tasks.task_of_row(zoo), template, stacked)


def fit_vae_gated(
    model: D2NWG,
    weights: ZooWeights,
    tasks: ZooTasks,
    gate: float,
    seed: int,
    progress: bool,
    checkpoint: CheckpointPolicy | None = None,
    world: World = SINGLE,
) -> VAEGateReport:
    """Stage 1 + the VAE gate (:func:`check_vae_gate` raises below ``gate``).

    ``checkpoint``: the VAE's periodic checkpoints (a rerun resumes); ``world``: train
    data-parallel (see :func:`~weightspace.generators.vae.train_vae`).
    """
    device = next(model.parameters()).device
    ws = weights.weight_set
    losses = fit_vae(
        model, ws.chunks.to(device), seed, progress=progress, checkpoint=checkpoint, world=world
    )
    recon = ws.decode(reconstruct(model, ws.chunks.to(device)).cpu())
    test = tasks.test_stack()
    acc_rec = stack_accuracy(weights.template, recon, weights.task_of_row, test)
    acc_orig = stack_accuracy(weights.template, weights.stacked, weights.task_of_row, test)
    ratio = check_vae_gate(acc_rec, acc_orig, gate)
    return VAEGateReport(ratio, float(acc_rec.mean()), float(acc_orig.mean()), losses[-1])


def weight_sampler(
    model: D2NWG,
    weight_set: WeightSet,
    seed: int,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Sampler:
    """The generator as a :data:`Sampler`: support sets -> decoded weight stacks.

    ``features`` maps the protocol's support sets to the encoder's inputs (e.g. flatten
    raw inputs); one seeded generator serves every call, so a sequence of calls is
    reproducible.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def sample(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        sets = sets if features is None else features(sets)
        return weight_set.decode(model.sample(sets.to(device), n, gen).cpu())

    return sample


def set_embedder(
    model: D2NWG, features: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen dataset encoder as a callable: support sets -> embeddings ``(B, e)``."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def embed(sets: torch.Tensor) -> torch.Tensor:
        sets = sets if features is None else features(sets)
        return model.encoder(sets.to(device)).cpu()

    return embed


def feature_bank(
    datasets: Sequence[SplitDataset], n_classes: int, flatten: bool
) -> ClassFeatureBank:
    """Per-class training samples of every dataset (flattened raw inputs if ``flatten``)."""
    return ClassFeatureBank.from_splits(
        [(d.train.x.flatten(1) if flatten else d.train.x, d.train.y) for d in datasets],
        n_classes,
    )


__all__ = [
    "Sampler",
    "VAEGateReport",
    "ZooTasks",
    "ZooWeights",
    "feature_bank",
    "fit_vae_gated",
    "set_embedder",
    "weight_sampler",
    "zoo_weights",
]
