"""Class-wise D2NWG: few-shot classifier heads generated one class row at a time.

The paper's generator (:mod:`weightspace.generators.d2nwg`,
``d2nwg_diffusion_weight_generation_review_discussion.txt`` §3.2-3.3) diffuses a whole
head from one dataset embedding. For few-shot heads (§4, Table 1) that ties output unit
``j`` to the class in slot ``j`` of the conditioning set, and what it learns is which
zoo head goes with which set of classes: on classes outside the zoo it fails (an audit
found 0.52-0.59 on novel classes where a nearest-class-mean head gets 0.81). The authors
point at the remedy in the discussion ("a unified model can be trained for
classifier-head-based settings by incorporating classifier head encoding as additional
conditioning data") and chunk weights layer-wise with "a unique class identification to
each chunk". Here a *chunk is one class row* ``[w_c, b_c]`` and every chunk is
conditioned on its own class:

1. **Anchor** (closed form, :func:`fit_anchor`): the row of the metric-prototype
   classifier of the class's support mean (:mod:`weightspace.generators.class_rows`),
   metric = shrunk inverse within-class covariance of the zoo tasks' features, scaled by
   the least-squares factor that best matches the zoo's rows. Diffusion models the
   *residual* ``r_c - anchor_c``: the part of a trained row the class statistics do not
   give. Rows are handled in *centred coordinates*: for features centred at the zoo's
   feature mean ``m`` a row is ``[w_c, b_c + w_c . m]`` (same function). The features
   sit far from the origin (``|m|`` ~ 13 on the default pool), so in raw coordinates a
   small error of ``w_c`` moves the logit by ``dw . m`` and the anchor's bias
   ``-mu^T A mu`` explains none of the zoo's biases (R^2 -200 on the default pool,
   0.66 centred).
2. **Dataset encoder**: D2NWG's Set Transformer, intra-class stage, one embedding per
   class; the condition of class ``c`` is ``[e_c, mean_k e_k, standardized mu_c]`` (own
   class, task context, the prototype itself).
3. **Alignment** (:func:`fit_class_alignment`): the class embeddings are aligned to the
   zoo's rows of that class with the paper's contrastive loss (rows of one pool class
   from different heads are positives of each other).
4. **Diffusion** (:func:`fit_classwise_diffusion`): a transformer over the ``K`` class
   tokens with no position embedding (permutation-equivariant: permuting the classes of
   the support set permutes the generated rows), in-context timestep token, per-class
   condition added to its token, classifier-free-guidance dropout, EMA, a fresh support
   set per row per step — the loop of :mod:`weightspace.generators.diffusion_loop`.
5. **Sampling**: DDIM from start noise scaled by ``sampling.temperature`` (the truncation
   trick; at 1 about one sample in ten is a poor head, at 0.7 none is on the default
   pool); a task whose support set does not match distinct known classes
   (:mod:`weightspace.generators.known_classes`, ``novelty_quantile``) gets its anchor
   head: the residual is learnt per class and means nothing on a class the zoo never
   held, so on such tasks the method *is* its anchor, by design. On a task that passes,
   each class is identified with the zoo class it matches (``identify``) and its support
   samples are shifted so that their mean is that class's centre (the mean of all its
   zoo training samples): the anchor and the condition then use the class mean the zoo
   knows instead of the 5-shot estimate, whose noise is what costs accuracy on unseen
   combinations of known classes (a 5-shot mean of MNIST-1D class 1 is far from its
   centre often enough to cost 1-2 points on a seed). The training sets are not shifted:
   the denoiser learnt from noisy 5-shot conditions, and the exact centre is the most
   likely one of them.

Departure from the paper: no VAE. A class row has ``d + 1`` numbers (33 here); the VAE's
job, compressing thousands of chunk values, does not arise, and diffusion runs on the
standardized residual rows directly. Ablations are configurations of the same class:
``conditional=False`` with ``anchor="none"`` is an unconditional generator (p-diff style:
no dataset encoding at all), ``fit_class_alignment`` skipped is "without contrastive
alignment".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from weightspace.config import from_mapping, to_mapping
from weightspace.errors import CheckpointMismatchError, InvalidParameterError, ShapeError
from weightspace.generators.alignment import AlignmentHead
from weightspace.generators.class_rows import (
    centre_rows,
    class_means,
    from_rows,
    metric_rows,
)
from weightspace.generators.d2nwg import (
    AlignTraining,
    DiffusionTraining,
    SamplingConfig,
)
from weightspace.generators.dataset_encoder import DatasetEncoderConfig, SetDatasetEncoder
from weightspace.generators.denoiser import _time_mlp, timestep_embedding
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.known_classes import match_known
from weightspace.generators.schedule import make_schedule

log = logging.getLogger(__name__)

ANCHORS: tuple[str, ...] = ("lda", "prototype", "none")
"""Anchor rows: shrunk-LDA metric prototype, Euclidean prototype, none (zero)."""


@dataclass(frozen=True)
class ClassDenoiserConfig:
    """Sizes of :class:`ClassTokenDenoiser`."""

    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidParameterError(f"denoiser.{name} must be an integer >= 1, got {v!r}")
        if self.width % self.heads:
            raise InvalidParameterError(
                f"denoiser.width ({self.width}) must be a multiple of denoiser.heads ({self.heads})"
            )


@dataclass(frozen=True)
class ClassWiseConfig:
    """Every hyper-parameter of :class:`ClassWiseD2NWG`.

    ``anchor`` picks the anchor rows (:data:`ANCHORS`), ``shrinkage`` the LDA metric's
    shrinkage; ``conditional=False`` trains and samples with the null condition only.
    ``shots`` samples per class make one conditioning set; ``sets_per_task`` fresh sets
    per zoo task are drawn for diffusion training. ``novelty_quantile``: the share of
    known-class support sets that pass the known-class test
    (:mod:`~weightspace.generators.known_classes`); tasks that fail it get the anchor
    head; ``None`` turns the test off (every task is sampled). ``identify``: on a task
    that passes the test, re-centre each class's support samples on the centre of the
    zoo class it is matched to before sampling (a sampling rule, like ``sampling``: it
    does not change training or the training checkpoint).
    """

    encoder: DatasetEncoderConfig = field(
        default_factory=lambda: DatasetEncoderConfig(n_inducing=8)
    )
    denoiser: ClassDenoiserConfig = field(default_factory=ClassDenoiserConfig)
    align: AlignTraining = field(default_factory=AlignTraining)
    diffusion: DiffusionTraining = field(default_factory=DiffusionTraining)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    anchor: str = "lda"
    shrinkage: float = 0.1
    conditional: bool = True
    shots: int = 5
    sets_per_task: int = 32
    novelty_quantile: float | None = 0.99
    identify: bool = True

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise InvalidParameterError(
                f"classwise.anchor must be one of {list(ANCHORS)}, got {self.anchor!r}"
            )
        if not 0.0 < self.shrinkage <= 1.0:
            raise InvalidParameterError(
                f"classwise.shrinkage must be in (0, 1], got {self.shrinkage!r}"
            )
        for name in ("shots", "sets_per_task"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidParameterError(f"classwise.{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.identify, bool):
            raise InvalidParameterError(
                f"classwise.identify must be true or false, got {self.identify!r}"
            )
        q = self.novelty_quantile
        if q is not None and (isinstance(q, bool) or not isinstance(q, int | float)
                              or not 0.0 < q < 1.0):  # fmt: skip
            raise InvalidParameterError(
                f"classwise.novelty_quantile must be in (0, 1) or null (no test), got {q!r}"
            )
        if self.sampling.steps > self.diffusion.timesteps:
            raise InvalidParameterError(
                f"classwise.sampling.steps ({self.sampling.steps}) must be <= "
                f"diffusion.timesteps ({self.diffusion.timesteps})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict."""
        return to_mapping(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "classwise") -> ClassWiseConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming their path."""
        return from_mapping(cls, d, path)


class ClassTokenDenoiser(nn.Module):
    """Noise predictor over the ``K`` class tokens of a head.

    Token ``c`` is ``W_in x_c + E(cond_c)`` (or the learned null embedding when the
    condition is dropped); a timestep token ``MLP(sinusoid(t)) + s`` is prepended; a
    pre-norm transformer mixes the ``K + 1`` tokens and a zero-initialised projection
    maps the class tokens back. There is no position embedding, so the output permutes
    with the classes.

    Parameters
    ----------
    row_dim : int
        ``d + 1``.
    cond_dim : int
        Width of a class's condition; ``0`` makes an unconditional model.
    config : ClassDenoiserConfig
    """

    def __init__(self, row_dim: int, cond_dim: int, config: ClassDenoiserConfig) -> None:
        super().__init__()
        w = config.width
        self.row_dim, self.cond_dim = int(row_dim), int(cond_dim)
        self.in_proj = nn.Linear(row_dim, w)
        self.cond_proj = nn.Linear(cond_dim, w) if cond_dim > 0 else None
        self.null = nn.Parameter(torch.randn(w) * 0.02)
        self.time_mlp = _time_mlp(w)
        self.time_slot = nn.Parameter(torch.randn(w) * 0.02)
        layer = nn.TransformerEncoderLayer(
            w, config.heads, dim_feedforward=4 * w, dropout=config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(
            layer, config.depth, norm=nn.LayerNorm(w), enable_nested_tensor=False
        )
        self.out_proj = nn.Linear(w, row_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.width = w

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
        x_t : Tensor, shape (B, K, d + 1)
        t : LongTensor, shape (B,)
        cond : Tensor, shape (B, K, cond_dim), optional
        drop_cond : BoolTensor, shape (B,), optional
            Heads that use the null condition (for all their classes).

        Returns
        -------
        Tensor, shape (B, K, d + 1)
        """
        if x_t.ndim != 3 or x_t.shape[-1] != self.row_dim:
            raise ShapeError(f"x_t must be (B, K, {self.row_dim}), got {tuple(x_t.shape)}")
        b, k = x_t.shape[:2]
        null = self.null.expand(b, k, -1)
        if cond is None or self.cond_proj is None:
            c = null
        else:
            if cond.shape != (b, k, self.cond_dim):
                raise ShapeError(
                    f"cond must be ({b}, {k}, {self.cond_dim}), got {tuple(cond.shape)}"
                )
            c = self.cond_proj(cond.to(x_t.dtype))
            if drop_cond is not None:
                c = torch.where(drop_cond.view(b, 1, 1), null, c)
        h = self.in_proj(x_t) + c
        temb = self.time_mlp(timestep_embedding(t, self.width).to(h.dtype)) + self.time_slot
        h = self.encoder(torch.cat([temb.unsqueeze(1), h], dim=1))
        return self.out_proj(h[:, 1:])


class ClassWiseD2NWG(nn.Module):
    """The class-wise head generator: anchor, encoder, alignment heads, denoiser.

    Parameters
    ----------
    config : ClassWiseConfig
    feature_dim : int
        ``d``, width of the features heads read.
    seed : int, optional
        Seeds the initial weights (else the global RNG is used).
    """

    def __init__(self, config: ClassWiseConfig, feature_dim: int, seed: int | None = None):
        super().__init__()
        if seed is None:
            self._build(config, feature_dim)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(config, feature_dim)

    def _build(self, config: ClassWiseConfig, feature_dim: int) -> None:
        d = self.feature_dim = int(feature_dim)
        self.row_dim = d + 1
        enc = replace(config.encoder, feature_dim=d, class_pooling="invariant")
        self.config = replace(config, encoder=enc)
        self.encoder = SetDatasetEncoder(enc)
        self.cond_dim = 2 * enc.dim + d if config.conditional else 0
        self.denoiser = ClassTokenDenoiser(self.row_dim, self.cond_dim, config.denoiser)
        self.class_proj = AlignmentHead(enc.dim, enc.out_dim)
        self.row_proj = AlignmentHead(self.row_dim, enc.out_dim)
        dcfg = config.diffusion
        self.diffusion = GaussianDiffusion(make_schedule(dcfg.schedule, dcfg.timesteps))
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("feat_std", torch.ones(d))
        self.register_buffer("metric", torch.eye(d))
        self.register_buffer("anchor_scale", torch.zeros(()))
        self.register_buffer("res_mean", torch.zeros(self.row_dim))
        self.register_buffer("res_std", torch.ones(self.row_dim))
        self.register_buffer("row_mean", torch.zeros(self.row_dim))
        self.register_buffer("row_std", torch.ones(self.row_dim))
        # Known-class test: class centres (P, d), centred features; tau (inf: all known).
        self.register_buffer("known_centres", torch.zeros(0, d))
        self.register_buffer("novelty_tau", torch.tensor(float("inf")))

    # ------------------------------------------------------------------ conditioning
    def check_sets(self, sets: torch.Tensor) -> None:
        """Raise a clear error for support sets of another feature width."""
        if sets.ndim != 4 or sets.shape[-1] != self.feature_dim or sets.shape[2] < 1:
            raise ShapeError(
                f"support sets must be (B, K, S >= 1, {self.feature_dim}), got {tuple(sets.shape)}"
            )

    def centred_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Raw rows ``(..., K, d + 1)`` -> the model's coordinates: ``b + w . m`` (features
        centred at ``m = feat_mean``), then centred over the classes."""
        shift = (rows[..., :-1] * self.feat_mean).sum(-1, keepdim=True)
        return centre_rows(torch.cat([rows[..., :-1], rows[..., -1:] + shift], dim=-1))

    def raw_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`centred_rows` up to the class-shared shift: rows for raw
        features, ``b' - w . m``."""
        shift = (rows[..., :-1] * self.feat_mean).sum(-1, keepdim=True)
        return torch.cat([rows[..., :-1], rows[..., -1:] - shift], dim=-1)

    def centred_means(self, sets: torch.Tensor) -> torch.Tensor:
        """Class means ``(B, K, d)`` of support sets, minus the zoo's feature mean."""
        return class_means(sets) - self.feat_mean

    def centred_anchor_rows(self, sets: torch.Tensor) -> torch.Tensor:
        """Anchor rows ``(B, K, d + 1)`` in the model's (centred) coordinates."""
        if self.config.anchor == "none":
            return sets.new_zeros(*sets.shape[:2], self.row_dim)
        return self.anchor_scale * centre_rows(metric_rows(self.centred_means(sets), self.metric))

    def anchor_rows(self, sets: torch.Tensor) -> torch.Tensor:
        """Anchor rows ``(B, K, d + 1)`` of support sets ``(B, K, S, d)`` for raw features:
        the scaled metric-prototype head, centred over the classes in the model's
        coordinates (all zero with ``anchor="none"``)."""
        return self.raw_rows(self.centred_anchor_rows(sets))

    def _test_active(self) -> bool:
        return (
            self.config.novelty_quantile is not None
            and self.config.anchor != "none"
            and bool(torch.isfinite(self.novelty_tau))
        )

    def match(self, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The known-class test and identification of support sets ``(B, K, S, d)``
        (:func:`~weightspace.generators.known_classes.match_known`).

        Returns
        -------
        known : BoolTensor (B,)
            All True when the test is off, never fitted, or there is no anchor to fall
            back to.
        match : LongTensor (B, K)
            Row of ``known_centres`` of each class; ``-1`` on unknown tasks and
            throughout when the test is off.
        """
        self.check_sets(sets)
        b, k = sets.shape[:2]
        if not self._test_active():
            return torch.ones(b, dtype=torch.bool), torch.full((b, k), -1, dtype=torch.long)
        return match_known(
            self.centred_means(sets), self.known_centres, self.metric, float(self.novelty_tau)
        )

    def known(self, sets: torch.Tensor) -> torch.Tensor:
        """BoolTensor ``(B,)``: the task's classes match distinct classes of the zoo
        (:meth:`match`)."""
        return self.match(sets)[0]

    def identified(self, sets: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        """Support sets ``(B, K, S, d)`` with every matched class's samples shifted so that
        their mean is its known class's centre (spread kept); classes with ``match == -1``
        are returned unchanged."""
        hit = match.to(sets.device) >= 0
        if not bool(hit.any()):
            return sets
        centre = self.known_centres[match.clamp_min(0).to(self.known_centres.device)]
        shift = (centre.to(sets) + self.feat_mean.to(sets) - class_means(sets)) * hit[..., None]
        return sets + shift.unsqueeze(2)

    def class_embeddings(self, sets: torch.Tensor) -> torch.Tensor:
        """Set-encoder embedding ``(B, K, dim)`` of each class's standardized samples."""
        return self.encoder.encode_classes((sets - self.feat_mean) / self.feat_std)

    def condition(self, sets: torch.Tensor) -> torch.Tensor | None:
        """Per-class conditions ``(B, K, cond_dim)`` (``None`` when unconditional)."""
        self.check_sets(sets)
        if not self.config.conditional:
            return None
        e = self.class_embeddings(sets)
        ctx = e.mean(1, keepdim=True).expand_as(e)
        mu = (class_means(sets) - self.feat_mean) / self.feat_std
        return torch.cat([e, ctx, mu], dim=-1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        sets: torch.Tensor,
        n: int,
        generator: torch.Generator,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        fallback: bool = True,
        identify: bool | None = None,
    ) -> torch.Tensor:
        """``n`` heads per support set as class rows ``(B * n, K, d + 1)`` for raw features.

        Row ``b * n + i`` is candidate ``i`` for set ``b``; class ``c`` of the output is
        class ``c`` of the set. ``temperature`` (default ``sampling.temperature``) scales
        the start noise; with ``fallback`` a set that fails the known-class test
        (:meth:`known`) gets ``n`` copies of its anchor head (the diffusion still runs for
        it, so the random stream does not depend on the test); with ``identify`` (default
        ``config.identify``) a set that passes it is sampled as if its classes' support
        means were the centres of the zoo classes they are matched to (:meth:`identified`).
        """
        self.eval()
        self.check_sets(sets)
        identify = self.config.identify if identify is None else identify
        known, match = self.match(sets)
        if identify:
            sets = self.identified(sets, match)
        cond = self.condition(sets)
        anchor = self.centred_anchor_rows(sets).repeat_interleave(n, dim=0)
        cond = None if cond is None else cond.repeat_interleave(n, dim=0)
        shape = (anchor.shape[0], sets.shape[1], self.row_dim)
        s = self.config.sampling
        guidance = s.guidance if guidance is None else guidance
        x = self.diffusion.ddim_sample(
            self.denoiser, shape, cond=cond, steps=steps or s.steps,
            guidance_scale=guidance if cond is not None else 1.0,
            generator=generator, device=anchor.device,
            temperature=s.temperature if temperature is None else temperature,
        )  # fmt: skip
        residual = x * self.res_std + self.res_mean
        if fallback:
            keep = known.to(anchor.device).repeat_interleave(n)
            residual = residual * keep.view(-1, 1, 1).to(residual.dtype)
        return self.raw_rows(anchor + residual)

    # ------------------------------------------------------------------ storage
    def to_bundle(self, spec_fingerprint: str) -> dict[str, dict[str, Any]]:
        """Tensors + metadata (config, feature width, the spec it generates)."""
        meta = {
            "kind": "classwise",
            "config": self.config.to_dict(),
            "feature_dim": self.feature_dim,
            "spec_fingerprint": spec_fingerprint,
        }
        return {
            "tensors": {f"model.{k}": v for k, v in self.state_dict().items()},
            "metadata": meta,
        }

    @classmethod
    def from_bundle(
        cls, bundle: dict[str, dict[str, Any]], spec_fingerprint: str
    ) -> ClassWiseD2NWG:
        """Rebuild; refuses a generator trained for another head spec."""
        t, m = bundle["tensors"], bundle["metadata"]
        if m.get("kind") != "classwise":
            raise CheckpointMismatchError("this bundle is not a class-wise D2NWG generator")
        if m["spec_fingerprint"] != spec_fingerprint:
            raise CheckpointMismatchError(
                "this class-wise D2NWG generates heads of another parameter spec "
                f"({m['spec_fingerprint'][:12]}... vs {spec_fingerprint[:12]}...): retrain it "
                "(kedro run --pipelines=d2nwg)"
            )
        model = cls(ClassWiseConfig.from_dict(m["config"]), m["feature_dim"])
        if "model.known_centres" in t:  # its size (known classes) is set by training
            model.known_centres = torch.zeros_like(t["model.known_centres"])
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        return model.eval()


def classwise_sampler(
    model: ClassWiseD2NWG,
    names: tuple[str, str],
    seed: int,
    temperature: float | None = None,
    fallback: bool = True,
    identify: bool | None = None,
) -> Callable[[torch.Tensor, int], dict[str, torch.Tensor]]:
    """The generator as a sampler: support sets ``(B, K, S, d)`` -> stacked heads
    ``{w: (B * n, K, d), b: (B * n, K)}`` (one seeded generator serves every call);
    ``temperature``, ``fallback`` and ``identify`` as :meth:`ClassWiseD2NWG.sample`."""
    device = model.metric.device
    gen = torch.Generator(device=device).manual_seed(seed)

    def sample(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        rows = model.sample(
            sets.to(device), n, gen, temperature=temperature, fallback=fallback,
            identify=identify,
        )  # fmt: skip
        return from_rows(rows.cpu(), names)

    return sample


def anchor_sampler(
    model: ClassWiseD2NWG, names: tuple[str, str]
) -> Callable[[torch.Tensor, int], dict[str, torch.Tensor]]:
    """The method without diffusion: ``n`` copies of each support set's anchor head (the
    metric-prototype head, scaled), as a sampler."""
    device = model.metric.device

    @torch.no_grad()
    def sample(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        rows = model.anchor_rows(sets.to(device)).repeat_interleave(n, dim=0)
        return from_rows(rows.cpu(), names)

    return sample


def classwise_embedder(model: ClassWiseD2NWG) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dataset embedding ``(B, dim)``: the mean of the class embeddings (order-free)."""
    device = model.metric.device

    @torch.no_grad()
    def embed(sets: torch.Tensor) -> torch.Tensor:
        return model.class_embeddings(sets.to(device)).mean(1).cpu()

    return embed


__all__ = [
    "ANCHORS",
    "ClassDenoiserConfig",
    "ClassTokenDenoiser",
    "ClassWiseConfig",
    "ClassWiseD2NWG",
    "anchor_sampler",
    "classwise_embedder",
    "classwise_sampler",
]
