"""SuperWeights protocol: the supplement's experiments on one dataset, every method alike.

Teterwak et al., "Learning to Compose SuperWeights for Neural Parameter Allocation
Search" (``papers/superweights_parameter_allocation_search_supplementary.txt``). For every
seed, on the same data with the same epochs, optimiser, learning rate and batch size
(:mod:`~weightspace.evaluation.superweights_members`):

- **single**: one base network trained alone;
- **de** (Deep Ensembles, Table 5 (b)): the members of each kind trained independently;
  its prediction is the mean of the member probabilities;
- **be** (BatchEnsemble, Table 5 (a), Sec. 1.1.1): the base with ``M = n_members``
  rank-one members, trained on the labels with the mean member cross-entropy;
- **swn / learned** (SWN-HO, SWN-HE; Sec. 1.1, Tables 3 and 5): a SuperWeight ensemble of
  each kind at each budget, clusters refined with ``tau`` after the first epoch and
  coefficients un-shared with ``beta`` (Sec. 2, Algorithm 1);
- **swn / one_sw** (Table 3, "SWN-Single Superweight"): kind ``ho``, one SuperWeight
  per layer, no refinement, no un-sharing;
- **sensitivity** (Sec. 3.5, Figure 4), for ``sensitivity_seeds`` only: kind
  ``sensitivity_kind`` at ``sensitivity_budget`` for each ``tau`` (``beta`` fixed) and
  each ``beta`` (``tau`` fixed), "not_shared" (every layer its own coefficients) and
  "shared" (one coefficient set per slot, never un-shared). The run of the grid value
  equal to the training setting is the ``learned`` run itself; its row is copied;
- **NPAS** (Sec. 3.6; Plummer et al.): the base alone as a one-member SuperWeight network
  under each of ``npas_budgets`` (a fraction of the base's own parameters; variant
  ``npas``, method ``swn``) against the widest uniformly narrowed base with at most as
  many parameters (variant ``narrow``, method ``single``).

Budgets are fractions of the deep ensemble of the same kind (``de_params``), counted as
unique trainable parameters. Initial clusters are the supplement's four depth bins where
the budget holds them; where it does not (a bank must hold the largest weight it serves),
the largest number of bins ``<= 4`` that fits is used (1 bin = one cluster per kernel
size, NPAS's single bank) and reported in ``initial_bins``. ``one_sw`` and ``npas`` cells
whose smallest possible ensemble exceeds the budget are not run; they are listed in
``skipped`` with the minimum. No validation split is used: every method keeps its last
epoch (the SuperWeight trainer has no model selection; the baselines do the same).

Scores are on the test split: accuracy, NLL and ECE (15 bins) of the mean member
probability (:mod:`weightspace.metrics`), Fort et al.'s normalized diversity averaged
over ordered member pairs (Table 2), the mean member accuracy, unique parameters, FLOPs
per sample (:func:`~weightspace.ensembles.superweights.member_flops`; a BatchEnsemble
counts ``M`` base passes, its elementwise fast-weight products left out). For the first
seed: anytime inference (Figure 1) over every member subset of each DE and each SWN at
``anytime_budget`` (BatchEnsemble: its ``M`` prefixes ``{0}, {0, 1}, ...``; it has only
``M`` speeds, Sec. 1.1.1), with measured seconds (best of three passes over the test
split of each member's plain network, summed over the subset); linear interpolation
between members 0 and 1 (Figure 3) of the ``ho`` DE and of each ``ho`` SWN, BatchNorm in
train mode at every point as in Sec. 3.4 (batch statistics of the test split in batches
of 1024); and the learned cluster membership of each heterogeneous SWN at
``anytime_budget`` (Figure 5).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.config import to_mapping
from weightspace.data.base import SplitDataset
from weightspace.device import resolve_device
from weightspace.ensembles.superweights import (
    SuperWeightEnsemble,
    SuperWeightTrainConfig,
    anytime_scores,
    check_threshold,
    interpolate,
    member_flops,
)
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.run_journal import RunJournal, fingerprint
from weightspace.evaluation.superweights_members import (
    KINDS,
    MemberRun,
    Runner,
    RunSpec,
    build_member,
    kind_configs,
)
from weightspace.metrics import (
    accuracy,
    ece,
    ensemble_log_probs,
    ensemble_probs,
    nll,
    normalized_diversity,
)

__all__ = ["KINDS", "SuperWeightsProtocol", "member_configs", "run_superweights"]

logger = logging.getLogger(__name__)

_BASE = {"stem_channels": 8, "stages": [[8, 2], [16, 2], [32, 2]], "norm": "batch"}
_TIMING_REPEATS = 3
_EXTRAS = ("anytime", "anytime_seconds", "interpolation", "clusters")


def _train_default() -> SuperWeightTrainConfig:
    return SuperWeightTrainConfig(
        epochs=10, batch_size=128, lr=3e-3, optimizer="adam", tau=0.1, beta=0.5, unshare_epoch=10
    )


def _bad(key: str, message: str) -> InvalidParameterError:
    return InvalidParameterError(f"superweights protocol: {key}: {message}")


@dataclass(frozen=True)
class SuperWeightsProtocol:
    """The SuperWeights experiment (see the module docstring).

    Parameters
    ----------
    base : dict
        Registry ``resnet`` config of the base (widest, deepest) member.
    n_members : int
        Members per ensemble (4 in the supplement), ``>= 2``.
    kinds : tuple of str
        Ensemble kinds from :data:`KINDS` (members: :func:`member_configs`).
    budgets : dict str -> float
        Named budgets, fractions in ``(0, 1]`` of the deep ensemble of the same kind.
    seeds : tuple of int
        Distinct seeds ``>= 0``; every method is run once per seed.
    train : SuperWeightTrainConfig
        Epochs, batch size, optimiser (``adam`` or ``sgd``), learning rate, weight decay
        of every method; ``tau``, ``beta``, ``refine_epoch``, ``unshare_epoch`` of the
        learned SuperWeights (``unshare_epoch`` is clipped to ``epochs``).
    sensitivity_kind, sensitivity_budget, sensitivity_seeds
        Where the ``tau`` / ``beta`` / sharing sensitivity runs (seeds: a subset of
        ``seeds``, may be empty to skip it).
    tau_grid, beta_grid : tuple of float
        Thresholds in ``[-1, 1]`` of Figure 4.
    npas_budgets : tuple of str
        Budget names of the NPAS comparison (fractions of the base's parameters).
    interpolation_points : int
        Points ``t`` in ``[0, 1]`` of Figure 3, ``>= 2``.
    anytime_budget : str
        Budget whose SWNs give the anytime curves and cluster membership.
    n_bins : int
        ECE bins.
    device : str
        ``"cpu"``, ``"cuda"``, ``"auto"``...
    """

    base: dict = field(default_factory=lambda: copy.deepcopy(_BASE))
    n_members: int = 4
    kinds: tuple[str, ...] = KINDS
    budgets: dict = field(default_factory=lambda: {"q25": 0.25, "q50": 0.5, "q80": 0.8})
    seeds: tuple[int, ...] = (0, 1, 2)
    train: SuperWeightTrainConfig = field(default_factory=_train_default)
    sensitivity_kind: str = "he_width"
    sensitivity_budget: str = "q50"
    sensitivity_seeds: tuple[int, ...] = (0,)
    tau_grid: tuple[float, ...] = (-0.5, 0.1, 0.5, 0.9)
    beta_grid: tuple[float, ...] = (0.1, 0.5, 0.9)
    npas_budgets: tuple[str, ...] = ("q50", "q80")
    interpolation_points: int = 11
    anytime_budget: str = "q50"
    n_bins: int = 15
    device: str = "cpu"

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name in ("kinds", "seeds", "sensitivity_seeds", "tau_grid", "beta_grid"):
            put(name, tuple(getattr(self, name)))
        put("npas_budgets", tuple(self.npas_budgets))
        self._check_counts()
        self._check_kinds_and_base()
        self._check_budgets()
        self._check_seeds()
        if not isinstance(self.train, SuperWeightTrainConfig):
            raise _bad("train", f"must be a SuperWeightTrainConfig, got {type(self.train)}")
        if self.train.optimizer not in ("adam", "sgd"):
            raise _bad("train.optimizer", f"must be 'adam' or 'sgd', got {self.train.optimizer!r}")
        if self.train.tau is None or self.train.beta is None:
            raise _bad(
                "train.tau / train.beta",
                "the learned SuperWeights refine clusters (tau) and un-share coefficients "
                "(beta); set both (the supplement: tau 0.1, beta 0.5-0.95)",
            )
        for name in ("tau_grid", "beta_grid"):
            for v in getattr(self, name):
                check_threshold(v, f"{name} value")
        resolve_device(self.device)

    def _check_counts(self) -> None:
        for name, low in (("n_members", 2), ("interpolation_points", 2), ("n_bins", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise _bad(name, f"must be an integer >= {low}, got {v!r}")

    def _check_kinds_and_base(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or unknown or len(set(self.kinds)) != len(self.kinds):
            raise _bad(
                "kinds",
                f"must be distinct names from {list(KINDS)}, got {list(self.kinds)}",
            )
        if self.sensitivity_kind not in self.kinds:
            raise _bad(
                "sensitivity_kind",
                f"{self.sensitivity_kind!r} is not among kinds {list(self.kinds)}; add it",
            )
        base = self.base
        if not isinstance(base, dict) or not {"stem_channels", "stages"} <= set(base):
            raise _bad(
                "base",
                "must be a resnet config with stem_channels and stages, e.g. "
                f"{_BASE}, got {base!r}",
            )
        object.__setattr__(self, "base", copy.deepcopy(base))
        configs = [("base", base)] + [(k, c) for k in KINDS for c in member_configs(self, k)]
        for kind, cfg in configs:
            try:
                build_member(cfg, (1, 16), 2, 0)
            except (InvalidParameterError, TypeError, ValueError, KeyError) as exc:
                raise _bad("base", f"config {cfg} ({kind}): {exc}") from exc

    def _check_budgets(self) -> None:
        budgets = self.budgets
        if not isinstance(budgets, dict) or not budgets:
            raise _bad("budgets", f"must be a non-empty mapping name -> fraction, got {budgets!r}")
        clean = {}
        for name, frac in budgets.items():
            ok = isinstance(frac, int | float) and not isinstance(frac, bool)
            if not isinstance(name, str) or not ok or not 0 < float(frac) <= 1:
                raise _bad(
                    "budgets",
                    f"{name!r}: {frac!r} must be a fraction in (0, 1] of the deep "
                    "ensemble's parameters, e.g. q25: 0.25",
                )
            clean[name] = float(frac)
        object.__setattr__(self, "budgets", clean)
        for key in ("sensitivity_budget", "anytime_budget"):
            if getattr(self, key) not in clean:
                raise _bad(key, f"{getattr(self, key)!r} is not among budgets {list(clean)}")
        missing = [b for b in self.npas_budgets if b not in clean]
        if missing or len(set(self.npas_budgets)) != len(self.npas_budgets):
            raise _bad(
                "npas_budgets",
                f"must be distinct names from budgets {list(clean)}, got {list(self.npas_budgets)}",
            )

    def _check_seeds(self) -> None:
        seeds = self.seeds
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if not seeds or bad or len(set(seeds)) != len(seeds):
            raise _bad("seeds", f"must be >= 1 distinct integers >= 0, got {list(seeds)}")
        extra = [s for s in self.sensitivity_seeds if s not in seeds]
        if extra or len(set(self.sensitivity_seeds)) != len(self.sensitivity_seeds):
            raise _bad(
                "sensitivity_seeds",
                f"must be distinct seeds from {list(seeds)} (or empty), got "
                f"{list(self.sensitivity_seeds)}",
            )


def member_configs(protocol: SuperWeightsProtocol, kind: str) -> list[dict]:
    """Resnet configs of the members of ``kind`` (widths and depths: see
    :mod:`~weightspace.evaluation.superweights_members`)."""
    return kind_configs(protocol.base, protocol.n_members, kind)


# --------------------------------------------------------------------------------- runs
def _runs(p: SuperWeightsProtocol) -> list[RunSpec]:
    """Every run in order; ``learned`` runs come before the sensitivity runs reusing them."""
    t, runs = p.train, []
    for s in p.seeds:
        runs += [RunSpec(s, "single")]
        runs += [RunSpec(s, "de", k) for k in p.kinds]
        runs += [RunSpec(s, "be")]
        runs += [
            RunSpec(s, "swn", k, b, "learned", tau=t.tau, beta=t.beta)
            for k in p.kinds
            for b in p.budgets
        ]
        if "ho" in p.kinds:
            runs += [RunSpec(s, "swn", "ho", b, "one_sw", clusters="layer") for b in p.budgets]
        for b in p.npas_budgets:
            runs += [RunSpec(s, "swn", None, b, "npas", tau=t.tau, beta=t.beta)]
            runs += [RunSpec(s, "single", None, b, "narrow")]
        if s in p.sensitivity_seeds:
            k, b = p.sensitivity_kind, p.sensitivity_budget
            runs += [RunSpec(s, "swn", k, b, f"tau={v:g}", tau=v, beta=t.beta) for v in p.tau_grid]
            runs += [RunSpec(s, "swn", k, b, f"beta={v:g}", tau=t.tau, beta=v) for v in p.beta_grid]
            runs += [
                RunSpec(s, "swn", k, b, "not_shared", sharing="none", tau=t.tau, beta=t.beta),
                RunSpec(s, "swn", k, b, "shared", sharing="all", tau=t.tau),
            ]
    return runs


# ------------------------------------------------------------------------------ scoring
def _scores(logits: Tensor, labels: Tensor, n_bins: int) -> dict[str, float]:
    """Accuracy, NLL, ECE of the mean member probability (as ``anytime_scores``)."""
    probs = ensemble_probs(logits)
    return {
        "acc": float(accuracy(probs, labels)),
        "nll": float(nll(ensemble_log_probs(logits), labels)),
        "ece": float(ece(probs, labels, n_bins)),
    }


def _diversity(logits: Tensor, labels: Tensor) -> float | None:
    """Fort et al.'s normalized diversity averaged over ordered member pairs."""
    n = logits.shape[0]
    vals = [
        float(normalized_diversity(logits[i], logits[j], labels, zero_error="nan"))
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _row(job: RunSpec, run: MemberRun, labels: Tensor, p: SuperWeightsProtocol, shape) -> dict:
    n = run.logits.shape[0]
    member_acc = [float(accuracy(run.logits[i], labels)) for i in range(n)]
    return {
        "method": job.method,
        "kind": job.kind,
        "budget": job.budget,
        "variant": job.variant,
        "seed": int(job.seed),
        **_scores(run.logits, labels, p.n_bins),
        "params": int(run.params),
        "diversity": _diversity(run.logits, labels) if n > 1 else None,
        "member_acc_mean": sum(member_acc) / n if n > 1 else None,
        "flops": float(sum(member_flops(net, shape) for net in run.nets)),
        "train_seconds": float(run.seconds),
    }


@torch.no_grad()
def _member_seconds(nets: Sequence[nn.Module], x: Tensor, device: torch.device) -> list[float]:
    """Best-of-three wall time of each plain member over ``x`` (eval mode)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for net in nets:
        net.eval()
        xb = x.to(device)
        net(xb[:2])
        best = math.inf
        for _ in range(_TIMING_REPEATS):
            sync()
            start = time.perf_counter()
            for s in range(0, len(xb), 1024):
                net(xb[s : s + 1024])
            sync()
            best = min(best, time.perf_counter() - start)
        out.append(best)
    return out


def _anytime(run: MemberRun, labels: Tensor, p: SuperWeightsProtocol, shape, prefixes: bool):
    """Anytime entries: every member subset by FLOPs, or the ``M`` prefixes (BatchEnsemble)."""
    flops = [member_flops(net, shape) for net in run.nets]
    n = run.logits.shape[0]
    if prefixes:
        subsets = [tuple(range(k)) for k in range(1, n + 1)]
        rows = [
            {"members": list(s), **_scores(run.logits[list(s)], labels, p.n_bins)} for s in subsets
        ]
        for r, s in zip(rows, subsets, strict=True):
            r["flops"] = float(sum(flops[i] for i in s))
    else:
        rows = [
            {
                "members": list(s.members),
                "flops": float(s.flops),
                "acc": s.acc,
                "nll": s.nll,
                "ece": s.ece,
            }
            for s in anytime_scores(run.logits, labels, flops, p.n_bins)
        ]
    return rows


@torch.no_grad()
def _bn_train_accuracy(net: nn.Module, state: dict, x: Tensor, y: Tensor, device) -> float:
    """Accuracy of ``net`` loaded with ``state``, BatchNorm in train mode (Sec. 3.4)."""
    scratch = copy.deepcopy(net)
    scratch.load_state_dict(state)
    scratch.train()
    logits = torch.cat([scratch(x[s : s + 1024].to(device)).cpu() for s in range(0, len(x), 1024)])
    return float(accuracy(logits, y))


def _interpolation(run: MemberRun, p: SuperWeightsProtocol, x: Tensor, y: Tensor, device) -> list:
    """``[[t, acc], ...]`` between members 0 and 1 (plain weights or composed SuperWeights)."""
    ts = [i / (p.interpolation_points - 1) for i in range(p.interpolation_points)]
    if isinstance(run.model, SuperWeightEnsemble):
        states = [interpolate(run.model, 0, 1, t) for t in ts]
    else:
        a, b = run.nets[0].state_dict(), run.nets[1].state_dict()
        states = [
            {k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k] for k in a}
            for t in ts
        ]
    return [
        [t, _bn_train_accuracy(run.nets[0], s, x, y, device)]
        for t, s in zip(ts, states, strict=True)
    ]


def _clusters(ensemble: SuperWeightEnsemble) -> dict:
    """Cluster of every shared layer of every member after refinement (Figure 5)."""
    rows = ensemble.cluster_membership()
    members: list[list[str]] = [[] for _ in range(ensemble.n_members)]
    for r in rows:
        members[r["member"]].append(r["path"])
    return {
        "members": members,
        "cluster": {f"{r['member']}/{r['path']}": int(r["cluster"]) for r in rows},
    }


def _label(job: RunSpec) -> str | None:
    """Name of the job's anytime / interpolation / cluster entries (first seed only)."""
    if job.method == "de":
        return f"de_{job.kind}"
    if job.method == "be":
        return "be"
    if job.method == "swn" and job.variant == "learned":
        return f"swn_{job.kind}_{job.budget}"
    return None


def _extras(job: RunSpec, run: MemberRun, ctx: Runner) -> dict:
    """Anytime curves, interpolation and clusters of the first seed's runs, as a fragment
    ``{"anytime": {label: ...}, "anytime_seconds": ..., "interpolation": ..., "clusters":
    ...}`` of the result (empty dicts where the job contributes nothing)."""
    p, label = ctx.p, _label(job)
    out: dict = {k: {} for k in _EXTRAS}
    if label is None or job.seed != p.seeds[0]:
        return out
    y, x = ctx.test.y, ctx.test.x
    if job.method != "swn" or job.budget == p.anytime_budget:
        entries = _anytime(run, y, p, ctx.shape, prefixes=job.method == "be")
        secs = _member_seconds(run.nets, x, ctx.device)
        out["anytime"][label] = entries
        out["anytime_seconds"][label] = [sum(secs[i] for i in e["members"]) for e in entries]
    if job.kind == "ho" and job.method in ("de", "swn"):
        out["interpolation"][label] = _interpolation(run, p, x, y, ctx.device)
    if job.method == "swn" and job.kind != "ho" and job.budget == p.anytime_budget:
        out["clusters"][label] = _clusters(run.model)
    return out


def _journal_key(job: RunSpec) -> str:
    """The name of a job's record: every field of its spec."""
    return "_".join(f"{f.name}={getattr(job, f.name)}" for f in dataclasses.fields(job))


def run_superweights(
    data: SplitDataset,
    protocol: SuperWeightsProtocol,
    progress: bool = False,
    journal_dir: str | Path | None = None,
) -> dict:
    """Run every method of the protocol on ``data`` (train on ``train``, score on ``test``).

    Parameters
    ----------
    data : SplitDataset
    protocol : SuperWeightsProtocol
    progress : bool
        One progress bar over the runs.
    journal_dir : str or Path, optional
        Keep each finished run in a :class:`~weightspace.evaluation.run_journal.RunJournal`
        under this folder, so a killed run resumes where it was (the journal is keyed by
        a fingerprint of the protocol and the data: other settings never reuse it).

    Returns
    -------
    dict
        JSON-able: ``rows`` (one per run: method, kind, budget, variant, seed, acc, nll,
        ece, params, diversity, member_acc_mean, flops, train_seconds), ``de_params``,
        ``anytime``, ``anytime_seconds``, ``interpolation``, ``clusters`` (see the
        module docstring), ``initial_bins`` (depth bins each SWN cell started from) and
        ``skipped`` (``one_sw`` / ``npas`` cells below their smallest possible size).

    Raises
    ------
    InvalidParameterError
        Before any training, if a learned SWN cell's budget is below the smallest
        possible ensemble (the message states the minimum fraction).
    """
    if not isinstance(protocol, SuperWeightsProtocol):
        raise InvalidParameterError(
            f"protocol must be a SuperWeightsProtocol, got {type(protocol).__name__}"
        )
    if not isinstance(data, SplitDataset):
        raise InvalidParameterError(f"data must be a SplitDataset, got {type(data).__name__}")
    ctx = Runner(data, protocol)
    runnable = [r for r in _runs(protocol) if r.method != "swn" or ctx.initial_bins(r) is not None]
    journal = RunJournal(
        journal_dir,
        fingerprint(
            {"protocol": to_mapping(protocol), "torch": torch.__version__},
            data.train.x, data.train.y, data.test.x, data.test.y,
        ),
    )  # fmt: skip
    out: dict = {"rows": [], "de_params": dict(ctx.de_params), **{k: {} for k in _EXTRAS}}
    done: dict[tuple, dict] = {}
    resumed = 0
    for job in tqdm(runnable, desc="superweights", disable=not progress):
        key = (
            job.seed,
            job.method,
            job.kind,
            job.budget,
            job.clusters,
            job.sharing,
            job.tau,
            job.beta,
        )
        if job.method == "swn" and key in done:
            out["rows"].append({**done[key], "variant": job.variant})
            continue
        record = journal.get(_journal_key(job))
        if record is None:
            run = ctx.run(job)
            record = {"row": _row(job, run, ctx.test.y, protocol, ctx.shape)}
            record.update(_extras(job, run, ctx))
            journal.put(_journal_key(job), record)
        else:
            resumed += 1
        done[key] = record["row"]
        out["rows"].append(record["row"])
        for name in _EXTRAS:
            out[name].update(record[name])
    if resumed:
        logger.info("superweights: %d of %d runs read back from %s", resumed, len(runnable),
                    journal.folder)  # fmt: skip
    out["initial_bins"] = {
        f"swn_{'npas' if npas else kind}_{budget}": n
        for (kind, budget, npas, clusters, sharing), n in ctx.bins.items()
        if clusters == "depth" and sharing == "width" and n is not None
    }
    out["skipped"] = ctx.skipped
    return out
