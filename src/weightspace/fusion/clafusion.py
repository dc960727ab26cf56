"""CLAFusion: fuse networks of different depths (Nguyen et al., "On Cross-Layer Alignment
for Model Fusion of Heterogeneous Neural Networks").

The three parts of the framework (§3, Figure 1):

1. **Cross-layer alignment** (§3.1): the layer representation is the pre-activation
   matrix of ``t`` samples (default 200), the dissimilarity ``1 - linear CKA``, and
   Algorithm 1's dynamic programme maps the shallower model's hidden layers onto the
   deeper model's (first to first, last to last). CNNs align per group: VGG convolutions
   between poolings (and the classifier's hidden layers apart), ResNet blocks per stage.
2. **Layer balancing** (§3.2): add function-preserving layers to the shallower model
   (identity matrices / identity kernels / zero blocks), or, for MLPs, merge the deeper
   model's unmatched layers with an estimate of their ReLU masks.
3. **Layer-wise fusion**: OTFusion (:mod:`weightspace.fusion.otfusion`) of the
   depth-aligned models.

K > 2 models (§3.3): the deepest model is the initial estimate of the fused model; every
model is depth-aligned to it, then all are fused with OTFusion. With ``balancing="merge"``
the shallowest model plays that role and deeper models are merged down to it. The fused
model's widths follow ``target`` (default: that initial model); in the teacher–student
setting (§4.2) the target is the student, so the fused model has the teacher's depth and
the student's widths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from weightspace.errors import ArchitectureMismatchError, InvalidParameterError
from weightspace.fusion.activations import capture
from weightspace.fusion.alignment import cost_from_widths, cross_layer_alignment
from weightspace.fusion.balance import balance_by_adding
from weightspace.fusion.cka import cka_cost_matrix
from weightspace.fusion.inputs import check_fusion_inputs
from weightspace.fusion.merge import ESTIMATES, balance_by_merging
from weightspace.fusion.otfusion import (
    OTFusionConfig,
    align_models,
    average_states,
    recompute_batchnorm_stats,
)
from weightspace.fusion.structure import Structure, check_compatible

log = logging.getLogger(__name__)

BALANCING = ("add", "merge")
LAYER_COSTS = ("cka", "neurons")
MERGE_ESTIMATES = ESTIMATES


@dataclass(frozen=True)
class CLAFusionConfig:
    """CLAFusion settings.

    Attributes
    ----------
    balancing : {"add", "merge"}
        Add layers to shallower models or merge layers of deeper ones (MLPs only).
    merge_estimate : {"sign_of_sum", "majority", "average"}
        Estimate of a merged layer's ReLU mask (§3.2).
    layer_cost : {"cka", "neurons"}
        ``1 - linear CKA`` of pre-activations, or squared difference of widths (Fig. 2).
    ot : OTFusionConfig
        The layer-wise fusion step (its ``n_samples`` also sizes the representations).
    """

    balancing: str = "add"
    merge_estimate: str = "sign_of_sum"
    layer_cost: str = "cka"
    ot: OTFusionConfig = field(default_factory=OTFusionConfig)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("balancing", self.balancing, BALANCING),
            ("merge_estimate", self.merge_estimate, MERGE_ESTIMATES),
            ("layer_cost", self.layer_cost, LAYER_COSTS),
        ):
            if value not in allowed:
                raise InvalidParameterError(
                    f"CLAFusion {name} must be one of {allowed}, got {value!r} (cla.{name})"
                )
        if not isinstance(self.ot, OTFusionConfig):
            raise InvalidParameterError(
                f"CLAFusion ot must be an OTFusionConfig, got {type(self.ot).__name__}"
            )


@dataclass
class CLAFusionResult:
    """The fused model and what led to it.

    Attributes
    ----------
    fused : nn.Module
    depth_aligned : list of nn.Module
        Every input model after layer balancing (same depth as ``fused``).
    mappings : list of list of list of int
        ``mappings[k][g]``: CLA of model k's units in alignment group g onto the initial
        model's (0-based); ``None`` for the initial model itself.
    initial : int
        Index of the model all others were depth-aligned to.
    target : int
        Index of the model whose widths the fused model has.
    seconds : float
        Wall time of the whole fusion (representations, CLA, balancing, OT, averaging).
    """

    fused: nn.Module
    depth_aligned: list[nn.Module]
    mappings: list[list[list[int]] | None]
    initial: int
    target: int
    seconds: float


def _representations(
    model: nn.Module, structure: Structure, x: torch.Tensor
) -> list[list[torch.Tensor]]:
    paths = [p for g in structure.align_groups for p in g.preacts]
    outs = capture(model, x, paths)
    return [[outs[p] for p in g.preacts] for g in structure.align_groups]


def _widths(model: nn.Module, structure: Structure) -> list[list[int]]:
    modules = dict(model.named_modules())
    out = []
    for g in structure.align_groups:
        out.append([_out_width(modules[u]) for u in g.units])
    return out


def _out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if hasattr(module, "out_channels"):
        return int(module.out_channels)
    return int(module.conv2.out_channels)  # a residual block


def _pick_initial(structures: Sequence[Structure], deepest: bool) -> int:
    depths = np.array([s.depths for s in structures])
    best = depths.max(0) if deepest else depths.min(0)
    hits = [k for k in range(len(structures)) if (depths[k] == best).all()]
    if not hits:
        word = "deepest" if deepest else "shallowest"
        raise ArchitectureMismatchError(
            f"no model is the {word} in every layer group (group depths {depths.tolist()}); "
            "CLAFusion depth-aligns every model to one initial model, which must be "
            f"{word} in each group"
        )
    return hits[0]


def layer_cost_matrices(
    initial: nn.Module,
    s_init: Structure,
    model: nn.Module,
    s_model: Structure,
    x: torch.Tensor,
    layer_cost: str = "cka",
) -> list[np.ndarray]:
    """Per alignment group, the (m, n) cost between the initial model's units (rows)
    and ``model``'s (columns)."""
    if layer_cost == "neurons":
        wa, wb = _widths(initial, s_init), _widths(model, s_model)
        return [cost_from_widths(a, b) for a, b in zip(wa, wb, strict=True)]
    ra, rb = _representations(initial, s_init, x), _representations(model, s_model, x)
    return [
        cka_cost_matrix(a, b).numpy() if a and b else np.zeros((len(a), len(b)))
        for a, b in zip(ra, rb, strict=True)
    ]


def _align_group(cost: np.ndarray, deeper_rows: bool) -> list[int]:
    m, n = cost.shape
    if n == 0:
        return []
    if m == 0:
        raise ArchitectureMismatchError(
            "a group of the initial model is empty while another model's is not"
        )
    return cross_layer_alignment(cost if deeper_rows else cost.T)


def clafusion(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    config: CLAFusionConfig | None = None,
    target: int | None = None,
    weights: Sequence[float] | None = None,
) -> CLAFusionResult:
    """Fuse models of one family with different depths (and widths).

    Parameters
    ----------
    models : sequence of nn.Module
        Plain ``nn.Sequential`` MLPs or the registry's ``mlp``/``vgg``/``resnet`` models;
        same input and output sizes; the same number of pooling stages (VGG) or stages
        (ResNet).
    x : Tensor (N, *input_shape)
        Samples for the layer representations and the activation-based OT cost; the
        first ``config.ot.n_samples`` are used.
    config : CLAFusionConfig, optional
    target : int, optional
        Model whose widths the fused model takes (default: the initial model, i.e. the
        deepest with ``balancing="add"``, the shallowest with ``"merge"``).
    weights : sequence of float, optional
        Fusion weights over ``models`` (default uniform).

    Returns
    -------
    CLAFusionResult

    Raises
    ------
    InvalidParameterError
        Fewer than two models, samples with NaN or inf, or a bad option.
    NonFiniteWeightsError
        A NaN or inf in a model (named with its index and parameter).
    ArchitectureMismatchError
        Different activations, families, stage counts or input/output sizes.
    """
    start = time.perf_counter()
    config = config or CLAFusionConfig()
    models = check_fusion_inputs("clafusion", models, same_depth=False, x=x)
    structures = check_compatible(models, same_depth=False)
    xs = x[: int(config.ot.n_samples)]
    add = config.balancing == "add"
    if not add and structures[0].family != "mlp":
        raise InvalidParameterError(
            f"balancing='merge' is defined for MLPs only (§3.2), got {structures[0].family} "
            "models; use balancing='add'"
        )
    initial = _pick_initial(structures, deepest=add)
    target = initial if target is None else int(target)
    if not 0 <= target < len(models):
        raise InvalidParameterError(
            f"target must index one of the {len(models)} models, got {target}"
        )
    aligned: list[nn.Module] = []
    mappings: list[list[list[int]] | None] = []
    s0, m0 = structures[initial], models[initial]
    for k, (model, s) in enumerate(zip(models, structures, strict=True)):
        if k == initial:
            aligned.append(model)
            mappings.append(None)
            continue
        if add:
            costs = layer_cost_matrices(m0, s0, model, s, xs, config.layer_cost)
            maps = [_align_group(c, deeper_rows=True) for c in costs]
            aligned.append(balance_by_adding(model, maps, s0.depths))
        else:  # model k is the deeper one: its layers are the rows
            costs = layer_cost_matrices(model, s, m0, s0, xs, config.layer_cost)
            maps = [_align_group(c, deeper_rows=True) for c in costs]
            pre = _representations(model, s, xs)[0]
            aligned.append(balance_by_merging(model, maps[0], pre, config.merge_estimate))
        mappings.append(maps)
        log.info("CLAFusion: model %d -> model %d, alignment %s", k, initial, maps)
    states = align_models(aligned, x, target, config.ot)
    fused = average_states(states, aligned[target], weights)
    if config.ot.recompute_bn_stats:
        recompute_batchnorm_stats(fused, x)
    return CLAFusionResult(
        fused=fused,
        depth_aligned=aligned,
        mappings=mappings,
        initial=initial,
        target=target,
        seconds=time.perf_counter() - start,
    )
