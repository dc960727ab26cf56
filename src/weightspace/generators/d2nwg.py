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
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from weightspace.data.features import ClassFeatureBank
from weightspace.errors import (
    CheckpointMismatchError,
    GateError,
    InvalidParameterError,
    ShapeError,
)
from weightspace.generators.alignment import AlignmentHead, align_encoder
from weightspace.generators.dataset_encoder import DatasetEncoderConfig, SetDatasetEncoder
from weightspace.generators.denoiser import ChunkDenoiser, ChunkDenoiserConfig
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.ema import EMA
from weightspace.generators.schedule import make_schedule
from weightspace.generators.vae import ChunkVAE, train_vae
from weightspace.weights import ChunkLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class D2NWGConfig:
    """Hyper-parameters of every D2NWG stage."""

    latent_dim: int = 8
    vae_hidden: int = 128
    vae_depth: int = 2
    beta: float = 1e-4
    vae_epochs: int = 300
    vae_batch_size: int = 128
    vae_lr: float = 1e-3
    noise_augment: float = 1e-3
    shots: int = 5
    sets_per_task: int = 32
    enc_dim: int = 64
    enc_depth: int = 2
    enc_inducing: int = 8
    enc_out: int = 64
    align_epochs: int = 40
    align_batch_size: int = 64
    align_lr: float = 1e-3
    temperature: float = 0.1
    cond_dim: int = 64
    timesteps: int = 1000
    schedule: str = "linear"
    den_width: int = 128
    den_depth: int = 4
    den_heads: int = 4
    diff_steps: int = 3000
    diff_batch_size: int = 128
    diff_lr: float = 3e-4
    p_uncond: float = 0.1
    ema_decay: float = 0.999
    sample_steps: int = 50
    guidance: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> D2NWGConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidParameterError(f"unknown D2NWG parameters {sorted(unknown)}")
        return cls(**d)


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
        self.config, self.layout = config, layout
        self.feature_dim, self.n_classes = int(feature_dim), int(n_classes)
        self.vae = ChunkVAE.from_layout(
            layout, latent_dim=config.latent_dim, hidden=config.vae_hidden,
            depth=config.vae_depth, beta=config.beta,
        )  # fmt: skip
        self.encoder = SetDatasetEncoder(
            DatasetEncoderConfig(
                feature_dim=self.feature_dim, dim=config.enc_dim, depth=config.enc_depth,
                n_inducing=config.enc_inducing, out_dim=config.enc_out,
                class_pooling="ordered", max_classes=self.n_classes,
            )
        )  # fmt: skip
        self.latent_proj = AlignmentHead(layout.num_chunks * config.latent_dim, config.enc_out)
        self.cond_adapter = nn.Linear(config.enc_out, config.cond_dim)
        self.denoiser = ChunkDenoiser(
            ChunkDenoiserConfig(
                n_chunks=layout.num_chunks, latent_dim=config.latent_dim,
                n_layer_ids=layout.num_layers, cond_dim=config.cond_dim,
                width=config.den_width, depth=config.den_depth, heads=config.den_heads,
            ),
            layout.layer_id,
        )  # fmt: skip
        self.diffusion = GaussianDiffusion(make_schedule(config.schedule, config.timesteps))

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
        shape = (cond.shape[0], self.layout.num_chunks, self.config.latent_dim)
        z = self.diffusion.ddim_sample(
            self.denoiser, shape, cond=cond, steps=steps or self.config.sample_steps,
            guidance_scale=self.config.guidance if guidance is None else guidance,
            generator=generator, device=cond.device,
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
                "on this zoo (kedro run --pipeline=d2nwg) or load the matching weight set"
            )
        layout = ChunkLayout.from_dict(
            {**m["layout"], **{k[7:]: v for k, v in t.items() if k.startswith("layout.")}}
        )
        model = cls(D2NWGConfig.from_dict(m["config"]), layout, m["feature_dim"], m["n_classes"])
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        return model.eval()


# ---------------------------------------------------------------------- training stages
def fit_vae(model: D2NWG, chunks: torch.Tensor, seed: int, progress: bool = False) -> list[float]:
    """Stage 1: train the VAE on normalized chunks ``(N, M, c)``, then fit its latent scale."""
    cfg = model.config
    losses = train_vae(
        model.vae, chunks, model.layout.mask.to(chunks.device), cfg.vae_epochs,
        cfg.vae_batch_size, cfg.vae_lr, seed, noise_augment=cfg.noise_augment,
        progress=progress,
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

    return align_encoder(
        model.encoder, model.latent_proj, sampler, latents, task_of_row.to(device),
        cfg.align_epochs, cfg.align_batch_size, cfg.align_lr, temperature=cfg.temperature,
        seed=seed, progress=progress,
    )  # fmt: skip


def fit_diffusion(
    model: D2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    chunks: torch.Tensor,
    seed: int,
    progress: bool = False,
) -> list[float]:
    """Stage 3: latent diffusion with the frozen encoder + a trained linear adapter.

    Returns the loss of every ``diff_steps // 100``-th step. The EMA weights are copied
    into the denoiser and adapter at the end.
    """
    cfg, device = model.config, chunks.device
    model.encoder.requires_grad_(False).eval()
    model.vae.eval()
    trainable = nn.ModuleDict({"denoiser": model.denoiser, "adapter": model.cond_adapter})
    trainable.train()
    opt = torch.optim.AdamW(trainable.parameters(), lr=cfg.diff_lr, weight_decay=0.0)
    ema = EMA(trainable, decay=cfg.ema_decay)
    gen_cpu = torch.Generator().manual_seed(seed)
    gen_dev = torch.Generator(device=device).manual_seed(seed)
    # The encoder is frozen: embed a pool of fresh support sets per task once, and draw a
    # new one of them for every row of every batch (the paper's fresh conditioning sample).
    n_tasks = int(task_of_row.max()) + 1
    tasks = torch.arange(n_tasks).repeat_interleave(cfg.sets_per_task)
    with torch.no_grad():
        emb_pool = torch.cat([
            model.encoder(bank.sample(chunk, cfg.shots, gen_cpu).to(device))
            for chunk in tasks.split(1024)
        ]).view(n_tasks, cfg.sets_per_task, -1)  # fmt: skip
    n = chunks.shape[0]
    losses: list[float] = []
    bar = tqdm(range(cfg.diff_steps), desc="d2nwg diffusion", disable=not progress, mininterval=2)
    for step in bar:
        rows = torch.randint(0, n, (min(cfg.diff_batch_size, n),), generator=gen_cpu)
        pick = torch.randint(0, cfg.sets_per_task, rows.shape, generator=gen_cpu)
        with torch.no_grad():
            x0 = model.vae.to_latent(chunks[rows.to(device)], sample=True, generator=gen_dev)
        emb = emb_pool[task_of_row[rows].to(device), pick.to(device)]
        cond = model.cond_adapter(emb)
        loss = model.diffusion.training_loss(
            model.denoiser, x0, cond=cond, p_uncond=cfg.p_uncond, generator=gen_dev
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(trainable)
        if step % max(cfg.diff_steps // 100, 1) == 0:
            losses.append(float(loss.detach()))
    ema.copy_to(trainable)
    model.eval()
    return losses
