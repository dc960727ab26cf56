"""Scores of the ensemble-distillation protocol (LatentBE, Nam et al. ICML 2022, Tables 1-2).

A :class:`Predictor` is anything that maps inputs to class scores (one model, a deep
ensemble, a BatchEnsemble); :func:`score_predictor` gives its :class:`MethodScores`
(ACC, NLL, ECE with 15 bins, cNLL and cECE with a temperature fitted on validation,
Brier) through :mod:`weightspace.metrics`, the project's one metric implementation.
:class:`DistillScores` collects every method over the student seeds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from weightspace.data.base import Split
from weightspace.device import module_device
from weightspace.metrics import (
    accuracy,
    brier,
    calibrated_ece,
    calibrated_nll,
    ece,
    nll,
)

__all__ = [
    "METRICS",
    "DistillScores",
    "MethodScores",
    "Predictor",
    "predict",
    "score_predictor",
    "seconds_per_example",
]

METRICS: tuple[str, ...] = ("acc", "nll", "ece", "cnll", "cece", "brier")
"""Metric names of :class:`MethodScores`, in table order."""


@dataclass(frozen=True)
class Predictor:
    """A method's prediction function and its cost.

    Attributes
    ----------
    fn : callable
        ``fn(x)`` maps inputs ``(B, *in)`` (on the predictor's device) to class scores
        ``(B, C)`` -- logits or log-probabilities (an ensemble's mean probability, logged).
    modules : tuple of nn.Module
        The modules ``fn`` runs (put in eval mode while predicting).
    n_params : int
        Parameters stored for inference.
    forward_passes : int
        Network evaluations per prediction (a deep ensemble of M: M; a BatchEnsemble of M:
        M member passes, computed as one batched pass; a single network: 1).
    """

    fn: Callable[[Tensor], Tensor]
    modules: tuple[nn.Module, ...]
    n_params: int
    forward_passes: int


@dataclass(frozen=True)
class MethodScores:
    """One method, one seed: the LatentBE table's metrics plus Brier (test split)."""

    acc: float
    nll: float
    ece: float
    cnll: float
    cece: float
    brier: float
    val_nll: float

    def as_dict(self) -> dict[str, float]:
        """``{metric: value}`` for :data:`METRICS` (validation NLL left out)."""
        return {k: getattr(self, k) for k in METRICS}


@torch.no_grad()
def predict(predictor: Predictor, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Scores ``(N, C)`` (float32, CPU) of ``predictor`` on ``x``, in eval mode, batched.

    Modes of the predictor's modules are restored afterwards.
    """
    modes = [m.training for m in predictor.modules]
    device = module_device(predictor.modules[0])
    try:
        for m in predictor.modules:
            m.eval()
        chunks = [x[s : s + batch_size].to(device) for s in range(0, x.shape[0], batch_size)]
        return torch.cat([predictor.fn(c).float().cpu() for c in chunks])
    finally:
        for m, mode in zip(predictor.modules, modes, strict=True):
            m.train(mode)


def score_predictor(
    predictor: Predictor, val: Split, test: Split, n_bins: int = 15
) -> MethodScores:
    """:class:`MethodScores` of ``predictor``; the calibration temperature is fitted on ``val``."""
    sv, st = predict(predictor, val.x), predict(predictor, test.x)
    return scores_from_outputs(sv, st, val.y, test.y, n_bins)


def scores_from_outputs(
    val_scores: Tensor, test_scores: Tensor, val_y: Tensor, test_y: Tensor, n_bins: int = 15
) -> MethodScores:
    """:class:`MethodScores` from class scores ``(N_val, C)`` and ``(N_test, C)``."""
    probs = test_scores.softmax(-1)
    return MethodScores(
        acc=float(accuracy(test_scores, test_y)),
        nll=float(nll(test_scores, test_y)),
        ece=float(ece(probs, test_y, n_bins=n_bins)),
        cnll=float(calibrated_nll(test_scores, test_y, val_scores, val_y)),
        cece=float(calibrated_ece(test_scores, test_y, val_scores, val_y, n_bins=n_bins)),
        brier=float(brier(probs, test_y)),
        val_nll=float(nll(val_scores, val_y)),
    )


def mean_scores(rows: Sequence[MethodScores]) -> MethodScores:
    """Field-wise mean of several :class:`MethodScores` (e.g. the average member)."""
    fields = [f.name for f in dataclasses.fields(MethodScores)]
    return MethodScores(**{f: sum(getattr(r, f) for r in rows) / len(rows) for f in fields})


@torch.no_grad()
def seconds_per_example(predictor: Predictor, x: Tensor, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of one batched prediction of ``x``, per example.

    One warm-up call first; CUDA is synchronised around each timed call.
    """
    device = module_device(predictor.modules[0])
    xb = x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for m in predictor.modules:
        m.eval()
    predictor.fn(xb)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        predictor.fn(xb)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best / x.shape[0]


@dataclass
class DistillScores:
    """Everything the distillation report shows.

    Attributes
    ----------
    m : int
        Ensemble size (teachers, BatchEnsemble members).
    seeds : tuple of int
        Student seeds.
    teachers : dict
        ``"de"``: the deep ensemble's :class:`MethodScores`; ``"single"``: the mean over
        members of each member's scores; ``"single_members"``: list, one per member.
    students : dict of str to list of MethodScores
        Per method (``kd``, ``be``, ``latentbe``, ``be_ods``, ``latentbe_ods``, ...), one
        entry per seed.
    agreement : dict of str to list of float
        ``latentbe[_<kind>]``: share of test predictions where the merged network agrees
        with its BatchEnsemble, per seed.
    merge_forms : dict of str to list of dict
        Per merge form (``product_of_means``, ``mean_of_products``, and
        ``product_of_means_bn_recomputed`` for models with BatchNorm): per seed
        ``{"acc", "nll", "agreement"}`` of the plain (unperturbed) BatchEnsemble merged
        that way.
    diversity : dict of str to float
        ``de_disagreement``, ``de_normalized_diversity`` and the same for ``be`` (mean
        over member pairs, BE values averaged over seeds).
    cost : dict of str to dict
        Per method: ``n_params``, ``forward_passes``, ``seconds_per_example``.
    train_seconds : dict of str to list of float
        Training wall time per method and seed.
    reliability : dict of str to tuple
        ``name -> (probs (N, C), labels (N,))`` on the test split for the diagrams (first
        seed): ``de``, ``kd`` and the best LatentBE variant by validation NLL.
    """

    m: int
    seeds: tuple[int, ...]
    teachers: dict[str, object] = field(default_factory=dict)
    students: dict[str, list[MethodScores]] = field(default_factory=dict)
    agreement: dict[str, list[float]] = field(default_factory=dict)
    merge_forms: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    diversity: dict[str, float] = field(default_factory=dict)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    train_seconds: dict[str, list[float]] = field(default_factory=dict)
    reliability: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
