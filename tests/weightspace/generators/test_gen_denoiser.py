"""Tests of weightspace.generators.denoiser: chunk transformer and MLP denoisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators import (
    ChunkDenoiser,
    ChunkDenoiserConfig,
    GaussianDiffusion,
    MLPDenoiser,
    MLPDenoiserConfig,
    make_schedule,
    timestep_embedding,
)

LAYER_ID = torch.tensor([0, 0, 0, 1, 2])


def chunk_model(**kw) -> ChunkDenoiser:
    torch.manual_seed(0)
    cfg = ChunkDenoiserConfig(
        **{
            "n_chunks": 5,
            "latent_dim": 3,
            "n_layer_ids": 3,
            "cond_dim": 4,
            "width": 32,
            "depth": 2,
            "heads": 4,
            **kw,
        }
    )
    return ChunkDenoiser(cfg, LAYER_ID).eval()


def mlp_model() -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(MLPDenoiserConfig((5, 3), cond_dim=4, width=32, depth=2)).eval()


def randomize_output(model: nn.Module) -> nn.Module:
    """The output layer starts at zero; give it weights so outputs carry information."""
    nn.init.normal_(model.out_proj.weight, std=0.3)
    nn.init.normal_(model.out_proj.bias, std=0.3)
    return model


def inputs(b: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 5, 3, generator=g),
        torch.randint(0, 100, (b,), generator=g),
        torch.randn(b, 4, generator=g),
    )


def test_timestep_embedding_values() -> None:
    t = torch.tensor([0, 3, 7])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    freqs = [math.exp(-math.log(10000) * k / 4) for k in range(4)]
    assert emb[1, 2].item() == pytest.approx(math.cos(3 * freqs[2]), abs=1e-6)
    assert emb[2, 5].item() == pytest.approx(math.sin(7 * freqs[1]), abs=1e-6)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("make", [chunk_model, mlp_model])
def test_shape_and_zero_init(make) -> None:
    model = make()
    x, t, c = inputs()
    out = model(x, t, c, None)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))
    diff = GaussianDiffusion(make_schedule("linear", 100))
    loss = diff.training_loss(model, x, cond=c, p_uncond=0.5)
    assert 0.5 < loss.item() < 1.6  # eps_hat = 0: the loss is mean(eps^2) ~ 1
    loss.backward()  # gradients reach the zero output layer
    assert model.out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("make", [chunk_model, mlp_model])
def test_drop_cond_equals_none_and_cond_matters(make) -> None:
    model = randomize_output(make())
    x, t, c = inputs()
    drop = torch.tensor([True, False, True, False, False, True])
    with torch.no_grad():
        uncond = model(x, t, None, None)
        cond = model(x, t, c, None)
        mixed = model(x, t, c, drop)
    assert torch.allclose(mixed[drop], uncond[drop], atol=1e-6)
    assert torch.allclose(mixed[~drop], cond[~drop], atol=1e-6)
    assert not torch.allclose(cond, uncond, atol=1e-3)
    with pytest.raises(ShapeError):
        model(x, t, c[:, :3], None)
    with pytest.raises(ShapeError):
        model(x, t, c, drop[:4])


@pytest.mark.parametrize("make", [chunk_model, mlp_model])
def test_batch_permutation_equivariance(make) -> None:
    model = randomize_output(make())
    x, t, c = inputs(7)
    drop = torch.tensor([True, False, False, True, False, False, True])
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, t, c, drop)
        out_p = model(x[perm], t[perm], c[perm], drop[perm])
        t_other = model(x, t + 1, c, drop)
    assert torch.allclose(out[perm], out_p, atol=1e-5)
    assert not torch.allclose(out, t_other, atol=1e-4)  # the timestep is used


def test_chunk_identity_embeddings_matter() -> None:
    """Equal latent tokens at different positions / layers get different predictions."""
    model = randomize_output(chunk_model())
    x, t, c = inputs(2)
    x[:, 1] = x[:, 0]
    with torch.no_grad():
        out = model(x, t, c, None)
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-4)
    other = randomize_output(chunk_model())
    other.layer_id.copy_(torch.tensor([0, 1, 2, 1, 2]))
    with torch.no_grad():
        assert not torch.allclose(other(x, t, c, None), out, atol=1e-4)


@pytest.mark.parametrize("make", [chunk_model, mlp_model])
def test_checkpoint_roundtrip(make) -> None:
    model = randomize_output(make())
    cls = type(model)
    back = cls.from_checkpoint(model.config.to_dict(), model.state_dict()).eval()
    assert back.config == model.config
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(back(x, t, c, None), model(x, t, c, None))


def test_unconditional_model_and_bad_configs() -> None:
    model = randomize_output(chunk_model(cond_dim=0))
    x, t, c = inputs()
    assert model(x, t, None, None).shape == x.shape
    with pytest.raises(ShapeError):
        model(x, t, c, None)
    with pytest.raises(InvalidParameterError):
        ChunkDenoiserConfig(5, 3, 3, 4, width=30, heads=4)
    with pytest.raises(InvalidParameterError):
        ChunkDenoiser(ChunkDenoiserConfig(5, 3, 2, 4), LAYER_ID)  # layer id 2 >= 2
    with pytest.raises(ShapeError):
        ChunkDenoiser(ChunkDenoiserConfig(4, 3, 3, 4), LAYER_ID)
    with pytest.raises(ShapeError):
        chunk_model()(x[:, :4], t, c, None)


def test_chunk_denoiser_fits_a_tiny_latent_set() -> None:
    """A few steps of eps-training on 4 fixed latents lower the loss clearly."""
    model = chunk_model()
    model.train()
    diff = GaussianDiffusion(make_schedule("linear", 50))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 5, 3, generator=g).repeat(16, 1, 1)
    cond = torch.randn(4, 4, generator=g).repeat(16, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = diff.training_loss(model, x0, cond=cond, p_uncond=0.1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5
