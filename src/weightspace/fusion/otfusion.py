"""OTFusion: layer-wise model fusion with optimal transport (Singh & Jaggi, NeurIPS 2020).

CLAFusion (Nguyen et al.) uses it as the third step of its framework (§2.3, §3, App. B).
For every hidden neuron group, in forward order, model A is aligned to the target model:

1. its incoming weights are first aligned on the input side with the previous group's
   transport, :math:`\\hat W_A = W_A T^{(l-1)} \\operatorname{diag}(1/\\beta^{(l-1)})`;
2. a ground cost between A's neurons and the target's neurons is computed either from the
   rows of :math:`\\hat W_A` and :math:`W_T` (weight-based) or from the neurons'
   pre-activations on the same samples (activation-based);
3. the transport :math:`T^{(l)}` between uniform measures over the two neuron sets is
   solved exactly (``ot.emd``) or with entropic regularisation (``ot.sinkhorn``);
4. A's outgoing neurons are averaged onto the target's:
   :math:`\\tilde W_A = \\operatorname{diag}(1/\\beta^{(l)}) T^{(l)\\top} \\hat W_A`.

The fused model is the weighted average of the aligned models; its widths follow the
target model, so networks of different widths fuse. Biases and BatchNorm parameters and
running statistics are per-neuron vectors aligned like a weight column. The output layer
stays aligned to the classes (identity transport). In a ResNet every layer writing into a
residual stream shares that stream's transport. With exact OT and equal widths the
transport is a scaled permutation, so fusing a model with a permuted copy of itself gives
back the same function.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ot
import torch
from torch import nn

from weightspace.device import module_device
from weightspace.errors import (
    ArchitectureMismatchError,
    InvalidParameterError,
    TransportNotConvergedError,
)
from weightspace.fusion.activations import capture, neuron_matrix
from weightspace.fusion.inputs import check_fusion_inputs
from weightspace.fusion.structure import OUTPUT, NeuronLayer, Structure, check_compatible

GROUND_METRICS = ("activation", "weight")
SOLVERS = ("emd", "sinkhorn")
DISTANCES = ("euclidean", "sqeuclidean")
ON_UNCONVERGED = ("error", "warn")
EMD_MIN_ITER = 100_000
"""POT's own default ``numItermax``: the floor of the size-scaled limit."""
EMD_ITER_PER_ENTRY = 10
"""Size-scaled iteration limit of the exact solver: this many per cost-matrix entry.
A 2048 x 2048 layer needs about ``n_a * n_t`` network-simplex iterations; POT's fixed
default of 100,000 stops long before that (with only a warning)."""
_C_INT_MAX = 2**31 - 1

log = logging.getLogger(__name__)


_BN_VECTORS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class OTFusionConfig:
    """How OTFusion aligns neurons.

    Attributes
    ----------
    ground_metric : {"activation", "weight"}
        Cost between neurons: distances between pre-activations on ``n_samples`` inputs,
        or between (input-aligned) incoming weight rows.
    solver : {"emd", "sinkhorn"}
        Exact transport or entropic (Sinkhorn; log domain when the plain one underflows).
    reg : float
        Sinkhorn regularisation, relative to the cost matrix's largest entry.
    distance : {"euclidean", "sqeuclidean"}
    n_samples : int
        Samples used for activation-based costs (and CLAFusion's representations).
    recompute_bn_stats : bool
        After averaging, re-estimate BatchNorm running statistics on the samples passed
        to the fusion (:func:`recompute_batchnorm_stats`); off by default, as in the papers.
    emd_max_iter : int or None
        Iteration limit of the exact solver (POT's ``numItermax``); ``None`` scales it with
        the layer: ``max(100000, 10 * n_a * n_t)``.
    on_unconverged : {"error", "warn"}
        What to do when the exact solver stops at ``emd_max_iter`` before optimality (its
        plan is then not the optimal transport): raise
        :class:`TransportNotConvergedError`, or warn and use the plan.
    """

    ground_metric: str = "activation"
    solver: str = "emd"
    reg: float = 0.01
    distance: str = "euclidean"
    n_samples: int = 200
    recompute_bn_stats: bool = False
    emd_max_iter: int | None = None
    on_unconverged: str = "error"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("ground_metric", self.ground_metric, GROUND_METRICS),
            ("solver", self.solver, SOLVERS),
            ("distance", self.distance, DISTANCES),
            ("on_unconverged", self.on_unconverged, ON_UNCONVERGED),
        ):
            if value not in allowed:
                raise InvalidParameterError(
                    f"OTFusion {name} must be one of {allowed}, got {value!r} (ot.{name})"
                )
        if not _is_number(self.reg) or not math.isfinite(self.reg) or not self.reg > 0:
            raise InvalidParameterError(
                f"OTFusion reg must be > 0 and finite, got {self.reg!r} (ot.reg)"
            )
        if not _is_int(self.n_samples) or self.n_samples < 2:
            raise InvalidParameterError(
                f"OTFusion n_samples must be >= 2 (an integer), got {self.n_samples!r} "
                "(ot.n_samples)"
            )
        if self.emd_max_iter is not None and (
            not _is_int(self.emd_max_iter) or not 1 <= self.emd_max_iter <= _C_INT_MAX
        ):
            raise InvalidParameterError(
                f"OTFusion emd_max_iter must be an integer in [1, {_C_INT_MAX}] or null "
                f"(scaled with the layer size), got {self.emd_max_iter!r} (ot.emd_max_iter)"
            )
        if not isinstance(self.recompute_bn_stats, bool):
            raise InvalidParameterError(
                f"OTFusion recompute_bn_stats must be true or false, got "
                f"{self.recompute_bn_stats!r} (ot.recompute_bn_stats)"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def emd_iteration_limit(n_a: int, n_t: int, max_iter: int | None = None) -> int:
    """POT ``numItermax`` for an ``(n_a, n_t)`` exact problem: ``max_iter`` if given, else
    ``max(100000, 10 * n_a * n_t)`` (capped at the solver's C ``int``)."""
    if max_iter is not None:
        return int(max_iter)
    return int(min(max(EMD_MIN_ITER, EMD_ITER_PER_ENTRY * n_a * n_t), _C_INT_MAX))


def _emd(a: np.ndarray, b: np.ndarray, m: np.ndarray, max_iter: int, on_unconverged: str):
    """``ot.emd`` with its convergence read from ``log=True``, not from warnings."""
    with warnings.catch_warnings():  # POT warns itself; the log's result code decides
        warnings.filterwarnings("ignore", message="numItermax reached", category=UserWarning)
        plan, info = ot.emd(a, b, m, numItermax=max_iter, log=True)
    if info.get("warning") is None and info.get("result_code", 1) == 1:
        return plan
    off = max(np.abs(plan.sum(1) - a).max(), np.abs(plan.sum(0) - b).max())
    message = (
        f"the exact OT solver (ot.emd) did not converge on a {m.shape[0]} x {m.shape[1]} "
        f"cost matrix within numItermax={max_iter} (result_code {info.get('result_code')}: "
        f"{info.get('warning')}); its plan is not optimal (largest marginal error "
        f"{off:.2g}, total mass {plan.sum():.4g} of 1). Raise ot.emd_max_iter (null scales "
        "it with the layer size) or use solver: sinkhorn"
    )
    if on_unconverged == "error":
        raise TransportNotConvergedError(
            f"{message}; ot.on_unconverged: warn uses such plans with a warning"
        )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)
    return plan


def transport_map(
    cost: torch.Tensor,
    solver: str = "emd",
    reg: float = 0.01,
    *,
    max_iter: int | None = None,
    on_unconverged: str = "error",
) -> torch.Tensor:
    """Optimal coupling between uniform measures on the rows and columns of ``cost``.

    Parameters
    ----------
    cost : Tensor (n_a, n_t)
    solver : {"emd", "sinkhorn"}
    reg : float
        Entropic regularisation relative to ``cost.max()`` (Sinkhorn only).
    max_iter : int, optional
        Iteration limit of the exact solver; default scaled with the problem size
        (:func:`emd_iteration_limit`).
    on_unconverged : {"error", "warn"}
        The exact solver stopped at ``max_iter`` (read from POT's ``log["result_code"]``):
        raise :class:`TransportNotConvergedError` or warn (``RuntimeWarning``).

    Returns
    -------
    Tensor (n_a, n_t), float64
        Rows sum to ``1/n_a``, columns to ``1/n_t``.
    """
    if on_unconverged not in ON_UNCONVERGED:
        raise InvalidParameterError(
            f"on_unconverged must be one of {ON_UNCONVERGED}, got {on_unconverged!r}"
        )
    m = cost.detach().double().cpu().numpy()
    if not np.isfinite(m).all():
        raise InvalidParameterError("the OT ground cost contains NaN or inf (non-finite weights?)")
    n_a, n_t = m.shape
    a, b = np.full(n_a, 1.0 / n_a), np.full(n_t, 1.0 / n_t)
    if solver == "emd":
        plan = _emd(a, b, m, emd_iteration_limit(n_a, n_t, max_iter), on_unconverged)
    elif solver == "sinkhorn":
        scale = m.max() if m.max() > 0 else 1.0
        plan = ot.sinkhorn(a, b, m / scale, reg, numItermax=5000, stopThr=1e-9)
        if not np.isfinite(plan).all():  # underflow at a very small reg: log domain
            plan = ot.sinkhorn(a, b, m / scale, reg, method="sinkhorn_log", numItermax=5000)
    else:
        raise InvalidParameterError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return torch.from_numpy(np.asarray(plan, dtype=np.float64))


def _distance(u: torch.Tensor, v: torch.Tensor, distance: str) -> torch.Tensor:
    d = torch.cdist(u.double(), v.double())
    return d.square() if distance == "sqeuclidean" else d


def _align_in(w: torch.Tensor, p_in: torch.Tensor | None) -> torch.Tensor:
    """``W P_in`` over the input axis (dim 1) of a linear or conv weight."""
    if p_in is None:
        return w
    return torch.einsum("oi...,ij->oj...", w.double(), p_in)


def _align_out(v: torch.Tensor, p_out: torch.Tensor | None) -> torch.Tensor:
    """``P_outᵀ V`` over the output axis (dim 0)."""
    if p_out is None:
        return v.double()
    return torch.einsum("ij,i...->j...", p_out, v.double())


class _Aligner:
    """Aligns one model to the target, neuron group by neuron group."""

    def __init__(
        self,
        model: nn.Module,
        target: nn.Module,
        structure: Structure,
        config: OTFusionConfig,
        acts: Mapping[str, torch.Tensor] | None,
        target_acts: Mapping[str, torch.Tensor] | None,
    ) -> None:
        self.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        self.target = {k: v.detach().cpu() for k, v in target.state_dict().items()}
        self.structure, self.config = structure, config
        self.acts, self.target_acts = acts, target_acts
        self.plans: dict[str, torch.Tensor] = {}  # group -> P = T diag(1/beta), (n_a, n_t)

    def _p(self, group: str | None) -> torch.Tensor | None:
        return None if group is None or group == OUTPUT else self.plans[group]

    def _rows(self, state: Mapping[str, torch.Tensor], layer: NeuronLayer, aligned: bool):
        w = state[f"{layer.path}.weight"]
        if aligned:
            w = _align_in(w, self._p(layer.in_group))
        rows = [w.double().reshape(w.shape[0], -1)]
        if f"{layer.path}.bias" in state:
            rows.append(state[f"{layer.path}.bias"].double()[:, None])
        return torch.cat(rows, 1)

    def _cost(self, group: str) -> torch.Tensor:
        writers = self.structure.writers(group)
        if self.config.ground_metric == "activation":
            a = torch.cat([neuron_matrix(self.acts[w.preact]) for w in writers], 1)
            t = torch.cat([neuron_matrix(self.target_acts[w.preact]) for w in writers], 1)
        else:  # writers whose inputs are aligned already (stem / shortcut for a stream)
            ready = [w for w in writers if w.in_group is None or w.in_group in self.plans]
            a = torch.cat([self._rows(self.state, w, True) for w in ready], 1)
            t = torch.cat([self._rows(self.target, w, False) for w in ready], 1)
        return _distance(a, t, self.config.distance)

    def align(self) -> dict[str, torch.Tensor]:
        """A's state dict expressed in the target's neurons (target's shapes)."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.structure.layers:
            g = layer.out_group
            if g != OUTPUT and g not in self.plans:
                c = self.config
                plan = transport_map(
                    self._cost(g), c.solver, c.reg,
                    max_iter=c.emd_max_iter, on_unconverged=c.on_unconverged,
                )  # fmt: skip
                self.plans[g] = plan * plan.shape[1]  # T diag(1/beta)
            p_out = self._p(g)
            w = _align_out(
                _align_in(self.state[f"{layer.path}.weight"], self._p(layer.in_group)), p_out
            )
            out[f"{layer.path}.weight"] = w
            if f"{layer.path}.bias" in self.state:
                out[f"{layer.path}.bias"] = _align_out(self.state[f"{layer.path}.bias"], p_out)
            if layer.norm is not None:
                for name in _BN_VECTORS:
                    out[f"{layer.norm}.{name}"] = _align_out(
                        self.state[f"{layer.norm}.{name}"], p_out
                    )
                key = f"{layer.norm}.num_batches_tracked"
                out[key] = self.target[key]
        missing = sorted(set(self.target) - set(out))
        if missing:  # a parameter no layer accounts for: refuse rather than drop it
            raise InvalidParameterError(f"OTFusion does not know how to align {missing[:5]}")
        return out


def _activations(models: Sequence[nn.Module], structures: Sequence[Structure], x: torch.Tensor):
    paths = sorted({lay.preact for lay in structures[0].layers if lay.out_group != OUTPUT})
    return [capture(m, x, paths) for m in models]


def align_models(
    models: Sequence[nn.Module],
    x: torch.Tensor | None = None,
    target: int = 0,
    config: OTFusionConfig | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Every model's state dict aligned to ``models[target]`` (float64 tensors).

    Parameters
    ----------
    models : sequence of nn.Module
        Same family and depth (widths may differ); see :func:`otfusion`.
    x : Tensor (N, *input_shape), optional
        Samples for the activation-based ground metric (the first ``n_samples`` are used).
    target : int
        Index of the model whose neurons (and widths) the others are aligned to.
    config : OTFusionConfig, optional
    """
    config = config or OTFusionConfig()
    models = list(models)
    structures = check_compatible(models, same_depth=True)
    if not 0 <= int(target) < len(models):
        raise InvalidParameterError(
            f"target must index one of the {len(models)} models, got {target}"
        )
    acts: list[dict[str, torch.Tensor]] | list[None] = [None] * len(models)
    if config.ground_metric == "activation":
        if x is None:
            raise InvalidParameterError(
                "the activation-based ground metric needs samples: pass x, or set "
                "ground_metric='weight'"
            )
        acts = _activations(models, structures, x[: int(config.n_samples)])
    aligned = []
    for k, model in enumerate(models):
        if k == target:
            aligned.append({kk: v.detach().cpu().double() for kk, v in model.state_dict().items()})
            continue
        aligner = _Aligner(model, models[target], structures[k], config, acts[k], acts[target])
        aligned.append(aligner.align())
    return aligned


def average_states(
    states: Sequence[Mapping[str, torch.Tensor]],
    reference: nn.Module,
    weights: Sequence[float] | None = None,
) -> nn.Module:
    """A copy of ``reference`` holding the weighted average of ``states``.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are taken from ``reference``.
    """
    k = len(states)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.isfinite(w).all() or (w < 0).any() or not np.isclose(w.sum(), 1):
        raise InvalidParameterError(
            f"fusion weights must be {k} non-negative numbers summing to 1, got {weights}"
        )
    ref = reference.state_dict()
    fused = {}
    for key, value in ref.items():
        if not value.is_floating_point():
            fused[key] = value.clone()
            continue
        avg = sum(float(wi) * s[key].double() for wi, s in zip(w, states, strict=True))
        fused[key] = avg.to(dtype=value.dtype, device=value.device)
    model = copy.deepcopy(reference)
    model.load_state_dict(fused)
    return model


def otfusion(
    models: Sequence[nn.Module],
    x: torch.Tensor | None = None,
    *,
    target: int = 0,
    weights: Sequence[float] | None = None,
    config: OTFusionConfig | None = None,
    **options: Any,
) -> nn.Module:
    """Fuse models of one family and depth into one model with the target's widths.

    Parameters
    ----------
    models : sequence of nn.Module
        Plain ``nn.Sequential`` stacks of ``[Flatten,] Linear, ReLU, ..., Linear`` or the
        registry's ``vgg`` / ``resnet`` models; same depth and kernel sizes, any widths.
    x : Tensor (N, *input_shape), optional
        Samples for the activation-based ground metric (required for it).
    target : int
        The model the others are aligned to (the fused model's architecture), as the
        "initial estimate" of K > 2 fusion in OTFusion §4.
    weights : sequence of float, optional
        Fusion weights (default uniform).
    config : OTFusionConfig, optional
        How neurons are aligned (default ``OTFusionConfig()``); keyword ``options`` named
        like its fields replace them: ``otfusion(models, x, ground_metric="weight")``.

    Returns
    -------
    nn.Module
        A new module (a copy of ``models[target]``) with the fused weights.

    Raises
    ------
    InvalidParameterError
        Fewer than two models, or a bad option.
    NonFiniteWeightsError
        A NaN or inf in a model (named with its index and parameter).
    ArchitectureMismatchError
        Different layer types or activations, families, depths or input/output sizes.
    TransportNotConvergedError
        The exact solver did not converge (``config.on_unconverged="error"``).
    """
    config = _with_options(config or OTFusionConfig(), options)
    models = check_fusion_inputs("otfusion", models, same_depth=True, x=x)
    states = align_models(models, x, target, config)
    fused = average_states(states, models[target], weights)
    if config.recompute_bn_stats and x is not None:
        recompute_batchnorm_stats(fused, x)
    return fused


def _with_options(config: OTFusionConfig, options: Mapping[str, Any]) -> OTFusionConfig:
    allowed = sorted(f.name for f in dataclasses.fields(OTFusionConfig))
    if unknown := sorted(set(options) - set(allowed)):
        raise InvalidParameterError(f"otfusion() got unknown options {unknown}; use {allowed}")
    return dataclasses.replace(config, **options)


def vanilla_average(
    models: Sequence[nn.Module], weights: Sequence[float] | None = None
) -> nn.Module:
    """Average the parameters of identically shaped models without any alignment.

    Raises
    ------
    InvalidParameterError
        Fewer than two models (an empty list included).
    NonFiniteWeightsError
        A NaN or inf in a model (named with its index and parameter).
    ArchitectureMismatchError
        When layer types, activations, state-dict keys or shapes differ (named in the
        message).
    """
    models = check_fusion_inputs("vanilla_average", models, same_depth=True)
    ref = models[0].state_dict()
    for k, m in enumerate(models[1:], start=1):
        sd = m.state_dict()
        if set(sd) != set(ref):
            raise ArchitectureMismatchError(
                f"model {k} has parameters {sorted(set(sd) ^ set(ref))[:5]} that model 0 "
                "does not share: vanilla averaging needs identical architectures"
            )
        for key, v in sd.items():
            if v.shape != ref[key].shape:
                raise ArchitectureMismatchError(
                    f"model {k}'s '{key}' has shape {tuple(v.shape)} but model 0's has "
                    f"{tuple(ref[key].shape)}: vanilla averaging needs identical shapes; use "
                    "otfusion() for different widths"
                )
    return average_states([m.state_dict() for m in models], models[0], weights)


@torch.no_grad()
def recompute_batchnorm_stats(
    model: nn.Module, x: torch.Tensor, batch_size: int = 256
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``x`` (in place).

    Averaging aligned networks averages their running statistics too, which no longer
    match the fused network's activations; one pass over data in train mode with a
    cumulative average (``momentum=None``) replaces them by the fused network's own
    statistics. Weights are not changed. Optional in fusion (``recompute_bn_stats``): the
    papers do not do it, and it matters only for models with BatchNorm.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (N, *input_shape)
        Samples (moved to the model's device batch by batch).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    device = module_device(model)
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        if len(batch) > 1:
            model(batch.to(device))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model
