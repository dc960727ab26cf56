"""beta-VAE over weight chunks, the first stage of D2NWG.

D2NWG (``d2nwg_diffusion_weight_generation_review_discussion.txt``) compresses weights
with a VAE before diffusion: "we construct a Variational Autoencoder (VAE) based on the
overall chunk size and the number of parameters", "we utilize a Beta-VAE to increase
stochasticity while reducing the need for repeated pretrained models", and "during the
training process of the diffusion model, we utilize the VAE in sampling mode" (so
:meth:`ChunkVAE.to_latent` takes ``sample=True`` there). Large weight vectors are split
into equal-size zero-padded chunks (Section 3.2, :mod:`weightspace.weights.chunking`);
the VAE shares one encoder/decoder over all chunks and tells them apart by learned
embeddings of the chunk index and its layer id ("chunk-conditioning").

Per chunk ``x_m`` (``c`` values) the model is

    ``q(z_m | x_m) = N(mu_m, diag(exp(logvar_m)))``, ``p(x_m | z_m) = N(dec(z_m), I)``,

trained on ``recon + beta * KL`` where ``recon`` is the MSE over *real* (unpadded)
entries and ``KL = mean_k 0.5 (mu_k^2 + exp(logvar_k) - 1 - logvar_k)`` per latent dim
(Higgins et al., 2017). As in Stable Diffusion (``scale_factor = 0.18215``), latents
handed to the diffusion model are multiplied by :attr:`ChunkVAE.latent_scale`, fitted to
``1 / std(mu)`` over the zoo and saved with the VAE.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from weightspace.distributed import SINGLE, World, shard_slice
from weightspace.errors import (
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.generators.data_parallel import (
    check_batch,
    check_same_data,
    cpu_state,
    data_parallel,
    global_sum,
)
from weightspace.generators.training_checkpoint import (
    CheckpointPolicy,
    get_rng_states,
    interrupted,
    losses_list,
    losses_tensor,
    set_rng_states,
    stop_on_sigint,
)

logger = logging.getLogger(__name__)


_SIZES = ("chunk_size", "n_chunks", "n_layer_ids")
"""Fields of :class:`ChunkVAEConfig` that come from the chunk layout (0 = not set yet)."""


@dataclass(frozen=True)
class ChunkVAEConfig:
    """Sizes and loss weight of a :class:`ChunkVAE`.

    Attributes
    ----------
    chunk_size : int
        ``c``, values per chunk (``ChunkLayout.chunk_size``). The three sizes default to 0,
        "taken from the chunk layout" (:meth:`ChunkVAE.from_layout`, :class:`D2NWG`);
        a module cannot be built while any of them is 0.
    n_chunks : int
        ``M``, chunks per model (``ChunkLayout.num_chunks``).
    n_layer_ids : int
        Layer-id vocabulary (``ChunkLayout.num_layers``).
    latent_dim : int
        ``z``, latent values per chunk.
    hidden : int
        MLP width.
    depth : int
        Residual blocks in the encoder and in the decoder.
    beta : float
        KL weight (``beta < 1``: sharper reconstructions, as D2NWG needs).
    dropout : float
    """

    chunk_size: int = 0
    n_chunks: int = 0
    n_layer_ids: int = 0
    latent_dim: int = 8
    hidden: int = 128
    depth: int = 2
    beta: float = 1e-3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("chunk_size", "n_chunks", "n_layer_ids", "latent_dim", "hidden"):
            v = getattr(self, name)
            low = 0 if name in _SIZES else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InvalidParameterError(
                    f"ChunkVAEConfig.{name} must be an int >= {low}, got {v!r}"
                )
        if self.depth < 0 or self.beta < 0 or not 0 <= self.dropout < 1:
            raise InvalidParameterError(
                f"invalid ChunkVAEConfig: depth {self.depth} (>= 0), beta {self.beta} (>= 0), "
                f"dropout {self.dropout} (in [0, 1))"
            )

    def for_layout(self, layout: Any) -> ChunkVAEConfig:
        """This config with the sizes of a :class:`~weightspace.weights.ChunkLayout`."""
        return replace(
            self,
            chunk_size=layout.chunk_size,
            n_chunks=layout.num_chunks,
            n_layer_ids=layout.num_layers,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChunkVAEConfig:
        """Inverse of :meth:`to_dict` (accepts the alias ``n_layers_ids``)."""
        d = dict(d)
        if "n_layers_ids" in d:
            d["n_layer_ids"] = d.pop("n_layers_ids")
        return cls(**d)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean KL per latent dim of ``N(mu, exp(logvar))`` from ``N(0, 1)`` (scalar tensor).

    ``mean 0.5 (mu^2 + exp(logvar) - 1 - logvar)``; 0 exactly when ``mu = logvar = 0``.
    """
    return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)


class _Residual(nn.Module):
    """``h + W2 drop(SiLU(W1 LN(h)))``."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class _ChunkMLP(nn.Module):
    """Per-chunk MLP ``in -> out`` that adds chunk-position and layer-id embeddings."""

    def __init__(self, n_in: int, n_out: int, config: ChunkVAEConfig) -> None:
        super().__init__()
        w = config.hidden
        self.inp = nn.Linear(n_in, w)
        self.pos = nn.Embedding(config.n_chunks, w)
        self.layer = nn.Embedding(config.n_layer_ids, w)
        self.blocks = nn.Sequential(*(_Residual(w, config.dropout) for _ in range(config.depth)))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.SiLU(), nn.Linear(w, n_out))
        nn.init.normal_(self.pos.weight, std=0.02)
        nn.init.normal_(self.layer.weight, std=0.02)

    def forward(self, x: torch.Tensor, layer_id: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.pos.weight + self.layer(layer_id)
        return self.out(self.blocks(h))


class ChunkVAE(nn.Module):
    """beta-VAE mapping chunks (B, M, c) to latents (B, M, z) and back.

    Parameters
    ----------
    config : ChunkVAEConfig
    layer_id : LongTensor, shape (M,)
        ``ChunkLayout.layer_id``, stored as a buffer.

    Notes
    -----
    The encoder reads every value of a chunk, padding included; feed it chunks whose
    padding is zero (as :func:`~weightspace.weights.chunk` produces). :meth:`loss`
    zeroes the padding itself, so it never depends on padded values.
    """

    def __init__(self, config: ChunkVAEConfig, layer_id: torch.Tensor) -> None:
        super().__init__()
        unset = [n for n in _SIZES if getattr(config, n) < 1]
        if unset:
            raise InvalidParameterError(
                f"ChunkVAEConfig sizes {unset} are not set: build the VAE with "
                "ChunkVAE.from_layout(layout, ...) or config.for_layout(layout)"
            )
        layer_id = torch.as_tensor(layer_id, dtype=torch.long).flatten()
        if layer_id.shape != (config.n_chunks,):
            raise ShapeError(f"layer_id must have shape ({config.n_chunks},), got {layer_id.shape}")
        if layer_id.min() < 0 or layer_id.max() >= config.n_layer_ids:
            raise InvalidParameterError(
                f"layer_id values must lie in [0, {config.n_layer_ids}); raise n_layer_ids"
            )
        self.config = config
        self.register_buffer("layer_id", layer_id.clone())
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.encoder = _ChunkMLP(config.chunk_size, 2 * config.latent_dim, config)
        self.decoder = _ChunkMLP(config.latent_dim, config.chunk_size, config)

    @classmethod
    def from_layout(cls, layout: Any, **config: Any) -> ChunkVAE:
        """Build for a :class:`~weightspace.weights.ChunkLayout`; ``config`` sets the rest."""
        return cls(ChunkVAEConfig(**config).for_layout(layout), layout.layer_id)

    @classmethod
    def from_checkpoint(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
    ) -> ChunkVAE:
        """Rebuild from ``config.to_dict()`` and ``state_dict()`` (holds ``layer_id`` and
        ``latent_scale``)."""
        vae = cls(ChunkVAEConfig.from_dict(config), state_dict["layer_id"])
        vae.load_state_dict(dict(state_dict))
        return vae

    # ---------------------------------------------------------------- core
    def _check(self, x: torch.Tensor, last: int, what: str) -> None:
        m = self.config.n_chunks
        if x.dim() != 3 or x.shape[1:] != (m, last):
            raise ShapeError(f"{what} must have shape (B, {m}, {last}), got {tuple(x.shape)}")

    def encode_params(self, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu, logvar`` of ``q(z | chunks)``, each (B, M, z), from chunks (B, M, c)."""
        self._check(chunks, self.config.chunk_size, "chunks")
        mu, logvar = self.encoder(chunks, self.layer_id).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` from ``generator``."""
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def encode(
        self, chunks: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents (B, M, z): a posterior sample if ``sample`` else the posterior mean."""
        mu, logvar = self.encode_params(chunks)
        return self.reparameterize(mu, logvar, generator) if sample else mu

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Chunks (B, M, c) from latents (B, M, z)."""
        self._check(z, self.config.latent_dim, "z")
        return self.decoder(z, self.layer_id)

    def forward(
        self, chunks: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, mu, logvar)``: reconstruction (B, M, c) of a posterior sample."""
        mu, logvar = self.encode_params(chunks)
        return self.decode(self.reparameterize(mu, logvar, generator)), mu, logvar

    def loss(
        self,
        chunks: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        noise_augment: float = 0.0,
        rows: slice | None = None,
    ) -> dict[str, torch.Tensor]:
        """beta-VAE loss on chunks (B, M, c) with padding mask (M, c).

        Padding is zeroed before encoding, so padded values never matter.
        ``noise_augment > 0`` adds Gaussian noise of that std to the real entries of the
        *input* while the target stays clean (p-diff's input noise augmentation).
        ``generator`` drives the reparameterisation and augmentation noise.
        ``rows``: encode and decode only these rows (one data-parallel rank's share); the
        noise is still drawn for all ``B`` rows, in the same order, and each term is this
        share's part of the full batch's mean (the shares add up to the full loss).

        Returns
        -------
        dict
            ``recon``: MSE over real entries (``mask`` True) only; ``kl``: mean KL per
            latent dim; ``loss = recon + beta * kl``. Scalar tensors.
        """
        expected = (self.config.n_chunks, self.config.chunk_size)
        if tuple(mask.shape) != expected:
            raise ShapeError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
        mask = mask.to(chunks.device, torch.bool)
        x = chunks * mask
        inp = x
        if noise_augment > 0:
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            inp = x + noise_augment * noise * mask
        b = chunks.shape[0]
        if rows is None:
            recon, mu, logvar = self(inp, generator)
            share = 1.0
        else:
            x, inp = x[rows], inp[rows]
            mu, logvar = self.encode_params(inp)
            eps_shape = (b, *mu.shape[1:])
            eps = torch.randn(eps_shape, device=mu.device, dtype=mu.dtype, generator=generator)
            recon = self.decode(mu + torch.exp(0.5 * logvar) * eps[rows])
            share = x.shape[0] / b
        n_real = mask.sum() * b
        rec = ((recon - x).pow(2) * mask).sum() / n_real
        kl = gaussian_kl(mu, logvar) * share
        return {"loss": rec + self.config.beta * kl, "recon": rec, "kl": kl}

    # ---------------------------------------------------------------- latent scale
    @torch.no_grad()
    def fit_latent_scale(self, chunks_all: torch.Tensor, batch_size: int = 1024) -> float:
        """Set :attr:`latent_scale` to ``1 / std(mu)`` over a zoo's chunks (N, M, c).

        The std is over every entry of ``mu`` (all models, chunks and latent dims),
        computed in eval mode. Returns the new scale.
        """
        was_training = self.training
        self.eval()
        dev = self.latent_scale.device
        mus = torch.cat(
            [self.encode(b.to(dev), sample=False) for b in chunks_all.split(batch_size)]
        )
        self.train(was_training)
        std = mus.double().std()
        if not bool(torch.isfinite(std)) or std <= 1e-12:
            raise InvalidParameterError(
                f"cannot fit latent_scale: std of the latent means is {float(std)}; fit on "
                "more than one model, or check the VAE for collapse / NaN"
            )
        self.latent_scale.fill_(float(1.0 / std))
        logger.info("latent_scale = %.6g (std of mu %.6g)", float(self.latent_scale), float(std))
        return float(self.latent_scale)

    def to_latent(
        self, chunks: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Diffusion-space latents ``encode(chunks, sample) * latent_scale`` (B, M, z)."""
        return self.encode(chunks, sample, generator) * self.latent_scale

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Chunks ``decode(z / latent_scale)`` (B, M, c) from diffusion-space latents."""
        return self.decode(z / self.latent_scale)


def train_vae(
    vae: ChunkVAE,
    chunks: torch.Tensor,
    mask: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    noise_augment: float = 0.0,
    progress: bool = False,
    checkpoint: CheckpointPolicy | None = None,
    world: World = SINGLE,
) -> list[float]:
    """Train ``vae`` in place with AdamW on a zoo's chunks.

    Parameters
    ----------
    vae : ChunkVAE
        Trained on its current device; left in eval mode.
    chunks : Tensor, shape (N, M, c)
        Normalized chunks (:attr:`WeightSet.chunks <weightspace.weights.WeightSet.chunks>`).
    mask : BoolTensor, shape (M, c)
        ``ChunkLayout.mask``.
    epochs, batch_size : int
    lr, weight_decay : float
    seed : int
        Seeds the shuffling, the reparameterisation and the augmentation noise (two
        ``torch.Generator`` s), so a run is reproducible on one device.
    noise_augment : float
        Std of Gaussian noise added to the *input* chunks (real entries only), the
        target staying clean (p-diff, Wang et al. 2024, input noise augmentation).
    progress : bool
        Show a progress bar over epochs.
    checkpoint : CheckpointPolicy, optional
        Write the whole training state (VAE, optimizer, epoch, losses, random generators)
        at the end of every epoch in which a multiple of ``checkpoint.every`` optimizer
        steps is reached, and at the end; a rerun with the same settings, data and initial
        weights resumes from the newest valid checkpoint and ends with the same weights as
        an uninterrupted run. SIGINT stops after the current epoch, having written one.
    world : World, optional
        Train data-parallel over several processes (``torchrun``): every rank draws the
        same shuffled global batches and noise and encodes its share of each batch under
        ``DistributedDataParallel`` (:mod:`weightspace.generators.data_parallel`); the
        result equals the single-process run up to float noise when ``dropout`` is 0
        (dropout draws from each rank's global generator). Rank 0 writes checkpoints.

    Returns
    -------
    list of float
        Mean training loss (``recon + beta * kl``) of each epoch.
    """
    cfg = vae.config
    if chunks.dim() != 3 or chunks.shape[1:] != (cfg.n_chunks, cfg.chunk_size):
        raise ShapeError(
            f"chunks must have shape (N, {cfg.n_chunks}, {cfg.chunk_size}), got "
            f"{tuple(chunks.shape)}"
        )
    n = chunks.shape[0]
    if n == 0:
        raise EmptyZooError("train_vae got 0 models; build the zoo / weight set first")
    if epochs < 1 or batch_size < 1 or lr <= 0 or noise_augment < 0:
        raise InvalidParameterError(
            f"need epochs >= 1, batch_size >= 1, lr > 0, noise_augment >= 0; got {epochs}, "
            f"{batch_size}, {lr}, {noise_augment}"
        )
    if not bool(torch.isfinite(chunks).all()):
        raise NonFiniteWeightsError("train_vae: chunks contain NaN or inf; clean the zoo first")
    dev = vae.latent_scale.device
    data = chunks.to(dev, torch.float32)
    mask = mask.to(dev, torch.bool)
    check_batch(min(batch_size, n), world, "vae")
    if n > batch_size and n % batch_size:
        check_batch(n % batch_size, world, f"vae (the last batch of each epoch: {n} models)")
    check_same_data(world, "the VAE", data, mask)
    shuffle = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=weight_decay)
    ck = None
    if checkpoint is not None and world.is_main:
        run = {
            "config": asdict(cfg), "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "seed": seed, "weight_decay": weight_decay, "noise_augment": noise_augment,
            "device": dev.type,
        }  # fmt: skip
        ck = checkpoint.open("vae", run, data, mask, *vae.state_dict().values())
    losses: list[float] = []
    start = step = 0
    found = world.broadcast(cpu_state(None if ck is None else ck.load_latest()))
    if found is not None:
        step, state = found
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"], shuffle, noise_gen, device=dev)
        losses, start = losses_list(state["losses"]), int(state["epoch"])
        logger.info("vae: resuming from step %d (epoch %d of %d)", step, start, epochs)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        rows = shard_slice(idx.numel(), world) if world.active else None
        loss = vae.loss(data[idx], mask, noise_gen, noise_augment, rows=rows)["loss"]
        return loss * world.world_size  # DDP averages the ranks' gradients

    step_module = data_parallel(vae, batch_loss, world)
    vae.train()
    per_epoch = math.ceil(n / batch_size)
    bar = tqdm(range(start, epochs), initial=start, total=epochs,
               disable=not progress or not world.is_main, desc="vae")  # fmt: skip
    with stop_on_sigint() as stop:
        for epoch in bar:
            order = torch.randperm(n, generator=shuffle).to(dev)
            total = torch.zeros((), device=dev)
            for idx in order.split(batch_size):
                loss = step_module(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * idx.numel() / world.world_size
            losses.append(global_sum(total, world) / n)
            logger.debug("vae epoch %d/%d: loss %.6g", epoch + 1, epochs, losses[-1])
            before, step = step, step + per_epoch
            last = epoch + 1 == epochs
            requested = world.any(stop.requested)
            if ck is not None and (last or requested or step // ck.every > before // ck.every):
                ck.save(step, {
                    "step": step, "epoch": epoch + 1, "model": vae.state_dict(),
                    "optimizer": opt.state_dict(), "losses": losses_tensor(losses),
                    "rng": get_rng_states(shuffle, noise_gen, device=dev),
                })  # fmt: skip
            if requested and not last:
                world.barrier()  # rank 0's checkpoint is written before anyone stops
                raise interrupted("vae", step, ck)
    vae.eval()
    logger.info("trained ChunkVAE for %d epochs: loss %.6g -> %.6g", epochs, losses[0], losses[-1])
    return losses
