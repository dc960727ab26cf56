"""Tests of weightspace.generators.vae: the chunk beta-VAE, its loss, training, scale."""

from __future__ import annotations

import pytest
import torch

from weightspace.errors import EmptyZooError, NonFiniteWeightsError, ShapeError
from weightspace.generators import ChunkVAE, ChunkVAEConfig, gaussian_kl, train_vae
from weightspace.weights import PARAMETER, ChunkLayout, ParameterSpec, chunk


def layout() -> ChunkLayout:
    """Layer "a" (44 values: 3 chunks, the last padded), layer "b" (15: 1 padded chunk)."""
    spec = ParameterSpec.from_entries(
        [
            ("a.weight", (4, 10), PARAMETER),
            ("a.bias", (4,), PARAMETER),
            ("b.weight", (3, 4), PARAMETER),
            ("b.bias", (3,), PARAMETER),
        ]
    )
    return ChunkLayout.from_spec(spec, 16)


def low_rank_chunks(n: int = 128, rank: int = 3, seed: int = 0) -> torch.Tensor:
    """(n, M, c) chunks of a rank-``rank`` zoo (plus 1% noise), zero padded."""
    lay = layout()
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(n, rank, generator=g) @ torch.randn(rank, lay.total_numel, generator=g)
    flat = flat / rank**0.5 + 0.01 * torch.randn(n, lay.total_numel, generator=g)
    return chunk(flat, lay)


def small_vae(**kw) -> ChunkVAE:
    torch.manual_seed(0)
    return ChunkVAE.from_layout(layout(), **{"latent_dim": 4, "hidden": 32, "depth": 1, **kw})


def test_shapes_and_finite_loss() -> None:
    vae = small_vae()
    lay = layout()
    assert (lay.num_chunks, lay.chunk_size) == (4, 16)
    x = low_rank_chunks(6)
    recon, mu, logvar = vae(x)
    assert recon.shape == (6, 4, 16)
    assert mu.shape == logvar.shape == (6, 4, 4)
    assert vae.encode(x, sample=False).shape == (6, 4, 4)
    assert torch.equal(vae.encode(x, sample=False), mu)
    assert vae.decode(mu).shape == (6, 4, 16)
    parts = vae.loss(x, lay.mask)
    assert set(parts) == {"loss", "recon", "kl"}
    assert all(bool(torch.isfinite(v)) and v.dim() == 0 for v in parts.values())
    expected = parts["recon"] + vae.config.beta * parts["kl"]
    assert torch.allclose(parts["loss"], expected)
    with pytest.raises(ShapeError):
        vae.encode(x[:, :3])
    with pytest.raises(ShapeError):
        vae.loss(x, lay.mask[:, :8])


def test_sampling_uses_generator_and_posterior_variance() -> None:
    vae = small_vae()
    x = low_rank_chunks(5)
    a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    c = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    mu, logvar = vae.encode_params(x)
    zs = torch.stack([vae.reparameterize(mu, logvar) for _ in range(4000)])
    assert torch.allclose(zs.std(0), (0.5 * logvar).exp(), rtol=0.08)


def test_kl_closed_form() -> None:
    zero = torch.zeros(3, 4, 5)
    assert gaussian_kl(zero, zero).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dim; KL(N(0, e) || N(0, 1)) = 0.5 (e - 2)
    assert gaussian_kl(torch.ones(2, 3), torch.zeros(2, 3)).item() == pytest.approx(0.5)
    assert gaussian_kl(zero, torch.ones(3, 4, 5)).item() == pytest.approx(0.5 * (2.718281828 - 2))


def test_recon_ignores_padding() -> None:
    vae = small_vae()
    lay = layout()
    x = low_rank_chunks(8)
    garbage = x + 5.0 * torch.randn(x.shape) * (~lay.mask)
    assert not torch.equal(x, garbage)
    a = vae.loss(x, lay.mask, generator=torch.Generator().manual_seed(0))
    b = vae.loss(garbage, lay.mask, generator=torch.Generator().manual_seed(0))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ...and recon is the MSE over real entries only: by hand, with logvar forced to -30
    # (the posterior sample then equals mu to float precision)
    with torch.no_grad():
        head = vae.encoder.out[-1]  # Linear(hidden, 2 * latent_dim): [mu | logvar]
        head.weight[4:] = 0.0
        head.bias[4:] = -30.0
        err = ((vae.decode(vae.encode(x)) - x) ** 2)[:, lay.mask].mean()
        assert vae.loss(x, lay.mask)["recon"].item() == pytest.approx(err.item(), rel=1e-5)


def test_train_vae_reduces_reconstruction_and_is_deterministic() -> None:
    lay = layout()
    x = low_rank_chunks(128)
    vae = small_vae(hidden=64)

    def recon_error(model: ChunkVAE) -> float:
        with torch.no_grad():
            out = model.decode(model.encode(x))
        return ((out - x) ** 2)[:, lay.mask].mean().item()

    before = recon_error(vae)
    losses = train_vae(vae, x, lay.mask, epochs=40, batch_size=32, lr=3e-3, seed=0)
    after = recon_error(vae)
    assert len(losses) == 40 and all(v == v for v in losses)  # no NaN
    assert losses[-1] < 0.2 * losses[0]
    assert after < 0.05 * before, (before, after)
    assert not vae.training

    again = small_vae(hidden=64)
    assert train_vae(again, x, lay.mask, epochs=3, batch_size=32, lr=3e-3, seed=0) == losses[:3]
    noisy = small_vae(hidden=64)
    aug = train_vae(noisy, x, lay.mask, epochs=3, batch_size=32, lr=3e-3, seed=0, noise_augment=0.1)
    assert aug != losses[:3]


def test_train_vae_rejects_bad_input() -> None:
    lay = layout()
    vae = small_vae()
    x = low_rank_chunks(4)
    with pytest.raises(EmptyZooError):
        train_vae(vae, x[:0], lay.mask, epochs=1, batch_size=2, lr=1e-3, seed=0)
    bad = x.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError):
        train_vae(vae, bad, lay.mask, epochs=1, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ShapeError):
        train_vae(vae, x[:, :, :8], lay.mask, epochs=1, batch_size=2, lr=1e-3, seed=0)


def test_latent_scale_and_roundtrip_through_checkpoint() -> None:
    vae = small_vae()
    x = low_rank_chunks(64)
    with torch.no_grad():
        raw_std = vae.encode(x).std().item()
        assert abs(raw_std - 1.0) > 0.1  # the test means something
        scale = vae.fit_latent_scale(x, batch_size=10)
        assert scale == pytest.approx(1.0 / raw_std, rel=1e-4)
        z = vae.to_latent(x)
        assert z.std().item() == pytest.approx(1.0, abs=1e-4)
        assert torch.allclose(vae.from_latent(z), vae.decode(vae.encode(x)), atol=1e-5)

    state, config = vae.state_dict(), vae.config.to_dict()
    assert "latent_scale" in state and "layer_id" in state
    back = ChunkVAE.from_checkpoint(config, state)
    assert back.config == vae.config
    assert float(back.latent_scale) == pytest.approx(scale)
    with torch.no_grad():
        assert torch.equal(back.to_latent(x), vae.to_latent(x))
    legacy = {**config, "n_layers_ids": config.pop("n_layer_ids")}
    assert ChunkVAEConfig.from_dict(legacy) == vae.config


def test_layer_id_and_position_embeddings_matter() -> None:
    """Two identical chunks at different positions / layers get different codes."""
    vae = small_vae()
    x = low_rank_chunks(1)
    x[0, 1] = x[0, 0]
    x[0, 3] = x[0, 0]
    with torch.no_grad():
        mu = vae.encode(x)
    assert not torch.allclose(mu[0, 0], mu[0, 1])
    assert not torch.allclose(mu[0, 0], mu[0, 3])
    with pytest.raises(ShapeError):
        ChunkVAE(ChunkVAEConfig(16, 4, 2), torch.zeros(3, dtype=torch.long))
