"""Noise schedules of Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021).

``make_schedule("linear" | "cosine", T)`` returns a :class:`NoiseSchedule` holding every
per-timestep coefficient that :class:`weightspace.generators.diffusion.GaussianDiffusion`
needs (see that module's docstring for the formulas). Timesteps are 0-based.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from weightspace.errors import InvalidParameterError

SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Every per-timestep coefficient of a DDPM, float64, shape (T,) each.

    Build with :func:`make_schedule`. With ``abar_t = alphas_cumprod[t]``:

    * ``alphas = 1 - betas``, ``alphas_cumprod[t] = prod_{s<=t} alphas[s]``,
      ``alphas_cumprod_prev[t] = alphas_cumprod[t-1]`` (1 at ``t = 0``);
    * ``sqrt_alphas_cumprod**2 + sqrt_one_minus_alphas_cumprod**2 == 1``;
    * ``sqrt_recip_alphas_cumprod = 1 / sqrt(abar_t)``,
      ``sqrt_recipm1_alphas_cumprod = sqrt(1 / abar_t - 1)`` so that
      ``x_0 = sqrt_recip * x_t - sqrt_recipm1 * eps``;
    * ``posterior_variance = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (Ho et al. eq. 7),
      its log clipped at ``t = 0`` (where it is 0) to the value at ``t = 1``;
    * ``posterior_mean_coef1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t)``,
      ``posterior_mean_coef2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)``.
    """

    kind: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        """``T``."""
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor, kind: str = "custom") -> NoiseSchedule:
        """Derive every coefficient from ``betas`` (T,), each in ``(0, 1)``."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise InvalidParameterError("betas must hold at least 2 values, each in (0, 1)")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        return cls(
            kind=kind,
            betas=betas,
            alphas=alphas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(),
            sqrt_recip_alphas_cumprod=abar.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / abar - 1.0).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log,
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        )


SCHEDULE_FIELDS = tuple(f.name for f in fields(NoiseSchedule) if f.name != "kind")


def make_schedule(kind: str, T: int) -> NoiseSchedule:
    """Build a noise schedule of ``T`` steps.

    Parameters
    ----------
    kind : {"linear", "cosine"}
        ``"linear"``: Ho et al. (2020), ``beta`` linear from ``1e-4 * 1000/T`` to
        ``0.02 * 1000/T`` (the improved-diffusion rescaling, so any ``T`` gives a
        similar total noise; clipped at 0.999 for ``T < 21``).
        ``"cosine"``: Nichol & Dhariwal (2021), eq. 17,
        ``abar(t) = f(t)/f(0)`` with ``f(t) = cos((t/T + s)/(1 + s) * pi/2)^2``,
        ``s = 0.008`` and ``beta_t = min(1 - abar(t+1)/abar(t), 0.999)``.
    T : int
        Number of diffusion steps, >= 2.

    Returns
    -------
    NoiseSchedule
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise InvalidParameterError(f"T must be an int >= 2, got {T!r}")
    if kind == "linear":
        scale = 1000.0 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
        betas = torch.clamp(betas, max=0.999)  # T < 21 would reach beta >= 1
    elif kind == "cosine":
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1.0 - f[1:] / f[:-1], max=0.999)
    else:
        raise InvalidParameterError(f"schedule kind must be one of {SCHEDULES}, got {kind!r}")
    return NoiseSchedule.from_betas(betas, kind=kind)
