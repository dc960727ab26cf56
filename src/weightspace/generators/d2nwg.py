"""D2NWG: dataset-conditioned latent diffusion over chunked weights.

Follows ``d2nwg_diffusion_weight_generation_review_discussion.txt`` (Sections 3.2-3.3 as
the authors explain them in the discussion):

1. weights -> layer-wise vectors -> equal-size zero-padded chunks
   (:class:`weightspace.weights.WeightSet`);
2. a beta-VAE over chunks (:class:`ChunkVAE`), trained first and frozen; its latent scale
   is stored with it;
3. a Set Transformer dataset encoder over per-class feature sets
   (:class:`SetDatasetEncoder`) aligned to the frozen VAE latents with a contrastive loss
   ("first training and freezing the VAE encoder, then aligning the Set Transformer
   outputs to the VAE's latent space using contrastive loss");
4. latent diffusion (:class:`GaussianDiffusion` + :class:`ChunkDenoiser`, chunk position
   and layer id as token embeddings) conditioned on the frozen encoder through "a single
   dense linear layer adapting the Set Transformer", the VAE used "in sampling mode", a
   fresh support set drawn "at every batch", EMA weights, classifier-free-guidance dropout;
5. sampling: support sets of the target dataset -> condition -> DDIM -> VAE decoder ->
   chunks -> weights; several candidates per dataset, selected on validation data by the
   caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from weightspace.checks import positive_number
from weightspace.config import from_mapping, to_mapping
from weightspace.data.features import ClassFeatureBank
from weightspace.distributed import SINGLE, World
from weightspace.errors import (
    CheckpointMismatchError,
    GateError,
    InvalidParameterError,
    ShapeError,
)
from weightspace.generators.alignment import AlignmentHead, align_encoder
from weightspace.generators.data_parallel import check_same_data, sync_module
from weightspace.generators.dataset_encoder import DatasetEncoderConfig, SetDatasetEncoder
from weightspace.generators.denoiser import ChunkDenoiser, ChunkDenoiserConfig
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.diffusion_loop import train_diffusion_loop
from weightspace.generators.schedule import make_schedule
from weightspace.generators.training_checkpoint import (
    CheckpointPolicy,
)
from weightspace.generators.vae import ChunkVAE, ChunkVAEConfig, train_vae
from weightspace.weights import ChunkLayout

log = logging.getLogger(__name__)

SCHEDULES: tuple[str, ...] = ("linear", "cosine")
"""Noise schedules :func:`~weightspace.generators.schedule.make_schedule` knows."""


def _int(where: str, name: str, value: Any, low: int = 1) -> None:
    """Raise unless ``value`` is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidParameterError(f"{where}.{name} must be an integer >= {low}, got {value!r}")


def _number(where: str, name: str, value: Any, low: float, high: float | None = None) -> None:
    """Raise unless ``value`` is a finite number in ``[low, high]`` (``high=None``: no
    upper bound)."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= low
        and (high is None or value <= high)
    )
    if not ok:
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameterError(f"{where}.{name} must be a finite number {rng}, got {value!r}")


def _positive(where: str, name: str, value: Any) -> None:
    """Raise unless ``value`` is a finite number ``> 0``."""
    positive_number(f"{where}.{name}", value)


@dataclass(frozen=True)
class VAETraining:
    """Stage 1: the chunk VAE's optimisation (AdamW)."""

    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    noise_augment: float = 1e-3

    def __post_init__(self) -> None:
        _int("vae_training", "epochs", self.epochs)
        _int("vae_training", "batch_size", self.batch_size)
        _positive("vae_training", "lr", self.lr)
        _number("vae_training", "noise_augment", self.noise_augment, 0.0)


@dataclass(frozen=True)
class AlignTraining:
    """Stage 2: contrastive alignment of the dataset encoder to the frozen latents."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 0.1

    def __post_init__(self) -> None:
        _int("align", "epochs", self.epochs)
        _int("align", "batch_size", self.batch_size)
        _positive("align", "lr", self.lr)
        _positive("align", "temperature", self.temperature)


@dataclass(frozen=True)
class DiffusionTraining:
    """Stage 3: the latent diffusion process and its optimisation (AdamW + EMA)."""

    timesteps: int = 1000
    schedule: str = "linear"
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-4
    p_uncond: float = 0.1
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        _int("diffusion", "timesteps", self.timesteps, low=2)
        if self.schedule not in SCHEDULES:
            raise InvalidParameterError(
                f"diffusion.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}"
            )
        _int("diffusion", "steps", self.steps)
        _int("diffusion", "batch_size", self.batch_size)
        _positive("diffusion", "lr", self.lr)
        _number("diffusion", "p_uncond", self.p_uncond, 0.0, 1.0)
        _number("diffusion", "ema_decay", self.ema_decay, 0.0, 1.0)


@dataclass(frozen=True)
class SamplingConfig:
    """Generation: DDIM steps, classifier-free guidance scale and the temperature of the
    start noise (``1`` samples the learned distribution; below 1, the truncation trick:
    :meth:`~weightspace.generators.diffusion.GaussianDiffusion.ddim_sample`)."""

    steps: int = 50
    guidance: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _int("sampling", "steps", self.steps)
        _number("sampling", "guidance", self.guidance, 0.0)
        _number("sampling", "temperature", self.temperature, 0.0)


@dataclass(frozen=True)
class D2NWGConfig:
    """Every D2NWG hyper-parameter: the three networks' configs and the stage settings.

    The network configs are the modules' own (:class:`ChunkVAEConfig`,
    :class:`DatasetEncoderConfig`, :class:`ChunkDenoiserConfig`); their sizes that depend
    on the data (chunk layout, feature width, class count, latent size, layer ids) are
    left at 0 here and filled by :class:`D2NWG` from its inputs. ``shots`` samples per
    class make one conditioning set; ``sets_per_task`` fresh sets per task are embedded
    for diffusion training.
    """

    vae: ChunkVAEConfig = field(default_factory=lambda: ChunkVAEConfig(beta=1e-4))
    encoder: DatasetEncoderConfig = field(
        default_factory=lambda: DatasetEncoderConfig(n_inducing=8)
    )
    denoiser: ChunkDenoiserConfig = field(default_factory=ChunkDenoiserConfig)
    vae_training: VAETraining = field(default_factory=VAETraining)
    align: AlignTraining = field(default_factory=AlignTraining)
    diffusion: DiffusionTraining = field(default_factory=DiffusionTraining)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shots: int = 5
    sets_per_task: int = 32

    def __post_init__(self) -> None:
        _int("d2nwg", "shots", self.shots)
        _int("d2nwg", "sets_per_task", self.sets_per_task)
        if self.sampling.steps > self.diffusion.timesteps:
            raise InvalidParameterError(
                f"d2nwg.sampling.steps ({self.sampling.steps}) must be <= "
                f"diffusion.timesteps ({self.diffusion.timesteps})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict."""
        return to_mapping(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "d2nwg") -> D2NWGConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming their path."""
        return from_mapping(cls, d, path)


class D2NWG(nn.Module):
    """The generator: VAE, dataset encoder, latent projection, condition adapter, denoiser.

    Parameters
    ----------
    config : D2NWGConfig
    layout : ChunkLayout
        Chunk layout of the weights it generates (fixes ``M``, ``c`` and the layer ids).
    feature_dim : int
        Size of the per-sample features the dataset encoder reads.
    n_classes : int
        Classes of the datasets it is conditioned on (the generated heads' outputs).
    seed : int, optional
        Seeds the initial weights (else the global RNG is used).
    """

    def __init__(
        self,
        config: D2NWGConfig,
        layout: ChunkLayout,
        feature_dim: int,
        n_classes: int,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if seed is not None:  # initial weights independent of the global RNG's history
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(config, layout, feature_dim, n_classes)
        else:
            self._build(config, layout, feature_dim, n_classes)

    def _build(
        self, config: D2NWGConfig, layout: ChunkLayout, feature_dim: int, n_classes: int
    ) -> None:
        self.layout = layout
        self.feature_dim, self.n_classes = int(feature_dim), int(n_classes)
        vae_cfg = config.vae.for_layout(layout)
        enc_cfg = replace(config.encoder, feature_dim=self.feature_dim, max_classes=self.n_classes)
        den_cfg = replace(
            config.denoiser, n_chunks=layout.num_chunks, latent_dim=vae_cfg.latent_dim,
            n_layer_ids=layout.num_layers,
        )  # fmt: skip
        self.config = replace(config, vae=vae_cfg, encoder=enc_cfg, denoiser=den_cfg)
        self.vae = ChunkVAE(vae_cfg, layout.layer_id)
        self.encoder = SetDatasetEncoder(enc_cfg)
        self.latent_proj = AlignmentHead(layout.num_chunks * vae_cfg.latent_dim, enc_cfg.out_dim)
        self.cond_adapter = nn.Linear(enc_cfg.out_dim, den_cfg.cond_dim)
        self.denoiser = ChunkDenoiser(den_cfg, layout.layer_id)
        d = config.diffusion
        self.diffusion = GaussianDiffusion(make_schedule(d.schedule, d.timesteps))

    # ------------------------------------------------------------------ conditioning
    def check_sets(self, sets: torch.Tensor) -> None:
        """Raise a clear error for sets the generator was not trained for."""
        if sets.ndim != 4 or sets.shape[-1] != self.feature_dim:
            raise ShapeError(
                f"conditioning sets must be (B, K, S, {self.feature_dim}), got {tuple(sets.shape)}"
            )
        if sets.shape[1] != self.n_classes:
            raise InvalidParameterError(
                f"this generator makes {self.n_classes}-way classifiers but the conditioning "
                f"dataset has {sets.shape[1]} classes; condition on {self.n_classes} classes "
                "or train a generator for that class count"
            )
        if sets.shape[2] < 1:
            raise InvalidParameterError("conditioning class sets are empty: give >= 1 shot")

    def condition(self, sets: torch.Tensor) -> torch.Tensor:
        """Condition vectors ``(B, cond_dim)`` of support sets ``(B, K, S, d)``."""
        self.check_sets(sets)
        return self.cond_adapter(self.encoder(sets))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        sets: torch.Tensor,
        n: int,
        generator: torch.Generator,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """``n`` weight candidates per support set: normalized chunks ``(B * n, M, c)``.

        Row ``b * n + i`` is candidate ``i`` for set ``b``.
        """
        self.eval()
        cond = self.condition(sets).repeat_interleave(n, dim=0)
        shape = (cond.shape[0], self.layout.num_chunks, self.config.vae.latent_dim)
        sampling = self.config.sampling
        z = self.diffusion.ddim_sample(
            self.denoiser, shape, cond=cond, steps=steps or sampling.steps,
            guidance_scale=sampling.guidance if guidance is None else guidance,
            generator=generator, device=cond.device, temperature=sampling.temperature,
        )  # fmt: skip
        return self.vae.from_latent(z)

    # ------------------------------------------------------------------ storage
    def to_bundle(self, spec_fingerprint: str) -> dict[str, dict[str, Any]]:
        """Tensors + metadata (config, layout, sizes, the spec it generates)."""
        layout = self.layout.to_dict()
        tensors = {f"model.{k}": v for k, v in self.state_dict().items()}
        tensors.update(
            {f"layout.{k}": layout.pop(k) for k in list(layout) if torch.is_tensor(layout[k])}
        )
        meta = {
            "config": self.config.to_dict(),
            "layout": layout,
            "feature_dim": self.feature_dim,
            "n_classes": self.n_classes,
            "spec_fingerprint": spec_fingerprint,
        }
        return {"tensors": tensors, "metadata": meta}

    @classmethod
    def from_bundle(cls, bundle: dict[str, dict[str, Any]], spec_fingerprint: str) -> D2NWG:
        """Rebuild; refuses a generator trained for another parameter spec."""
        t, m = bundle["tensors"], bundle["metadata"]
        if m["spec_fingerprint"] != spec_fingerprint:
            raise CheckpointMismatchError(
                "this D2NWG checkpoint generates weights of another parameter spec "
                f"({m['spec_fingerprint'][:12]}... vs {spec_fingerprint[:12]}...): retrain it "
                "on this zoo (kedro run --pipelines=d2nwg) or load the matching weight set"
            )
        layout = ChunkLayout.from_dict(
            {**m["layout"], **{k[7:]: v for k, v in t.items() if k.startswith("layout.")}}
        )
        model = cls(D2NWGConfig.from_dict(m["config"]), layout, m["feature_dim"], m["n_classes"])
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        return model.eval()


# ---------------------------------------------------------------------- training stages
def fit_vae(
    model: D2NWG,
    chunks: torch.Tensor,
    seed: int,
    progress: bool = False,
    checkpoint: CheckpointPolicy | None = None,
    world: World = SINGLE,
) -> list[float]:
    """Stage 1: train the VAE on normalized chunks ``(N, M, c)``, then fit its latent scale.

    ``checkpoint``: periodic checkpoints and resumption; ``world``: data-parallel over
    several processes (see :func:`train_vae`).
    """
    cfg = model.config.vae_training
    losses = train_vae(
        model.vae, chunks, model.layout.mask.to(chunks.device), cfg.epochs,
        cfg.batch_size, cfg.lr, seed, noise_augment=cfg.noise_augment, progress=progress,
        checkpoint=checkpoint, world=world,
    )  # fmt: skip
    model.vae.fit_latent_scale(chunks)
    model.vae.requires_grad_(False)
    return losses


def check_vae_gate(
    acc_reconstructed: torch.Tensor, acc_original: torch.Tensor, threshold: float
) -> float:
    """The VAE gate: decoded zoo models must keep ``threshold`` of the originals' accuracy.

    Returns the ratio of mean accuracies; raises :class:`GateError` below ``threshold``
    (diffusion on a VAE that cannot reconstruct working weights only produces chance-level
    models: the failure p-diff users report).
    """
    ratio = float(acc_reconstructed.mean() / acc_original.mean().clamp(min=1e-12))
    if ratio < threshold:
        raise GateError(
            f"VAE gate failed: decoded zoo models reach {ratio:.3f} of the originals' accuracy "
            f"(mean {float(acc_reconstructed.mean()):.3f} vs {float(acc_original.mean()):.3f}, "
            f"threshold {threshold}). Train the VAE longer (vae_epochs), widen it (vae_hidden, "
            "latent_dim) or lower beta before training diffusion"
        )
    return ratio


@torch.no_grad()
def reconstruct(model: D2NWG, chunks: torch.Tensor) -> torch.Tensor:
    """VAE reconstruction (posterior mean) of chunks ``(N, M, c)``: the VAE gate's input."""
    model.vae.eval()
    return model.vae.decode(model.vae.encode(chunks, sample=False))


def fit_alignment(
    model: D2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    chunks: torch.Tensor,
    seed: int,
    progress: bool = False,
) -> list[float]:
    """Stage 2: contrastive alignment of the dataset encoder to the frozen VAE latents."""
    cfg = model.config
    with torch.no_grad():
        latents = model.vae.to_latent(chunks, sample=False).flatten(1)
    device = chunks.device

    def sampler(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return bank.sample(task_of_row[rows.cpu()].cpu(), cfg.shots, generator).to(device)

    a = cfg.align
    return align_encoder(
        model.encoder, model.latent_proj, sampler, latents, task_of_row.to(device),
        a.epochs, a.batch_size, a.lr, temperature=a.temperature, seed=seed, progress=progress,
    )  # fmt: skip


def fit_diffusion(
    model: D2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    chunks: torch.Tensor,
    seed: int,
    progress: bool = False,
    checkpoint: CheckpointPolicy | None = None,
    world: World = SINGLE,
) -> list[float]:
    """Stage 3: latent diffusion with the frozen encoder + a trained linear adapter.

    Returns the loss of every ``diffusion.steps // 100``-th step. The EMA weights are copied
    into the denoiser and adapter at the end.

    ``checkpoint`` writes the whole training state (denoiser + adapter, EMA, optimizer,
    step, losses, random generators) every ``checkpoint.every`` steps and at the end,
    keyed by a fingerprint of the config, the seed, the data and the generator's weights
    at the start of the stage; a rerun resumes from the newest valid checkpoint and ends
    with the same weights as an uninterrupted run. SIGINT stops after the current step,
    having written a checkpoint.

    ``world``: train data-parallel over several processes (``torchrun``); every rank
    passes the same data, rank 0's generator weights are copied to the others first, and
    the result equals a single-process run with the same global batch up to float noise
    (:mod:`weightspace.generators.diffusion_loop`).
    """
    cfg, device = model.config, chunks.device
    ck = None
    if checkpoint is not None:
        run = {
            "config": {k: v for k, v in cfg.to_dict().items() if k != "sampling"},
            "seed": seed,
            "device": device.type,
        }
        tensors = (chunks, task_of_row, bank.feats, bank.counts, *model.state_dict().values())
        ck = checkpoint.open("diffusion", run, *tensors)
    sync_module(model, world)
    check_same_data(world, "d2nwg diffusion", chunks, task_of_row, bank.feats, bank.counts)
    model.encoder.requires_grad_(False).eval()
    model.vae.eval()
    trainable = nn.ModuleDict({"denoiser": model.denoiser, "adapter": model.cond_adapter})
    # The encoder is frozen: embed a pool of fresh support sets per task once, and draw a
    # new one of them for every row of every batch (the paper's fresh conditioning sample).
    n_tasks = int(task_of_row.max()) + 1
    tasks = torch.arange(n_tasks).repeat_interleave(cfg.sets_per_task)
    gen_pool = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb_pool = torch.cat([
            model.encoder(bank.sample(chunk, cfg.shots, gen_pool).to(device))
            for chunk in tasks.split(1024)
        ]).view(n_tasks, cfg.sets_per_task, -1)  # fmt: skip

    task_dev = task_of_row.to(device)

    def batch(rows: torch.Tensor, pick: torch.Tensor, gen_dev: torch.Generator):
        rows, pick = rows.to(device), pick.to(device)
        with torch.no_grad():
            x0 = model.vae.to_latent(chunks[rows], sample=True, generator=gen_dev)
        emb = emb_pool[task_dev[rows], pick]
        return x0, model.cond_adapter(emb)

    losses = train_diffusion_loop(
        "diffusion", trainable, model.denoiser, model.diffusion, batch, chunks.shape[0],
        cfg.sets_per_task, cfg.diffusion, seed, device, progress=progress, ck=ck,
        gen_cpu=gen_pool, world=world,
    )  # fmt: skip
    model.eval()
    return losses
