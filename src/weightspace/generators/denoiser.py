"""Denoisers for D2NWG latent diffusion: a chunk transformer and an MLP ablation.

D2NWG (``d2nwg_diffusion_weight_generation_review_discussion.txt``) conditions the
latent diffusion model on the dataset embedding and, for chunked weights, on each
chunk's identity: "we assign a unique class identification to each chunk and train the
diffusion model with chunk-conditioning in addition to dataset conditioning", "we used
layer indexing as class conditioning for layer-wise chunking". The paper's denoiser is a
UNet over the concatenated chunk latents; :class:`ChunkDenoiser` is its transformer
counterpart (a token per chunk, DiT-style), which handles any number of chunks ``M``
and states the chunk identity explicitly through embeddings.

Both denoisers follow the :mod:`weightspace.generators.diffusion` interface

    ``model(x_t, t, cond, drop_cond) -> eps``  (same shape as ``x_t``)

where rows with ``drop_cond = True`` (all rows when ``cond is None``) use a learned
*null* condition embedding, the unconditional branch of classifier-free guidance.
Outputs are zero-initialised, so a fresh model predicts ``eps = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from weightspace.errors import InvalidParameterError, ShapeError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Vaswani et al., 2017; as in improved-diffusion).

    ``emb[:, k] = cos(t * f_k)`` and ``emb[:, dim/2 + k] = sin(t * f_k)`` with
    ``f_k = max_period^(-k / (dim/2))``; a zero column is appended when ``dim`` is odd.

    Parameters
    ----------
    t : Tensor, shape (B,)
        Timesteps (integers or fractions).
    dim : int

    Returns
    -------
    Tensor, shape (B, dim), float32
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ConditionEmbedding(nn.Module):
    """``Linear(cond_dim -> width)`` of the condition, or a learned null embedding.

    The null embedding replaces the projection on rows where ``drop_cond`` is ``True``
    and on every row when ``cond is None`` (classifier-free guidance, Ho & Salimans 2022).
    ``cond_dim = 0`` makes an unconditional model (only the null embedding exists).
    """

    def __init__(self, cond_dim: int, width: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.proj = nn.Linear(cond_dim, width) if cond_dim > 0 else None
        self.null = nn.Parameter(torch.randn(width) * 0.02)

    def forward(
        self, cond: torch.Tensor | None, drop_cond: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """Embedding (batch, width) of ``cond`` (batch, cond_dim) with dropped rows nulled."""
        null = self.null.unsqueeze(0).expand(batch, -1)
        if cond is None:
            return null
        if self.proj is None or cond.shape != (batch, self.cond_dim):
            raise ShapeError(
                f"cond must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}"
                + (" (this model is unconditional: pass cond=None)" if self.proj is None else "")
            )
        emb = self.proj(cond.to(self.null.dtype))
        if drop_cond is None:
            return emb
        if drop_cond.shape != (batch,):
            raise ShapeError(f"drop_cond must have shape ({batch},), got {tuple(drop_cond.shape)}")
        return torch.where(drop_cond.unsqueeze(1), null, emb)


def _time_mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))


def _check_positive(cls_name: str, **values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidParameterError(f"{cls_name}.{name} must be a positive int, got {v!r}")


@dataclass(frozen=True)
class ChunkDenoiserConfig:
    """Sizes of a :class:`ChunkDenoiser`.

    Attributes
    ----------
    n_chunks : int
        ``M``, chunk tokens per sample. ``n_chunks``, ``latent_dim`` and ``n_layer_ids``
        default to 0, "set from the chunk layout and the VAE by the owner"
        (:class:`~weightspace.generators.d2nwg.D2NWG`); no denoiser is built until they are.
    latent_dim : int
        ``z``, latent size of one chunk (the VAE's ``latent_dim``).
    n_layer_ids : int
        Size of the layer-id vocabulary (``ChunkLayout.num_layers``).
    cond_dim : int
        Size ``d`` of the condition vector (0: unconditional).
    width, depth, heads : int
        Transformer width, number of layers, attention heads (``width % heads == 0``).
    dropout : float
    """

    n_chunks: int = 0
    latent_dim: int = 0
    n_layer_ids: int = 0
    cond_dim: int = 64
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_chunks", "latent_dim", "n_layer_ids"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InvalidParameterError(f"ChunkDenoiserConfig.{name} must be an int >= 0")
        _check_positive(
            "ChunkDenoiserConfig",
            width=self.width,
            depth=self.depth,
            heads=self.heads,
        )
        if self.cond_dim < 0 or self.width % self.heads or not 0 <= self.dropout < 1:
            raise InvalidParameterError(
                f"invalid ChunkDenoiserConfig: need cond_dim >= 0 (got {self.cond_dim}), width "
                f"divisible by heads (got {self.width}, {self.heads}), dropout in [0, 1) "
                f"(got {self.dropout})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChunkDenoiserConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(d))


class ChunkDenoiser(nn.Module):
    """Transformer over the ``M`` latent chunk tokens of one model.

    Token ``m`` is ``W_in z_m + P[m] + L[layer_id[m]]`` (input projection, learned chunk
    position and layer-id embeddings). Conditioning is **in-context** (DiT, Peebles & Xie
    2023): two extra tokens are prepended, the timestep token
    ``MLP(sinusoid(t)) + S_0`` and the condition token ``E(cond) + S_1`` (``E`` is
    :class:`ConditionEmbedding`, ``S`` learned slot embeddings), so every chunk attends
    to the time and the dataset. A pre-norm ``nn.TransformerEncoder`` (GELU, final
    LayerNorm) mixes the ``M + 2`` tokens; the chunk tokens are projected back to ``z``
    by a zero-initialised linear layer.

    Parameters
    ----------
    config : ChunkDenoiserConfig
    layer_id : LongTensor, shape (M,)
        Layer of each chunk (``ChunkLayout.layer_id``), stored as a buffer.
    """

    def __init__(self, config: ChunkDenoiserConfig, layer_id: torch.Tensor) -> None:
        super().__init__()
        _check_positive(
            "ChunkDenoiserConfig (set the sizes from the chunk layout)",
            n_chunks=config.n_chunks,
            latent_dim=config.latent_dim,
            n_layer_ids=config.n_layer_ids,
        )
        layer_id = torch.as_tensor(layer_id, dtype=torch.long).flatten()
        if layer_id.shape != (config.n_chunks,):
            raise ShapeError(f"layer_id must have shape ({config.n_chunks},), got {layer_id.shape}")
        if layer_id.numel() and (layer_id.min() < 0 or layer_id.max() >= config.n_layer_ids):
            raise InvalidParameterError(
                f"layer_id values must lie in [0, {config.n_layer_ids}); raise n_layer_ids"
            )
        self.config = config
        w = config.width
        self.register_buffer("layer_id", layer_id.clone())
        self.in_proj = nn.Linear(config.latent_dim, w)
        self.pos_emb = nn.Parameter(torch.randn(config.n_chunks, w) * 0.02)
        self.layer_emb = nn.Embedding(config.n_layer_ids, w)
        nn.init.normal_(self.layer_emb.weight, std=0.02)
        self.slot_emb = nn.Parameter(torch.randn(2, w) * 0.02)
        self.time_mlp = _time_mlp(w)
        self.cond_emb = ConditionEmbedding(config.cond_dim, w)
        layer = nn.TransformerEncoderLayer(
            w,
            config.heads,
            dim_feedforward=4 * w,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.depth, norm=nn.LayerNorm(w), enable_nested_tensor=False
        )
        self.out_proj = nn.Linear(w, config.latent_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_checkpoint(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
    ) -> ChunkDenoiser:
        """Rebuild from ``config.to_dict()`` and ``state_dict()`` (holds ``layer_id``)."""
        model = cls(ChunkDenoiserConfig.from_dict(config), state_dict["layer_id"])
        model.load_state_dict(dict(state_dict))
        return model

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Parameters
        ----------
        x_t : Tensor, shape (B, M, z)
        t : LongTensor, shape (B,)
        cond : Tensor, shape (B, cond_dim), optional
        drop_cond : BoolTensor, shape (B,), optional
            Rows that use the null condition.

        Returns
        -------
        Tensor, shape (B, M, z)
        """
        cfg = self.config
        if x_t.dim() != 3 or x_t.shape[1:] != (cfg.n_chunks, cfg.latent_dim):
            raise ShapeError(
                f"x_t must have shape (B, {cfg.n_chunks}, {cfg.latent_dim}), got {tuple(x_t.shape)}"
            )
        b = x_t.shape[0]
        h = self.in_proj(x_t) + self.pos_emb + self.layer_emb(self.layer_id)
        temb = self.time_mlp(timestep_embedding(t, cfg.width).to(h.dtype))
        cemb = self.cond_emb(cond, drop_cond, b)
        extra = torch.stack([temb, cemb], dim=1) + self.slot_emb
        h = self.encoder(torch.cat([extra, h], dim=1))
        return self.out_proj(h[:, 2:])


@dataclass(frozen=True)
class MLPDenoiserConfig:
    """Sizes of an :class:`MLPDenoiser` (ablation: no chunk structure).

    Attributes
    ----------
    latent_shape : tuple of int
        Shape of one sample without the batch dimension, e.g. ``(M, z)`` or ``(2,)``.
    cond_dim : int
        Size of the condition vector (0: unconditional).
    width, depth : int
        Hidden width and number of residual blocks.
    dropout : float
    """

    latent_shape: tuple[int, ...]
    cond_dim: int
    width: int = 256
    depth: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent_shape", tuple(int(s) for s in self.latent_shape))
        if not self.latent_shape or min(self.latent_shape) < 1:
            raise InvalidParameterError(
                f"latent_shape must be non-empty positive sizes, got {self.latent_shape}"
            )
        _check_positive("MLPDenoiserConfig", width=self.width, depth=self.depth)
        if self.cond_dim < 0 or not 0 <= self.dropout < 1:
            raise InvalidParameterError(
                f"invalid MLPDenoiserConfig: cond_dim {self.cond_dim}, dropout {self.dropout}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "latent_shape": list(self.latent_shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MLPDenoiserConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**dict(d), "latent_shape": tuple(d["latent_shape"])})


class _Block(nn.Module):
    """``h + W2 drop(SiLU(W1 LN(h) + E(emb)))``: a residual MLP block fed the embedding."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.emb = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.drop(nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb))))


class MLPDenoiser(nn.Module):
    """Residual MLP over the flattened latent, for ablations and low-dimensional data.

    ``h_0 = W_in flatten(x_t)``, ``emb = SiLU(MLP(sinusoid(t)) + E(cond))`` and
    ``depth`` residual blocks each fed ``emb``; the zero-initialised output layer maps
    back to ``latent_shape``. Same call signature as :class:`ChunkDenoiser`.
    """

    def __init__(self, config: MLPDenoiserConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.n_in = math.prod(config.latent_shape)
        self.in_proj = nn.Linear(self.n_in, w)
        self.time_mlp = _time_mlp(w)
        self.cond_emb = ConditionEmbedding(config.cond_dim, w)
        self.blocks = nn.ModuleList(_Block(w, config.dropout) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, self.n_in)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_checkpoint(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
    ) -> MLPDenoiser:
        """Rebuild from ``config.to_dict()`` and ``state_dict()``."""
        model = cls(MLPDenoiserConfig.from_dict(config))
        model.load_state_dict(dict(state_dict))
        return model

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise: (B, *latent_shape) -> (B, *latent_shape)."""
        shape = self.config.latent_shape
        if tuple(x_t.shape[1:]) != shape:
            raise ShapeError(f"x_t must have shape (B, *{shape}), got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        h = self.in_proj(x_t.reshape(b, self.n_in))
        emb = self.time_mlp(timestep_embedding(t, self.config.width).to(h.dtype))
        emb = nn.functional.silu(emb + self.cond_emb(cond, drop_cond, b))
        for block in self.blocks:
            h = block(h, emb)
        return self.out_proj(self.norm(h)).view(b, *shape)
