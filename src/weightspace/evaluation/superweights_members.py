"""Members of the SuperWeights experiment: their architectures and how each method trains them.

The architectures follow the supplement (``papers/superweights_parameter_allocation_search_
supplementary.txt``) scaled down to registry ``resnet`` networks; every member is the
protocol's ``base`` config with its channel counts multiplied by a width factor (rounded
half up, at least 1) and, for the shallow members, one block fewer per stage (at least 1):

- ``ho`` (SWN-HO, Sec. 1.1 and Table 5): ``n_members`` copies of the base;
- ``he_width`` (SWN-Multi-Width, Sec. 1.1: WRN-28-[7,4,3]; Table 3's SWN-Heterogeneous:
  widths 12/10/8): member ``i`` has width ``1 - (3/7) i / (n - 1)``, i.e.
  ``(1, 6/7, 5/7, 4/7)`` for four members, from the base down to the paper's 4/7 ratio
  (WRN-28-4 vs WRN-28-7);
- ``he_depth_width`` (SWN-Multi-Depth/Width, Sec. 1.1: WRN-28-[7,4] and WRN-16-[7,4]):
  two depths (the base's blocks, and one block fewer per stage) times two widths (1 and
  4/7), in the order (deep, 1), (shallow, 4/7), (deep, 4/7), (shallow, 1), repeated for
  more than four members, so that any two first members already differ in depth and width.

Training (one loop per method, the same data, epochs, optimiser, learning rate and batch
size for every method): a plain network (single model, deep-ensemble member, the narrow
network of the NPAS comparison) and the BatchEnsemble go through the project's one
generic loop :func:`~weightspace.ensembles.kd.loop.fit_student`; a SuperWeight ensemble
through :func:`~weightspace.ensembles.superweights.train_superweights` (all members
jointly, the sum of their cross-entropies). Both draw the minibatch order from
``torch.Generator().manual_seed(seed)``. No validation split is used: every method keeps
its last epoch.

:class:`Runner` runs one :class:`RunSpec` (a row of the protocol's results) and returns
the members' test logits and plain networks (:class:`MemberRun`); seeds of every
initialisation and batch order derive from the run's seed and name
(:func:`derive_seed`), so a run gives the same result alone or within the protocol.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.data.base import SplitDataset
from weightspace.device import resolve_device
from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.kd import KDConfig
from weightspace.ensembles.kd.loop import StudentTask, fit_student
from weightspace.ensembles.kd.one_to_one import _fast_weight_rule
from weightspace.ensembles.superweights import (
    SuperWeightEnsemble,
    SuperWeightTrainConfig,
    build_plan,
    minimum_parameters,
    train_superweights,
)
from weightspace.ensembles.superweights.plan import shared_layers
from weightspace.errors import InvalidParameterError
from weightspace.metrics import ensemble_log_probs
from weightspace.nets.registry import build_model
from weightspace.zoo.init import reinitialized

__all__ = [
    "DEPTH_WIDTH",
    "KINDS",
    "MIN_WIDTH",
    "MemberRun",
    "RunSpec",
    "Runner",
    "build_member",
    "count_parameters",
    "derive_seed",
    "he_width_factors",
    "kind_configs",
    "minimum_budget",
    "narrow_config",
    "scale_config",
    "train_be",
    "train_plain",
    "train_swn",
]

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("ho", "he_width", "he_depth_width")
"""Ensemble kinds: homogeneous, multi-width, multi-depth/width."""

MIN_WIDTH = 4.0 / 7.0
"""Narrowest width factor of ``he_width`` (the supplement's WRN-28-4 vs WRN-28-7)."""

DEPTH_WIDTH = 4.0 / 7.0
"""The narrow width of ``he_depth_width`` (WRN-*-4 vs WRN-*-7)."""


# ------------------------------------------------------------------------ architectures
def _scale(c: int, factor: float) -> int:
    """``c * factor`` rounded half up, at least 1."""
    return max(1, math.floor(c * factor + 0.5))


def scale_config(base: Mapping, width: float = 1.0, fewer_blocks: int = 0) -> dict:
    """The base resnet config with channels times ``width`` and ``fewer_blocks`` fewer blocks
    per stage (at least one each)."""
    out = dict(base)
    out["stem_channels"] = _scale(int(base["stem_channels"]), width)
    out["stages"] = [
        [_scale(int(c), width), max(1, int(n) - fewer_blocks)] for c, n in base["stages"]
    ]
    return out


def he_width_factors(n: int) -> list[float]:
    """Width factors of ``he_width``: ``1 - (1 - MIN_WIDTH) i / (n - 1)``, ``i < n``."""
    return [1.0 - (1.0 - MIN_WIDTH) * i / (n - 1) for i in range(n)]


def kind_configs(base: Mapping, n_members: int, kind: str) -> list[dict]:
    """Resnet configs of the ``n_members`` members of ``kind`` (see the module docstring)."""
    if kind == "ho":
        return [scale_config(base) for _ in range(n_members)]
    if kind == "he_width":
        return [scale_config(base, f) for f in he_width_factors(n_members)]
    if kind == "he_depth_width":
        grid = [(0, 1.0), (1, DEPTH_WIDTH), (0, DEPTH_WIDTH), (1, 1.0)]
        return [scale_config(base, grid[i % 4][1], grid[i % 4][0]) for i in range(n_members)]
    raise InvalidParameterError(f"unknown ensemble kind {kind!r}; choose one of {list(KINDS)}")


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module`` (each tensor once)."""
    seen = {id(p): p.numel() for p in module.parameters() if p.requires_grad}
    return sum(seen.values())


def derive_seed(seed: int, *tags: object) -> int:
    """A seed in ``[0, 2**31)`` for one run: a CRC-32 of ``seed`` and ``tags``."""
    return zlib.crc32("/".join(str(t) for t in (seed, *tags)).encode()) % (2**31)


def build_member(
    config: Mapping, input_shape: Sequence[int], n_classes: int, seed: int
) -> nn.Module:
    """A registry resnet with the zoo's initialisation from ``seed``; the global RNG is
    left untouched."""
    with torch.random.fork_rng(devices=[]):
        model = build_model("resnet", config, tuple(input_shape), n_classes)
    return reinitialized(model, seed)


def narrow_config(
    base: Mapping, target: int, input_shape: Sequence[int], n_classes: int
) -> tuple[dict, float]:
    """The widest uniformly narrowed base (same depth) with at most ``target`` parameters.

    Bisection over the width factor (parameters grow monotonically with it). Returns the
    config and its width factor.

    Raises
    ------
    InvalidParameterError
        If even width 1 channel everywhere has more than ``target`` parameters.
    """

    def params(width: float) -> int:
        cfg = scale_config(base, width)
        with torch.random.fork_rng(devices=[]):
            model = build_model("resnet", cfg, tuple(input_shape), n_classes)
        return count_parameters(model)

    lo, hi = 0.0, 1.0
    if params(1e-9) > target:
        raise InvalidParameterError(
            f"no narrowing of the base has at most {target} parameters (one channel per "
            f"layer has {params(1e-9)}); raise the NPAS budget"
        )
    if params(1.0) <= target:
        return scale_config(base, 1.0), 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(mid) <= target else (lo, mid)
    return scale_config(base, lo), lo


def minimum_budget(
    members: Sequence[nn.Module], clusters: str, coefficient_sharing: str, n_bins: int = 4
) -> int:
    """The smallest parameter budget of a SuperWeight ensemble of ``members``.

    What :class:`~weightspace.ensembles.superweights.SuperWeightEnsemble` checks, computed
    without building it: per-member parameters plus one coefficient per member layer plus
    each bank at its largest region.
    """
    plan = build_plan(members, n_bins, clusters, coefficient_sharing)
    fixed = sum(
        count_parameters(m) - sum(layer.weight.numel() for _, layer in shared_layers(m))
        for m in members
    )
    return minimum_parameters(plan, fixed, reserve_unsharing=True)


# ----------------------------------------------------------------------------- training
def _kd_config(train: SuperWeightTrainConfig, seed: int) -> KDConfig:
    """The loop settings of :func:`fit_student` from the protocol's training settings."""
    return KDConfig(
        epochs=train.epochs,
        lr=train.lr,
        batch_size=train.batch_size,
        optimizer=train.optimizer,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        seed=seed,
    )


def train_plain(
    model: nn.Module, x: Tensor, y: Tensor, train: SuperWeightTrainConfig, seed: int
) -> float:
    """Train one plain network in place with cross-entropy; returns the wall time (s)."""
    task = StudentTask(
        model=model,
        batch_loss=lambda idx: F.cross_entropy(model(x[idx]), y[idx]),
        predict=model,
        n_train=x.shape[0],
    )
    start = time.perf_counter()
    fit_student(task, _kd_config(train, seed), None, False, "plain")
    return time.perf_counter() - start


def train_be(
    be: BatchEnsemble, x: Tensor, y: Tensor, train: SuperWeightTrainConfig, seed: int
) -> float:
    """Train a BatchEnsemble in place on labels: the mean of its members' cross-entropies.

    The fast weights start at ``1 + 0.5 N(0, 1)`` (seeded; the mean-one normal
    initialisation of the BatchEnsemble reference implementations): with every fast
    weight at one and one label loss, the members would get identical gradients and
    never differ. Fast weights follow BatchEnsemble's gradient rule (x ``M``, decay
    towards one, :mod:`weightspace.ensembles.kd.one_to_one`) and get no weight decay
    from the optimiser. Returns the wall time (s).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in be.fast_parameters():
            p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen).to(p))
    m = be.m

    def batch_loss(idx: Tensor) -> Tensor:
        logits = be.member_logits(x[idx])  # (M, b, C)
        return F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(m))

    fast_ids = {id(p) for p in be.fast_parameters()}
    slow = [p for p in be.parameters() if id(p) not in fast_ids]
    task = StudentTask(
        model=be,
        batch_loss=batch_loss,
        predict=lambda xb: ensemble_log_probs(be.member_logits(xb)),
        n_train=x.shape[0],
        param_groups=[
            {"params": slow},
            {"params": be.fast_parameters(), "weight_decay": 0.0},
        ],
        after_backward=_fast_weight_rule(be, train.weight_decay),
    )
    start = time.perf_counter()
    fit_student(task, _kd_config(train, seed), None, False, "batchensemble")
    return time.perf_counter() - start


def train_swn(
    members: Sequence[nn.Module],
    fraction: float,
    x: Tensor,
    y: Tensor,
    train: SuperWeightTrainConfig,
    seed: int,
    clusters: str = "depth",
    coefficient_sharing: str = "width",
    n_bins: int = 4,
) -> tuple[SuperWeightEnsemble, float]:
    """Build a SuperWeight ensemble of ``members`` at ``fraction`` of their summed
    parameters (bank seeded with ``seed``), train it jointly (batch order ``seed``) and
    return it in eval mode with the wall time (s) of its training."""
    ensemble = SuperWeightEnsemble(
        members,
        float(fraction),
        n_bins=n_bins,
        clusters=clusters,
        coefficient_sharing=coefficient_sharing,
        seed=seed,
    ).to(x.device)
    config = dataclasses.replace(train, seed=int(seed))
    start = time.perf_counter()
    train_superweights(ensemble, x, y, config)
    seconds = time.perf_counter() - start
    return ensemble.eval(), seconds


# --------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    """One run of the protocol, i.e. one row of its results.

    ``method`` is ``single``, ``de``, ``be`` or ``swn``; ``kind`` the ensemble kind (None
    for single / be / NPAS); ``budget`` a budget name; ``variant`` as in the rows;
    ``clusters`` / ``sharing`` the SWN's initial clusters and coefficient sharing;
    ``tau`` / ``beta`` its thresholds (None: that step is skipped).
    """

    seed: int
    method: str
    kind: str | None = None
    budget: str | None = None
    variant: str | None = None
    clusters: str = "depth"
    sharing: str = "width"
    tau: float | None = None
    beta: float | None = None


@dataclass
class MemberRun:
    """What one run produced.

    Attributes
    ----------
    logits : Tensor, shape (N, B, C)
        Every member's test logits (CPU, eval mode).
    nets : list of nn.Module
        Every member as a plain network (SWN: composed weights; BE: fast weights folded).
    params : int
        Unique trainable parameters of the whole run.
    seconds : float
        Wall time of its training.
    model : object
        The trained object (network, list of networks, BatchEnsemble, SuperWeightEnsemble).
    """

    logits: Tensor
    nets: list[nn.Module]
    params: int
    seconds: float
    model: object


@torch.no_grad()
def batched_logits(fn: Callable[[Tensor], Tensor], x: Tensor, device: torch.device) -> Tensor:
    """``fn(batch) -> (N, b, C)`` over ``x`` in batches of 1024, concatenated on the CPU."""
    return torch.cat([fn(x[s : s + 1024].to(device)).cpu() for s in range(0, len(x), 1024)], 1)


class Runner:
    """Trains the runs of one protocol on one dataset.

    Parameters
    ----------
    data : SplitDataset
        Trained on ``train``, logits on ``test``.
    protocol : SuperWeightsProtocol
        Read for ``base``, ``n_members``, ``kinds``, ``budgets``, ``npas_budgets``,
        ``train`` and ``device``.

    Attributes
    ----------
    de_params : dict str -> int
        Parameters of the deep ensemble of each kind (the budgets' reference).
    base_params : int
    narrow : dict str -> (dict, float)
        The NPAS comparison network per NPAS budget: config and width factor.
    bins : dict
        Initial depth bins chosen per SWN cell (None: the cell is skipped).
    skipped : list of dict
        ``one_sw`` / ``npas`` cells below their smallest possible ensemble.
    """

    def __init__(self, data: SplitDataset, protocol) -> None:
        p = self.p = protocol
        self.device = resolve_device(p.device)
        self.shape, self.n_classes = tuple(data.input_shape), int(data.n_classes)
        self.x, self.y = data.train.x.to(self.device), data.train.y.to(self.device)
        self.test = data.test
        self.de_params = {
            k: sum(count_parameters(self.arch(c)) for c in self._kind(k)) for k in p.kinds
        }
        self.base_params = count_parameters(self.arch(p.base))
        self.narrow = {
            b: narrow_config(
                p.base, math.floor(p.budgets[b] * self.base_params), self.shape, self.n_classes
            )
            for b in p.npas_budgets
        }
        self.bins: dict[tuple, int | None] = {}
        self.skipped: list[dict] = []

    def _kind(self, kind: str) -> list[dict]:
        return kind_configs(self.p.base, self.p.n_members, kind)

    def arch(self, config: Mapping) -> nn.Module:
        """A member of ``config`` (seed 0), on the CPU: for counting."""
        return build_member(config, self.shape, self.n_classes, 0)

    def member(self, config: Mapping, seed: int) -> nn.Module:
        """A freshly initialised member on the device."""
        return build_member(config, self.shape, self.n_classes, seed).to(self.device)

    def configs(self, spec: RunSpec) -> list[dict]:
        """Member configs of a SWN run: the base alone for NPAS, else its kind's."""
        return [dict(self.p.base)] if spec.variant == "npas" else self._kind(spec.kind)

    def reference(self, spec: RunSpec) -> int:
        """Parameters the budget fraction refers to (the base's for NPAS, else the DE's)."""
        return self.base_params if spec.variant == "npas" else self.de_params[spec.kind]

    def initial_bins(self, spec: RunSpec) -> int | None:
        """Depth bins a SWN run starts from: the most of 4, 3, 2, 1 whose smallest
        ensemble fits the budget (``clusters="layer"``: 4, i.e. unused).

        Returns None for a ``one_sw`` / ``npas`` run that does not fit (recorded in
        :attr:`skipped`), and raises for any other.

        Raises
        ------
        InvalidParameterError
            A learned / sensitivity cell below its smallest possible ensemble.
        """
        key = (spec.kind, spec.budget, spec.variant == "npas", spec.clusters, spec.sharing)
        if key in self.bins:
            return self.bins[key]
        archs = [self.arch(c) for c in self.configs(spec)]
        ref = self.reference(spec)
        budget = math.floor(self.p.budgets[spec.budget] * ref)
        tries = (4,) if spec.clusters == "layer" else (4, 3, 2, 1)
        least = {n: minimum_budget(archs, spec.clusters, spec.sharing, n) for n in tries}
        fits = [n for n in tries if least[n] <= budget]
        self.bins[key] = fits[0] if fits else None
        if fits:
            return fits[0]
        low = least[tries[-1]]
        reason = (
            f"budget {spec.budget} = {budget} parameters is below the smallest possible "
            f"ensemble of {low} parameters ({low / ref:.3f} of the reference {ref})"
        )
        if spec.variant not in ("one_sw", "npas"):
            raise InvalidParameterError(
                f"superweights protocol: kind {spec.kind!r} ({spec.variant}): {reason}; raise "
                f"budgets.{spec.budget} to at least {low / ref:.3f} or use a wider base"
            )
        self.skipped.append(
            {
                "method": "swn",
                "kind": spec.kind,
                "budget": spec.budget,
                "variant": spec.variant,
                "minimum_params": int(low),
                "reason": reason,
            }
        )
        logger.warning("superweights: skipping %s / %s: %s", spec.variant, spec.kind, reason)
        return None

    def run(self, spec: RunSpec) -> MemberRun:
        """Train one run from its seed and return its members' test logits."""
        p, dev, x = self.p, self.device, self.test.x
        seed = derive_seed(spec.seed, spec.method, spec.kind, spec.budget, spec.variant)
        if spec.method == "single":
            config = p.base if spec.variant is None else self.narrow[spec.budget][0]
            net = self.member(config, seed)
            secs = train_plain(net, self.x, self.y, p.train, seed)
            return MemberRun(
                batched_logits(lambda b: net(b)[None], x, dev),
                [net],
                count_parameters(net),
                secs,
                net,
            )
        if spec.method == "de":
            seeds = [derive_seed(seed, i) for i in range(p.n_members)]
            nets = [self.member(c, s) for c, s in zip(self._kind(spec.kind), seeds, strict=True)]
            pairs = zip(nets, seeds, strict=True)
            secs = sum(train_plain(n, self.x, self.y, p.train, s) for n, s in pairs)
            logits = batched_logits(lambda b: torch.stack([n(b) for n in nets]), x, dev)
            return MemberRun(logits, nets, sum(count_parameters(n) for n in nets), secs, nets)
        if spec.method == "be":
            be = BatchEnsemble(self.member(p.base, seed), p.n_members).to(dev)
            secs = train_be(be, self.x, self.y, p.train, seed)
            logits = batched_logits(be.eval().member_logits, x, dev)
            nets = [be.member(i) for i in range(be.m)]
            return MemberRun(logits, nets, count_parameters(be), secs, be)
        return self._run_swn(spec)

    def _run_swn(self, spec: RunSpec) -> MemberRun:
        n_bins = self.initial_bins(spec)
        if n_bins is None:
            raise InvalidParameterError(f"run {spec} does not fit its budget; see skipped")
        members = [
            self.member(c, derive_seed(spec.seed, "swn", spec.kind, i))
            for i, c in enumerate(self.configs(spec))
        ]
        ens, secs = train_swn(
            members,
            self.p.budgets[spec.budget],
            self.x,
            self.y,
            dataclasses.replace(self.p.train, tau=spec.tau, beta=spec.beta),
            spec.seed,
            clusters=spec.clusters,
            coefficient_sharing=spec.sharing,
            n_bins=n_bins,
        )
        logits = batched_logits(ens.member_logits, self.test.x, self.device)
        nets = [ens.export_member(i).eval() for i in range(ens.n_members)]
        return MemberRun(logits, nets, ens.unique_parameter_count(), secs, ens)
