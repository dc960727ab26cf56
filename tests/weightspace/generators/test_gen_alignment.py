"""Contrastive alignment: CLIP loss maths, group labels, retrieval, a short training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.alignment import (
    AlignmentHead,
    align_encoder,
    clip_loss,
    retrieval_accuracy,
)
from weightspace.generators.dataset_encoder import DatasetEncoderConfig, SetDatasetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clip_loss_hand_computed_2x2() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # normalised: (0.6, 0.8), (0, 1)
    t = 0.5
    s = torch.tensor([[0.6, 0.0], [0.8, 1.0]]) / t  # cosine similarities / t
    rows = -(s[0, 0] - torch.logsumexp(s[0], 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))
    cols = -(s[0, 0] - torch.logsumexp(s[:, 0], 0)) - (s[1, 1] - torch.logsumexp(s[:, 1], 0))
    expected = 0.5 * (rows / 2 + cols / 2)
    # written out by hand: rows = -(1.2 - log(e^1.2 + 1)) - (2 - log(e^1.6 + e^2))
    by_hand_rows = -(1.2 - math.log(math.exp(1.2) + 1)) - (
        2 - math.log(math.exp(1.6) + math.exp(2))
    )
    assert rows.item() == pytest.approx(by_hand_rows, rel=1e-6)
    assert clip_loss(a, b, temperature=t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_clip_loss_minimum_when_aligned() -> None:
    torch.manual_seed(0)
    a = F.normalize(torch.randn(6, 16), dim=-1)
    assert clip_loss(a, a, temperature=0.01).item() < 1e-3
    assert clip_loss(a, 3 * a, temperature=0.01).item() < 1e-3  # scale does not matter
    assert clip_loss(a, a[torch.randperm(6)], temperature=0.01).item() > 1.0


def test_group_labels_make_duplicates_positives() -> None:
    """Two copies of one dataset: aligned copies cost nothing and are not pushed apart."""
    u, v, w = torch.eye(3)
    a = torch.stack([u, u, v, w])
    labels = torch.tensor([0, 0, 1, 2])
    assert clip_loss(a, a, 0.05, labels=labels).item() == pytest.approx(0.0, abs=1e-5)
    # without labels the copy is a negative: the same batch is penalised by log(2) / 2
    assert clip_loss(a, a, 0.05).item() == pytest.approx(0.5 * math.log(2), abs=1e-4)
    # two models of one dataset with different latents b0 != b1, one dataset embedding
    eps = 0.3
    b = torch.stack([u + eps * v, u - eps * v, v, w])
    e = a.clone().requires_grad_(True)
    (g_lab,) = torch.autograd.grad(clip_loss(e, b, 0.1, labels=labels), e)
    (g_nolab,) = torch.autograd.grad(clip_loss(e, b, 0.1), e)
    assert g_lab[:2].abs().max() < 1e-3  # u is equally close to both: ~optimal
    assert g_nolab[:2].abs().max() > 1e-1  # plain CLIP pulls each copy to one latent
    # labels that are all distinct reduce to the plain loss
    distinct = clip_loss(a, b, 0.1, labels=torch.arange(4))
    assert distinct.item() == pytest.approx(clip_loss(a, b, 0.1).item(), rel=1e-6)


def test_clip_loss_errors() -> None:
    with pytest.raises(ShapeError):
        clip_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(InvalidParameterError, match="temperature"):
        clip_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)


def test_retrieval_accuracy() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    b = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # nearest rows of b: a0 -> b1, a1 -> b2, a2 -> b0
    assert retrieval_accuracy(a, b, torch.tensor([0, 1, 2])) == 0.0
    assert retrieval_accuracy(a, b, torch.tensor([0, 0, 1])) == pytest.approx(1 / 3)
    assert retrieval_accuracy(a, b, torch.tensor([0, 0, 0])) == 1.0
    assert retrieval_accuracy(a, b, (torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1]))) == 1.0


def test_alignment_head_shapes() -> None:
    head = AlignmentHead(12, 4, hidden_dim=8)
    assert head(torch.randn(5, 3, 4)).shape == (5, 4)  # flattens latents
    with pytest.raises(ShapeError, match="in_dim"):
        head(torch.randn(5, 11))


G, R, K, S, FD, LAT = 6, 3, 3, 4, 8, 10  # datasets, models per dataset, classes, shots, ...


def synthetic() -> tuple:
    """Datasets = Gaussian classes; a model's latent is a linear map of its class means."""
    g = torch.Generator().manual_seed(1)
    means = torch.randn(G, K, FD, generator=g)
    groups = torch.arange(G).repeat_interleave(R)  # (N,)
    W = torch.randn(LAT, K * FD, generator=g) / math.sqrt(K * FD)
    latents = means[groups].reshape(G * R, -1) @ W.T + 0.1 * torch.randn(G * R, LAT, generator=g)

    def sampler(rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        mu = means[groups[rows]]  # (b, K, FD)
        return mu[:, :, None] + 0.5 * torch.randn(len(rows), K, S, FD, generator=gen)

    return sampler, latents, groups


def build(seed: int = 0) -> tuple[SetDatasetEncoder, AlignmentHead]:
    torch.manual_seed(seed)
    cfg = DatasetEncoderConfig(
        feature_dim=FD, dim=16, heads=2, n_inducing=4, depth=1, out_dim=8, max_classes=K
    )
    return SetDatasetEncoder(cfg), AlignmentHead(LAT, 8)


def accuracy(enc: SetDatasetEncoder, head: AlignmentHead, sampler, latents, groups) -> float:
    with torch.no_grad():
        x = sampler(torch.arange(len(groups)), torch.Generator().manual_seed(123))
        return retrieval_accuracy(enc(x), head(latents), groups)


def test_alignment_raises_retrieval_accuracy() -> None:
    sampler, latents, groups = synthetic()
    enc, head = build()
    before = accuracy(enc, head, sampler, latents, groups)
    losses = align_encoder(
        enc, head, sampler, latents, groups, epochs=25, batch_size=9, lr=1e-2, seed=0
    )
    after = accuracy(enc, head, sampler, latents, groups)
    chance = R / (G * R)
    assert len(losses) == 25 and losses[-1] < 0.3 * losses[0]
    assert after >= 0.8 > chance + 0.5, (before, after)
    assert after > before + 0.3, (before, after)


def test_alignment_is_deterministic_and_accepts_tensors() -> None:
    sampler, latents, groups = synthetic()
    sets = sampler(torch.arange(len(groups)), torch.Generator().manual_seed(7))
    runs = []
    for _ in range(2):
        enc, head = build()
        runs.append(align_encoder(enc, head, sets, latents, groups, 3, 8, 1e-3, seed=5))
    assert runs[0] == runs[1]
    enc, head = build()
    other = align_encoder(enc, head, sets, latents, groups, 3, 8, 1e-3, seed=6)
    assert other != runs[0]


def test_align_encoder_errors() -> None:
    sampler, latents, groups = synthetic()
    enc, _ = build()
    with pytest.raises(ShapeError, match="out_dim"):
        align_encoder(enc, AlignmentHead(LAT, 5), sampler, latents, groups, 1, 4, 1e-3)
    with pytest.raises(ShapeError, match="groups"):
        align_encoder(enc, AlignmentHead(LAT, 8), sampler, latents, groups[:-1], 1, 4, 1e-3)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        align_encoder(enc, AlignmentHead(LAT, 8), sampler, latents, groups, 1, 1, 1e-3)
