"""Tests of weightspace.generators.diffusion: schedules, forward process, samplers."""

from __future__ import annotations

import math

import pytest
import torch

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators import (
    GaussianDiffusion,
    MLPDenoiser,
    MLPDenoiserConfig,
    NoiseSchedule,
    make_schedule,
)


# ---------------------------------------------------------------------- schedules
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_identities(kind: str) -> None:
    s = make_schedule(kind, 200)
    assert s.num_timesteps == 200
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=0, atol=1e-15)
    assert torch.allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0
    abar = s.alphas_cumprod
    assert bool((abar > 0).all() and (abar < 1).all())
    assert bool((abar[1:] < abar[:-1]).all())
    one = s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2
    assert torch.allclose(one, torch.ones_like(one), atol=1e-12)
    # x0 = sqrt_recip * x_t - sqrt_recipm1 * eps inverts q_sample
    a, b = s.sqrt_recip_alphas_cumprod, s.sqrt_recipm1_alphas_cumprod
    assert torch.allclose(a * s.sqrt_alphas_cumprod, torch.ones_like(a))
    assert torch.allclose(a * s.sqrt_one_minus_alphas_cumprod, b)
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_linear_and_cosine_values_by_hand() -> None:
    lin = make_schedule("linear", 1000)
    assert lin.betas[0].item() == pytest.approx(1e-4)
    assert lin.betas[-1].item() == pytest.approx(0.02)
    assert make_schedule("linear", 100).betas[-1].item() == pytest.approx(0.2)
    short = make_schedule("linear", 10)  # 1000/T rescaling would give beta = 2
    assert short.betas.max().item() == pytest.approx(0.999)
    assert bool((short.alphas_cumprod > 0).all())
    cos = make_schedule("cosine", 50)
    f = [math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(51)]
    assert cos.alphas_cumprod[10].item() == pytest.approx(f[11] / f[0], rel=1e-9)
    assert cos.betas.max().item() <= 0.999
    assert cos.betas[-1].item() == pytest.approx(0.999)  # clipped (f(T) is ~0)


def test_bad_schedules_raise() -> None:
    with pytest.raises(InvalidParameterError):
        make_schedule("quadratic", 10)
    with pytest.raises(InvalidParameterError):
        make_schedule("linear", 1)
    with pytest.raises(InvalidParameterError):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(InvalidParameterError):
        GaussianDiffusion(make_schedule("linear", 10), prediction="v")


# ---------------------------------------------------------------------- forward process
def test_q_sample_moments() -> None:
    diff = GaussianDiffusion(make_schedule("cosine", 100))
    x0 = torch.tensor([1.5, -2.0, 0.3])
    n = 200_000
    for step in (5, 50, 90):
        t = torch.full((n,), step, dtype=torch.long)
        g = torch.Generator().manual_seed(step)
        noise = torch.randn(n, 3, generator=g)
        xt = diff.q_sample(x0.expand(n, 3), t, noise)
        abar = diff.schedule.alphas_cumprod[step].item()
        assert torch.allclose(xt.mean(0), math.sqrt(abar) * x0, atol=0.01)
        assert torch.allclose(xt.var(0), torch.full((3,), 1 - abar), rtol=0.02)
        mean, var, log_var = diff.q_mean_variance(x0.expand(4, 3), t[:4])
        assert torch.allclose(mean, math.sqrt(abar) * x0.expand(4, 3))
        assert torch.allclose(var, torch.full((4, 3), 1 - abar))
        assert torch.allclose(log_var, var.log())


def test_posterior_by_hand() -> None:
    sched = make_schedule("linear", 50)
    diff = GaussianDiffusion(sched)
    step = 7
    b = sched.betas.tolist()
    abar_t = math.prod(1 - x for x in b[: step + 1])
    abar_p = math.prod(1 - x for x in b[:step])
    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    xt = torch.tensor([[2.0, 0.25]], dtype=torch.float64)
    mean, var, log_var = diff.q_posterior_mean_variance(x0, xt, torch.tensor([step]))
    c1 = b[step] * math.sqrt(abar_p) / (1 - abar_t)
    c2 = (1 - abar_p) * math.sqrt(1 - b[step]) / (1 - abar_t)
    expected_var = b[step] * (1 - abar_p) / (1 - abar_t)
    assert torch.allclose(mean, c1 * x0 + c2 * xt, atol=1e-12)
    assert torch.allclose(var, torch.full_like(var, expected_var), atol=1e-15)
    assert torch.allclose(log_var, torch.full_like(var, math.log(expected_var)))
    # the posterior is the Gaussian conditional of (x_{t-1}, x_t) given x0:
    # Var = (1 - abar_p) - (1 - abar_p)^2 alpha_t / (1 - abar_t)
    alpha = 1 - b[step]
    assert expected_var == pytest.approx((1 - abar_p) - (1 - abar_p) ** 2 * alpha / (1 - abar_t))


# ---------------------------------------------------------------------- oracle sampling
X_STAR = torch.tensor([[0.7, -1.3, 2.0], [0.1, 0.0, -0.4]])  # one sample of shape (2, 3)


def oracle(diff: GaussianDiffusion, x_star: torch.Tensor = X_STAR):
    """Exact eps for data that is the single point x_star."""
    abar = diff.schedule.alphas_cumprod.float()

    def model(x_t, t, cond, drop_cond):
        a = abar[t].view(-1, 1, 1)
        return (x_t - a.sqrt() * x_star) / (1 - a).sqrt()

    return model


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_oracle_recovers_point(kind: str) -> None:
    diff = GaussianDiffusion(make_schedule(kind, 100))
    g = torch.Generator().manual_seed(0)
    out = diff.p_sample_loop(oracle(diff), (8, 2, 3), generator=g)
    assert torch.allclose(out, X_STAR.expand(8, 2, 3), atol=1e-4)
    for eta in (0.0, 0.5):
        out = diff.ddim_sample(oracle(diff), (8, 2, 3), steps=10, eta=eta, generator=g)
        assert torch.allclose(out, X_STAR.expand(8, 2, 3), atol=1e-4)


def test_oracle_with_clipping_recovers_point() -> None:
    """clip_x0 recomputes eps from the clamped x0; the oracle's x0 is inside the box."""
    diff = GaussianDiffusion(make_schedule("cosine", 60), clip_x0=3.0)
    g = torch.Generator().manual_seed(2)
    out = diff.p_sample_loop(oracle(diff), (6, 2, 3), generator=g)
    assert torch.allclose(out, X_STAR.expand(6, 2, 3), atol=1e-4)
    out = diff.ddim_sample(oracle(diff), (6, 2, 3), steps=6, generator=g)
    assert torch.allclose(out, X_STAR.expand(6, 2, 3), atol=1e-4)
    tight = GaussianDiffusion(make_schedule("cosine", 60), clip_x0=1.0)
    out = tight.ddim_sample(oracle(tight), (6, 2, 3), steps=6, generator=g)
    assert torch.allclose(out, X_STAR.clamp(-1, 1).expand(6, 2, 3), atol=1e-4)


def test_oracle_x0_prediction() -> None:
    diff = GaussianDiffusion(make_schedule("linear", 50), prediction="x0")

    def model(x_t, t, cond, drop_cond):
        return X_STAR.expand_as(x_t)

    g = torch.Generator().manual_seed(1)
    assert torch.allclose(diff.p_sample_loop(model, (4, 2, 3), generator=g), X_STAR, atol=1e-4)
    assert torch.allclose(diff.ddim_sample(model, (4, 2, 3), steps=7, generator=g), X_STAR)


def test_ddim_deterministic_given_noise_and_differs_with_eta() -> None:
    torch.manual_seed(0)
    model = MLPDenoiser(MLPDenoiserConfig((2, 3), cond_dim=0, width=16, depth=1))
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    diff = GaussianDiffusion(make_schedule("cosine", 40))
    xT = torch.randn(5, 2, 3)
    a = diff.ddim_sample(model, xT.shape, steps=10, noise=xT, generator=torch.Generator())
    b = diff.ddim_sample(
        model, xT.shape, steps=10, noise=xT, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(a, b)
    c = diff.ddim_sample(
        model, xT.shape, steps=10, eta=1.0, noise=xT, generator=torch.Generator().manual_seed(9)
    )
    assert not torch.allclose(a, c, atol=1e-3)
    with pytest.raises(InvalidParameterError):
        diff.ddim_sample(model, xT.shape, steps=41)
    with pytest.raises(ShapeError):
        diff.ddim_sample(model, (4, 2, 3), steps=10, noise=xT)


def test_ddim_temperature_scales_the_start_noise() -> None:
    """temperature t: the same as starting from t * x_T; 0 gives one sample per condition;
    1 leaves the drawn noise untouched (bitwise)."""
    torch.manual_seed(0)
    model = MLPDenoiser(MLPDenoiserConfig((2, 3), cond_dim=0, width=16, depth=1))
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    diff = GaussianDiffusion(make_schedule("cosine", 40))
    xT = torch.randn(5, 2, 3)
    half = diff.ddim_sample(model, xT.shape, steps=10, noise=xT, temperature=0.5)
    assert torch.equal(half, diff.ddim_sample(model, xT.shape, steps=10, noise=0.5 * xT))
    zero = diff.ddim_sample(model, xT.shape, steps=10, generator=torch.Generator(), temperature=0)
    assert torch.equal(zero, zero[:1].expand_as(zero))  # no condition: one sample
    one = diff.ddim_sample(model, xT.shape, steps=10, generator=torch.Generator().manual_seed(3))
    same = diff.ddim_sample(
        model, xT.shape, steps=10, generator=torch.Generator().manual_seed(3), temperature=1.0
    )
    assert torch.equal(one, same) and not torch.allclose(one, zero, atol=1e-3)
    with pytest.raises(InvalidParameterError, match="temperature"):
        diff.ddim_sample(model, xT.shape, steps=10, temperature=-0.1)


def test_ddim_eta_one_all_steps_is_ddpm() -> None:
    """eta = 1 over all T steps gives sigma_t^2 = beta~_t and the posterior mean: DDPM."""
    torch.manual_seed(0)
    model = MLPDenoiser(MLPDenoiserConfig((2, 3), cond_dim=0, width=16, depth=1))
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    diff = GaussianDiffusion(make_schedule("linear", 30))
    ddpm = diff.p_sample_loop(model, (4, 2, 3), generator=torch.Generator().manual_seed(5))
    ddim = diff.ddim_sample(
        model, (4, 2, 3), steps=30, eta=1.0, generator=torch.Generator().manual_seed(5)
    )
    assert torch.allclose(ddpm, ddim, atol=1e-4)
    eta0 = diff.ddim_sample(model, (4, 2, 3), steps=30, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(ddpm, eta0, atol=1e-2)


# ---------------------------------------------------------------------- guidance
def _cond_model(x_t, t, cond, drop_cond):
    """eps = 0.1 x_t + c with c = cond[:, :1] (or -1 when dropped)."""
    c = torch.full((x_t.shape[0], 1), -1.0) if cond is None else cond[:, :1].clone()
    if drop_cond is not None:
        c = torch.where(drop_cond[:, None], torch.full_like(c, -1.0), c)
    return 0.1 * x_t + c.view(-1, 1, 1)


def test_classifier_free_guidance_convention() -> None:
    diff = GaussianDiffusion(make_schedule("linear", 30))
    cond = torch.tensor([[0.5], [2.0], [-0.3]])
    x = torch.randn(3, 2, 2)
    t = torch.tensor([3, 10, 29])
    e_c, e_u = _cond_model(x, t, cond, None), _cond_model(x, t, None, None)
    assert not torch.allclose(e_c, e_u)
    assert torch.allclose(diff.model_output(_cond_model, x, t, cond, 1.0), e_c)
    assert torch.allclose(diff.model_output(_cond_model, x, t, cond, 0.0), e_u)
    assert torch.allclose(diff.model_output(_cond_model, x, t, cond, 3.0), e_u + 3 * (e_c - e_u))

    def sample(model, w, seed=4):
        g = torch.Generator().manual_seed(seed)
        return diff.p_sample_loop(model, (3, 2, 2), cond, guidance_scale=w, generator=g)

    def always_cond(x_t, t, c, drop):
        return _cond_model(x_t, t, c, None)

    # guidance 1 equals the plain conditional sampler; 2 differs
    assert torch.allclose(sample(_cond_model, 1.0), sample(always_cond, 1.0))
    assert not torch.allclose(sample(_cond_model, 2.0), sample(always_cond, 1.0), atol=1e-2)
    xT = torch.randn(3, 2, 2)
    d1 = diff.ddim_sample(_cond_model, xT.shape, cond, steps=5, guidance_scale=1.0, noise=xT)
    d2 = diff.ddim_sample(always_cond, xT.shape, cond, steps=5, noise=xT)
    d3 = diff.ddim_sample(_cond_model, xT.shape, cond, steps=5, guidance_scale=0.0, noise=xT)
    assert torch.allclose(d1, d2)
    assert not torch.allclose(d1, d3, atol=1e-2)
    with pytest.raises(InvalidParameterError):
        diff.p_sample_loop(_cond_model, (3, 2, 2), None, guidance_scale=2.0)


def test_training_loss_drop_mask_and_determinism() -> None:
    diff = GaussianDiffusion(make_schedule("linear", 30))
    seen = {}

    def model(x_t, t, cond, drop_cond):
        seen["drop"] = drop_cond
        seen["t"] = t
        return torch.zeros_like(x_t)

    x0 = torch.randn(4000, 3)
    cond = torch.randn(4000, 2)
    loss = diff.training_loss(model, x0, cond=cond, p_uncond=0.25, generator=torch.Generator())
    assert loss.item() == pytest.approx(1.0, abs=0.05)  # zero predictor: E||eps||^2 / dim
    assert seen["drop"].dtype == torch.bool
    assert seen["drop"].float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert seen["t"].min() >= 0 and seen["t"].max() == 29
    diff.training_loss(model, x0, cond=cond, p_uncond=0.0)
    assert seen["drop"] is None
    a = diff.training_loss(model, x0, cond=cond, generator=torch.Generator().manual_seed(3))
    b = diff.training_loss(model, x0, cond=cond, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()
    with pytest.raises(ShapeError):
        diff.training_loss(model, x0, cond=cond[:5])


# ---------------------------------------------------------------------- tiny training run
def test_tiny_conditional_training_lands_on_modes() -> None:
    """2-D two-mode mixture, the condition names the mode; 300 AdamW steps on CPU."""
    torch.manual_seed(0)
    modes = torch.tensor([[2.0, 2.0], [-2.0, -1.0]])
    model = MLPDenoiser(MLPDenoiserConfig((2,), cond_dim=2, width=64, depth=2))
    diff = GaussianDiffusion(make_schedule("linear", 100))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        k = torch.randint(0, 2, (256,), generator=g)
        x0 = modes[k] + 0.1 * torch.randn(256, 2, generator=g)
        cond = torch.nn.functional.one_hot(k, 2).float()
        loss = diff.training_loss(model, x0, cond=cond, p_uncond=0.1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.6 * sum(losses[:20]) / 20
    model.eval()
    k = torch.arange(200) % 2
    cond = torch.nn.functional.one_hot(k, 2).float()
    gs = torch.Generator().manual_seed(1)
    for out in (
        diff.ddim_sample(model, (200, 2), cond, steps=25, generator=gs),
        diff.p_sample_loop(model, (200, 2), cond, generator=gs),
        diff.ddim_sample(model, (200, 2), cond, steps=25, guidance_scale=2.0, generator=gs),
    ):
        dist = (out - modes[k]).norm(dim=1)
        assert (dist < 0.6).float().mean().item() > 0.85
