"""Contrastive alignment of dataset embeddings to the frozen VAE latent space (D2NWG).

The D2NWG authors train the dataset encoder in a separate stage (OpenReview discussion
of Section 3.3):

    *"Due to convergence challenges in joint optimization, we adopted a two-stage
    process: first training and freezing the VAE encoder, then aligning the Set
    Transformer outputs to the VAE's latent space using contrastive loss. During
    diffusion, only a single dense linear layer adapting the Set Transformer and the
    diffusion model are optimized for simplicity."*

and explain why: *"this approach led to convergence issues, particularly when jointly
optimizing the diffusion model with the set transformer. [...] the dynamics of weight
generation require a closer alignment between the latent space of the weights and the
dataset representation."*

This module is that second stage. With ``z_i`` the frozen VAE latent of pretrained model
``i`` and ``e_i`` the Set Transformer embedding of (samples of) the dataset it was
trained on, :func:`align_encoder` trains the encoder and a projection ``g`` of the
latents (:class:`AlignmentHead`) with the symmetric InfoNCE / CLIP loss
(:func:`clip_loss`, Radford et al., 2021)::

    s_ij = cos(e_i, g(z_j)) / tau
    L    = 1/2 [ CE_rows(s, T) + CE_cols(s, T) ] - H(T)

A zoo usually holds several models per dataset, so the same dataset appears several
times in a batch. Treating those copies as negatives of each other would push apart
embeddings that should coincide, so rows carry a group id (the dataset) and the target
``T`` of row ``i`` is uniform over the columns of its group; subtracting the targets'
entropy ``H(T)`` (a constant) makes ``0`` the minimum with or without duplicates, so a
perfectly aligned batch costs nothing whatever its group structure. :func:`retrieval_accuracy`
measures the result: how often the nearest latent of a dataset embedding belongs to the
same dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from weightspace.device import module_device
from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["AlignmentHead", "SetSampler", "align_encoder", "clip_loss", "retrieval_accuracy"]

log = logging.getLogger(__name__)

SetBatch = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
SetSampler = Callable[[torch.Tensor, torch.Generator], SetBatch]
"""``sampler(rows (b,) int64, generator) -> x (b, K, S, d)`` or ``(x, mask, class_mask)``.

Returns fresh per-class feature sets of the datasets of the given rows, drawn with
``generator`` (a CPU ``torch.Generator``) so that runs are reproducible."""


def _group_targets(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` group ids -> ``(B, B)`` rows summing to 1, uniform over the same group."""
    same = (labels[:, None] == labels[None, :]).to(torch.float32)
    return same / same.sum(dim=1, keepdim=True)


def clip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.1,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss between two batches of paired embeddings.

    ``s = normalize(a) normalize(b)^T / temperature`` and the loss is the mean of the
    cross-entropy of the rows of ``s`` (``a -> b``) and of its columns (``b -> a``)
    against the targets: the diagonal without ``labels`` (the CLIP loss); with
    ``labels``, row ``i``'s target is uniform over the ``n_g`` columns ``j`` with
    ``labels[j] == labels[i]`` (several models trained on the same dataset are all
    positives of each other, never negatives). With labels the targets' entropy
    ``mean_i log n_{group(i)}`` is subtracted, i.e. the loss is the KL divergence from
    the targets: the gradients are those of the cross-entropy, and a batch whose
    duplicates are aligned has loss ``0`` as a batch without duplicates does.

    Parameters
    ----------
    a : Tensor, shape (B, e)
        First modality (e.g. dataset embeddings).
    b : Tensor, shape (B, e)
        Second modality (e.g. projected VAE latents); row ``i`` pairs with ``a[i]``.
    temperature : float
        ``tau > 0``; lower is sharper.
    labels : Tensor of int, shape (B,), optional
        Group id of each pair (e.g. dataset id).

    Returns
    -------
    Tensor, shape ()
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ShapeError(
            f"clip_loss needs two (B, e) tensors of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if not temperature > 0:
        raise InvalidParameterError(f"clip_loss temperature must be > 0, got {temperature}")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if labels is None:
        target = torch.arange(a.shape[0], device=a.device)
    else:
        if labels.shape != (a.shape[0],):
            raise ShapeError(f"labels must have shape ({a.shape[0]},), got {tuple(labels.shape)}")
        target = _group_targets(labels.to(a.device)).to(logits.dtype)
    # The same-group relation is symmetric, so the column targets equal the row targets.
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if labels is None:
        return loss
    entropy = -(target * target.clamp_min(1e-30).log()).sum(dim=1).mean()
    return loss - entropy


class AlignmentHead(nn.Module):
    """Projection of one modality into the shared contrastive space.

    Parameters
    ----------
    in_dim : int
        Input width (e.g. the flattened VAE latent).
    out_dim : int
        Width of the shared space (the dataset encoder's ``out_dim``).
    hidden_dim : int, optional
        ``None``: one linear layer (as CLIP). Otherwise ``Linear -> GELU -> Linear``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidParameterError(f"AlignmentHead {name} must be >= 1, got {value!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` (or ``(B, ...)`` flattening to ``in_dim``) -> ``(B, out_dim)``."""
        z = z.reshape(z.shape[0], -1)
        if z.shape[1] != self.in_dim:
            raise ShapeError(
                f"AlignmentHead expects inputs of {self.in_dim} features, got {z.shape[1]}; "
                "build it with in_dim equal to the (flattened) latent size"
            )
        return self.net(z)


def _unpack(batch: SetBatch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x, mask, class_mask)`` of a sampler's output (a bare tensor has no masks)."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    x, mask, class_mask = batch
    return x, mask, class_mask


@dataclass(frozen=True)
class _AlignData:
    """The rows :func:`align_encoder` pairs: dataset sets with frozen latents ``(N, L)``."""

    sets: torch.Tensor | SetSampler
    latents: torch.Tensor  # (N, L), on the training device
    groups: torch.Tensor  # (N,), on the training device
    mask: torch.Tensor | None
    class_mask: torch.Tensor | None

    def sets_of(
        self, rows: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(x, mask, class_mask)`` of the given rows on the training device.

        A sampler draws fresh sets with ``gen``; a tensor ``sets`` is indexed.
        """
        if isinstance(self.sets, torch.Tensor):
            x = self.sets[rows.to(self.sets.device)]
            m = None if self.mask is None else self.mask[rows.to(self.mask.device)]
            cm = (
                None
                if self.class_mask is None
                else self.class_mask[rows.to(self.class_mask.device)]
            )
        else:
            x, m, cm = _unpack(self.sets(rows, gen))
        device = self.latents.device
        return tuple(None if t is None else t.to(device) for t in (x, m, cm))


def _check_align_args(
    sets: torch.Tensor | SetSampler,
    latents: torch.Tensor,
    groups: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
) -> None:
    """Raise on mismatched shapes or invalid settings of :func:`align_encoder`."""
    N = latents.shape[0]
    if latents.ndim < 2 or groups.shape != (N,):
        raise ShapeError(
            f"latents must be (N, L) and groups (N,); got {tuple(latents.shape)} and "
            f"{tuple(groups.shape)}"
        )
    if isinstance(sets, torch.Tensor) and sets.shape[0] != N:
        raise ShapeError(f"sets has {sets.shape[0]} rows but latents has {N}; pair them 1:1")
    if N < 2:
        raise InvalidParameterError(f"contrastive alignment needs at least 2 rows, got {N}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParameterError(f"align_encoder {name} must be >= 1, got {value!r}")
    if batch_size < 2:
        raise InvalidParameterError("align_encoder batch_size must be >= 2 (contrastive loss)")
    if not lr > 0:
        raise InvalidParameterError(f"align_encoder lr must be > 0, got {lr}")


def _batch_loss(
    encoder: nn.Module,
    projection_latent: nn.Module,
    data: _AlignData,
    rows: torch.Tensor,
    gen: torch.Generator,
    temperature: float,
) -> torch.Tensor:
    """:func:`clip_loss` between the embeddings of ``rows``' sets and their projected latents."""
    x, m, cm = data.sets_of(rows, gen)
    rows_d = rows.to(data.latents.device)
    emb = encoder(x, m, cm)
    proj = projection_latent(data.latents[rows_d])
    if emb.shape != proj.shape:
        raise ShapeError(
            f"encoder output {tuple(emb.shape)} and projected latents "
            f"{tuple(proj.shape)} differ; build the projection with out_dim equal to "
            "the encoder's out_dim"
        )
    return clip_loss(emb, proj, temperature, labels=data.groups[rows_d])


def _align_epoch(
    modules: tuple[nn.Module, nn.Module],
    data: _AlignData,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    batch_size: int,
    temperature: float,
) -> torch.Tensor:
    """One pass over the rows in a random order; the mean loss (a 0-dim device tensor).

    ``modules`` is ``(encoder, projection_latent)``. A last batch of one row is skipped.
    """
    N = data.latents.shape[0]
    order = torch.randperm(N, generator=gen)
    total = torch.zeros((), device=data.latents.device)
    steps = 0
    for start in range(0, N, batch_size):
        rows = order[start : start + batch_size]
        if rows.numel() < 2:
            continue
        loss = _batch_loss(*modules, data, rows, gen, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total = total + loss.detach()
        steps += 1
    return total / max(steps, 1)


def align_encoder(
    encoder: nn.Module,
    projection_latent: nn.Module,
    sets: torch.Tensor | SetSampler,
    latents: torch.Tensor,
    groups: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    *,
    mask: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    weight_decay: float = 0.0,
) -> list[float]:
    """Align a dataset encoder to frozen VAE latents with :func:`clip_loss`.

    Trains ``encoder`` and ``projection_latent`` in place (AdamW); ``latents`` are
    constants (the VAE is trained and frozen first, as in D2NWG). Each epoch visits the
    ``N`` rows in a random order (from ``seed``) in batches of ``batch_size``; a last
    batch of a single row is skipped (a contrastive loss needs two).

    Parameters
    ----------
    encoder : nn.Module
        ``encoder(x, mask, class_mask) -> (b, e)``, e.g. a
        :class:`~weightspace.generators.dataset_encoder.SetDatasetEncoder`.
    projection_latent : nn.Module
        ``(b, L) -> (b, e)``, e.g. ``AlignmentHead(L, encoder.out_dim)``.
    sets : Tensor of shape (N, K, S, d), or SetSampler
        Per-class feature sets of row ``i``'s dataset, or a sampler drawing fresh ones
        for given rows each step (see :data:`SetSampler`).
    latents : Tensor, shape (N, L)
        Frozen VAE latents (flattened per model) of the pretrained model of row ``i``.
    groups : Tensor of int, shape (N,)
        Dataset id of each row; rows of one dataset are positives of each other.
    epochs, batch_size : int
        Passes over the rows and rows per step.
    lr : float
        Learning rate.
    temperature : float
        CLIP temperature.
    seed : int
        Seeds the row order and the sampler's generator; same seed and device, same run.
    progress : bool
        Show a progress bar over epochs.
    mask : Tensor of bool, shape (N, K, S), optional
        Sample mask of a tensor ``sets``.
    class_mask : Tensor of bool, shape (N, K), optional
        Class mask of a tensor ``sets``.
    weight_decay : float
        AdamW weight decay.

    Returns
    -------
    list of float
        Mean loss of each epoch.
    """
    _check_align_args(sets, latents, groups, epochs, batch_size, lr)
    device = module_device(encoder)
    params = list(encoder.parameters()) + list(projection_latent.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    gen = torch.Generator().manual_seed(int(seed))
    data = _AlignData(sets, latents.detach().to(device), groups.to(device), mask, class_mask)
    modes = (encoder.training, projection_latent.training)
    encoder.train()
    projection_latent.train()
    history: list[torch.Tensor] = []
    bar = tqdm(range(epochs), desc="align dataset encoder", disable=not progress)
    for _ in bar:
        history.append(
            _align_epoch((encoder, projection_latent), data, opt, gen, batch_size, temperature)
        )
        if progress:
            bar.set_postfix(loss=f"{history[-1].item():.4f}")
    encoder.train(modes[0])
    projection_latent.train(modes[1])
    losses = torch.stack(history).tolist()
    log.info("dataset encoder alignment: loss %.4f -> %.4f", losses[0], losses[-1])
    return losses


@torch.no_grad()
def retrieval_accuracy(
    emb_a: torch.Tensor,
    emb_b: torch.Tensor,
    groups: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
) -> float:
    """Fraction of rows of ``emb_a`` whose most cosine-similar row of ``emb_b`` is of their group.

    Call with the arguments swapped for the other direction. Chance level is about the
    mean over rows of ``n_{group(i)} / N``.

    Parameters
    ----------
    emb_a : Tensor, shape (N, e)
        Queries (e.g. dataset embeddings).
    emb_b : Tensor, shape (M, e)
        Candidates (e.g. projected VAE latents).
    groups : Tensor of int, shape (N,) or pair ``(groups_a (N,), groups_b (M,))``
        Group of each row; one tensor when ``N == M`` and both share it.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    ga, gb = groups if isinstance(groups, tuple | list) else (groups, groups)
    if emb_a.ndim != 2 or emb_b.ndim != 2 or emb_a.shape[1] != emb_b.shape[1]:
        raise ShapeError(
            f"retrieval_accuracy needs (N, e) and (M, e) embeddings, got {tuple(emb_a.shape)} "
            f"and {tuple(emb_b.shape)}"
        )
    if ga.shape != (emb_a.shape[0],) or gb.shape != (emb_b.shape[0],):
        raise ShapeError("groups must give one id per row of each embedding")
    sim = F.normalize(emb_a, dim=-1) @ F.normalize(emb_b, dim=-1).T
    nearest = sim.argmax(dim=1)
    hits = gb.to(ga.device)[nearest.to(ga.device)] == ga
    return float(hits.float().mean())
