"""Gaussian diffusion over weight latents (DDPM training, ancestral and DDIM sampling).

D2NWG (``d2nwg_diffusion_weight_generation_review_discussion.txt``, Section 3 and the
authors' answers on "latent vs. raw space diffusion", Figure 6b) runs a *latent*
diffusion model over the beta-VAE codes of weight chunks, conditioned on a dataset
embedding (plus the chunk/layer identity, "we assign a unique class identification to
each chunk and train the diffusion model with chunk-conditioning in addition to dataset
conditioning"). At inference "random samples from the target dataset are provided as
condition", noise is denoised into latents and the VAE decoder maps them to weights.

This module is the process alone, in the style of openai/improved-diffusion: it knows
nothing about the denoiser, which is any callable

    ``model(x_t, t, cond, drop_cond) -> eps``

with ``x_t`` of shape ``(B, *shape)``, ``t`` a LongTensor ``(B,)`` in ``[0, T)``, ``cond``
a Tensor ``(B, d)`` or ``None`` and ``drop_cond`` a BoolTensor ``(B,)`` or ``None``. Rows
where ``drop_cond`` is ``True`` (or every row when ``cond is None``) must be treated as
*unconditional* (the denoiser substitutes its learned null condition). That one
convention serves both classifier-free-guidance dropout in training and the
unconditional branch of guided sampling (Ho & Salimans, 2022).

Maths (Ho et al., 2020, eqs. 4, 6-7, 11-12; Nichol & Dhariwal, 2021; Song et al., 2021):

* forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with
  ``abar_t = prod_{s<=t} (1 - beta_s)``;
* posterior ``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)`` with
  ``mu~_t = c1_t x_0 + c2_t x_t``, ``c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t)``,
  ``c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)`` and
  ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)``;
* the simple loss ``E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2``.

Timesteps are 0-based: ``t = 0`` is the first noising step and ``abar_{-1} = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.schedule import SCHEDULE_FIELDS, NoiseSchedule

Denoiser = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor
]
PREDICTIONS = ("eps", "x0")


class GaussianDiffusion:
    """A DDPM process over tensors of any shape ``(B, *shape)``, denoiser-agnostic.

    Parameters
    ----------
    schedule : NoiseSchedule
    prediction : {"eps", "x0"}
        What the denoiser outputs: the noise (Ho et al.; default) or the clean sample
        (p-diff style). The samplers convert between the two exactly.
    clip_x0 : float or None
        Clamp the predicted ``x_0`` to ``[-clip_x0, clip_x0]`` while sampling (images use
        1; weight latents are unbounded, so the default is no clipping).

    Notes
    -----
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`` multiplies the denoiser's
    error by ``1 / sqrt(abar_t)``. The cosine schedule ends with ``beta = 0.999``, so
    ``abar_{T-1}`` is tiny (~1e-6 for ``T = 100``) and DDIM's big first jump carries
    that error into the sample. With a cosine schedule and an imperfect denoiser, sample
    with ``clip_x0`` set to a few latent standard deviations (e.g. 4 for unit-scaled
    latents), or use the linear schedule. Ancestral sampling is far less sensitive.
    """

    def __init__(
        self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: float | None = None
    ) -> None:
        if prediction not in PREDICTIONS:
            raise InvalidParameterError(
                f"prediction must be one of {PREDICTIONS}, got {prediction!r}"
            )
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.num_timesteps = schedule.num_timesteps
        self._cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ---------------------------------------------------------------- helpers
    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``schedule.<name>[t]`` broadcast to ``x`` (B, 1, ..., 1), in ``x.dtype``."""
        if x.device not in self._cache:
            dtype = torch.float32 if x.device.type == "mps" else torch.float64
            self._cache[x.device] = {
                f: getattr(self.schedule, f).to(x.device, dtype) for f in SCHEDULE_FIELDS
            }
        out = self._cache[x.device][name][t].to(x.dtype)
        return out.view(-1, *([1] * (x.dim() - 1)))

    def _eps_and_x0(
        self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output -> (eps, x0) using ``x_0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)``."""
        if self.prediction == "eps":
            eps = out
            x0 = (
                self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
            )
        else:
            x0 = out
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        if self.prediction == "x0" or self.clip_x0 is not None:
            eps = (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._coef(
                "sqrt_recipm1_alphas_cumprod", t, x_t
            )
        return eps, x0

    def model_output(
        self,
        model: Denoiser,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Denoiser output with classifier-free guidance, one batched call.

        ``out = out_u + w (out_c - out_u)`` where ``out_c`` uses ``cond`` and ``out_u``
        the null condition (``drop_cond`` all ``True``). ``w = 1`` calls the model once,
        conditionally; ``w = 0`` is the unconditional model.
        """
        if guidance_scale == 1.0 or cond is None:
            if cond is None and guidance_scale != 1.0:
                raise InvalidParameterError(
                    "guidance_scale != 1 needs a condition; pass cond or use guidance_scale=1"
                )
            return model(x_t, t, cond, None)
        b = x_t.shape[0]
        drop = torch.cat([x_t.new_zeros(b, dtype=torch.bool), x_t.new_ones(b, dtype=torch.bool)])
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, cond]), drop)
        out_c, out_u = out[:b], out[b:]
        return out_u + guidance_scale * (out_c - out_u)

    # ---------------------------------------------------------------- forward process
    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of ``q(x_t | x_0)``, each broadcast to ``x0``.

        ``mean = sqrt(abar_t) x_0``, ``variance = 1 - abar_t``.
        """
        mean = self._coef("sqrt_alphas_cumprod", t, x0) * x0
        var = (1.0 - self._coef("alphas_cumprod", t, x0)).expand_as(x0)
        return mean, var, var.log()

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (noise ~ N(0, I))."""
        noise = torch.randn_like(x0) if noise is None else noise
        if noise.shape != x0.shape:
            raise ShapeError(f"noise {tuple(noise.shape)} must match x0 {tuple(x0.shape)}")
        return (
            self._coef("sqrt_alphas_cumprod", t, x0) * x0
            + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance, clipped log-variance of ``q(x_{t-1} | x_t, x_0)`` (eqs. 6-7)."""
        mean = (
            self._coef("posterior_mean_coef1", t, x_t) * x0
            + self._coef("posterior_mean_coef2", t, x_t) * x_t
        )
        var = self._coef("posterior_variance", t, x_t).expand_as(x_t)
        log_var = self._coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, var, log_var

    # ---------------------------------------------------------------- training
    def training_loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        p_uncond: float = 0.0,
        generator: torch.Generator | None = None,
        rows: slice | None = None,
    ) -> torch.Tensor:
        """The simple DDPM loss (Ho et al. eq. 14), mean over batch and elements.

        Parameters
        ----------
        model : Denoiser
        x0 : Tensor, shape (B, *shape)
            Clean samples (scaled VAE latents for D2NWG).
        t : LongTensor, shape (B,), optional
            Timesteps; uniform on ``[0, T)`` when ``None``.
        cond : Tensor, shape (B, d), optional
        p_uncond : float
            Classifier-free-guidance dropout: each row gets ``drop_cond = True`` with this
            probability (Ho & Salimans, 2022). Ignored when ``cond is None``.
        generator : torch.Generator, optional
            On ``x0``'s device; drives ``t``, the noise and the dropout mask.
        rows : slice, optional
            Run the model on these rows of the batch only (one data-parallel rank's
            share). ``t``, the noise and the mask are still drawn for all ``B`` rows, so
            every rank draws exactly what one process would; the result is the squared
            error summed over these rows divided by the element count of the *whole*
            batch, so the ranks' results add up to the full batch's mean.

        Returns
        -------
        Tensor, scalar
            ``mean ||target - model(x_t, t, cond, drop)||^2`` with target ``eps`` (or
            ``x0`` for ``prediction="x0"``); with ``rows``, that shard's share of it.
        """
        b = x0.shape[0]
        if not 0.0 <= p_uncond <= 1.0:
            raise InvalidParameterError(f"p_uncond must be in [0, 1], got {p_uncond}")
        if cond is not None and cond.shape[0] != b:
            raise ShapeError(f"cond has {cond.shape[0]} rows but x0 has {b}")
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        drop = None
        if cond is not None and p_uncond > 0:
            u = torch.rand(b, device=x0.device, generator=generator)
            drop = u < p_uncond
        target = noise if self.prediction == "eps" else x0
        if rows is None:
            return torch.mean((model(x_t, t, cond, drop) - target) ** 2)
        if rows.step not in (None, 1) or not 0 <= (rows.start or 0) <= (rows.stop or b) <= b:
            raise InvalidParameterError(f"rows must be a contiguous slice of 0..{b}, got {rows}")
        cond_r = None if cond is None else cond[rows]
        drop_r = None if drop is None else drop[rows]
        out = model(x_t[rows], t[rows], cond_r, drop_r)
        return torch.sum((out - target[rows]) ** 2) / target.numel()

    # ---------------------------------------------------------------- sampling
    def _start(self, shape, cond, noise, device, generator) -> torch.Tensor:
        shape = tuple(shape)
        if cond is not None and cond.shape[0] != shape[0]:
            raise ShapeError(f"cond has {cond.shape[0]} rows but shape asks for {shape[0]}")
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ShapeError(f"noise {tuple(noise.shape)} must have shape {shape}")
            return noise
        if device is None:
            device = cond.device if cond is not None else torch.device("cpu")
        return torch.randn(shape, device=device, generator=generator)

    @torch.no_grad()
    def p_sample_loop(
        self,
        model: Denoiser,
        shape: tuple[int, ...],
        cond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Ancestral DDPM sampling (Ho et al. Algorithm 2), all ``T`` steps.

        ``x_{t-1} = mu~_t(x0_hat, x_t) + sqrt(beta~_t) z`` with ``z ~ N(0, I)`` for
        ``t > 0`` and no noise at ``t = 0``, where ``x0_hat`` comes from the (guided)
        denoiser output.

        Parameters
        ----------
        model : Denoiser
        shape : tuple of int
            ``(B, *shape)`` of the samples.
        cond : Tensor, shape (B, d), optional
        guidance_scale : float
            Classifier-free guidance weight ``w`` (see :meth:`model_output`).
        generator : torch.Generator, optional
            On the sampling device; drives the start noise and every step's noise.
        noise : Tensor, shape (B, *shape), optional
            ``x_T`` (drawn from ``generator`` when ``None``).
        device : device, optional
            Where to sample when neither ``cond`` nor ``noise`` says (default CPU).
        progress : bool
            Show a progress bar over the steps.

        Returns
        -------
        Tensor, shape (B, *shape)
        """
        x = self._start(shape, cond, noise, device, generator)
        b = x.shape[0]
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="ddpm"):
            t = torch.full((b,), i, device=x.device, dtype=torch.long)
            out = self.model_output(model, x, t, cond, guidance_scale)
            _, x0 = self._eps_and_x0(out, x, t)
            mean, _, log_var = self.q_posterior_mean_variance(x0, x, t)
            if i > 0:
                z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
                x = mean + torch.exp(0.5 * log_var) * z
            else:
                x = mean
        return x

    @torch.no_grad()
    def ddim_sample(
        self,
        model: Denoiser,
        shape: tuple[int, ...],
        cond: torch.Tensor | None = None,
        steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """DDIM sampling (Song et al., 2021, eq. 12) on ``steps`` evenly spaced timesteps.

        From ``t`` to the previous kept timestep ``s`` (``abar_{-1} = 1`` after the last):
        ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z`` with
        ``sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)``. ``eta = 0``
        is deterministic given ``x_T``; ``eta = 1`` with ``steps = T`` is DDPM.

        Parameters are those of :meth:`p_sample_loop`, plus ``steps`` (1 to ``T``),
        ``eta`` (>= 0) and ``temperature`` (>= 0): ``x_T`` is the drawn (or given) noise
        times ``temperature``. Below 1 this is the truncation trick of generative models
        (Kingma & Dhariwal 2018, Brock et al. 2019): samples move towards the modes of the
        learned distribution, trading diversity for fidelity; ``0`` with ``eta = 0`` gives
        one deterministic sample per condition.
        """
        if not 1 <= steps <= self.num_timesteps:
            raise InvalidParameterError(f"steps must be in [1, {self.num_timesteps}], got {steps}")
        if eta < 0:
            raise InvalidParameterError(f"eta must be >= 0, got {eta}")
        if not temperature >= 0:
            raise InvalidParameterError(f"temperature must be >= 0, got {temperature}")
        x = self._start(shape, cond, noise, device, generator)
        if temperature != 1.0:
            x = x * temperature
        b = x.shape[0]
        seq = torch.linspace(0, self.num_timesteps - 1, steps, dtype=torch.float64).round().long()
        seq = torch.unique(seq).tolist()
        prev = [-1, *seq[:-1]]
        abar = self.schedule.alphas_cumprod.tolist()
        for i, j in tqdm(
            list(zip(reversed(seq), reversed(prev), strict=True)), disable=not progress, desc="ddim"
        ):
            t = torch.full((b,), i, device=x.device, dtype=torch.long)
            out = self.model_output(model, x, t, cond, guidance_scale)
            eps, x0 = self._eps_and_x0(out, x, t)
            a_t, a_s = abar[i], (abar[j] if j >= 0 else 1.0)
            sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
            x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
                x = x + sigma * z
        return x
