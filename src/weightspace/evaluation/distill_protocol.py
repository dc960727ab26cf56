"""Ensemble-distillation protocol: LatentBE's Tables 1-2 on one dataset and one teacher DE.

Nam et al., "Improving Ensemble Distillation With Weight Averaging and Diversifying
Perturbation" (ICML 2022; ``papers/latentbe_ensemble_distillation_weight_averaging.txt``):
a deep ensemble (DE) of ``M`` teachers of one architecture is distilled, for every student
seed, into

- **KD** (Hinton et al., eq. 2): one student of the teachers' architecture trained on the
  mean tempered teacher prediction (:func:`weightspace.ensembles.kd.distill`, the KD the
  fusion pipeline also uses);
- **BE** (eq. 3-4): a BatchEnsemble student of ``M`` members, distilled one-to-one
  (:func:`weightspace.ensembles.kd.distill_one_to_one`);
- **LatentBE** (eq. 6): that BatchEnsemble merged into one network
  (:func:`weightspace.ensembles.latentbe.merge`), one forward pass;
- **LatentBE + ODS / ConfODS / TDiv−SDiv** (eq. 7-8): the same with an input
  perturbation during distillation.

Every student gets the same :class:`~weightspace.ensembles.kd.KDConfig` (epochs,
optimiser, temperature, ``alpha``) and the same seeded initialisation of the teachers'
architecture (the zoo's initialiser with seed ``student_seed_offset + seed``, so a student
never starts from a teacher's initial weights). Scores (:mod:`~.distill_scores`) put the
DE and its average member beside the students, on the same splits; the temperature of
cNLL/cECE is fitted on the validation split.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from weightspace.data.base import Split, SplitDataset
from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.kd import KDConfig, distill
from weightspace.ensembles.kd.one_to_one import PerturbConfig, distill_one_to_one
from weightspace.ensembles.latentbe import merge
from weightspace.errors import ArchitectureMismatchError, InvalidParameterError
from weightspace.evaluation.distill_scores import (
    DistillScores,
    Predictor,
    mean_scores,
    predict,
    score_predictor,
    seconds_per_example,
)
from weightspace.fusion.otfusion import recompute_batchnorm_stats
from weightspace.metrics import ensemble_log_probs, normalized_diversity, pairwise_disagreement
from weightspace.zoo.init import reinitialized

__all__ = [
    "KINDS",
    "DistillProtocol",
    "Trained",
    "check_teachers",
    "evaluate_distillation",
    "train_be",
    "train_kd",
]

KINDS: tuple[str, ...] = ("ods", "confods", "tdiv_sdiv")
"""Perturbation variants of LatentBE, in table order."""

MERGE_FORMS: tuple[str, ...] = ("product_of_means", "mean_of_products")


@dataclass(frozen=True)
class DistillProtocol:
    """The distillation experiment.

    Parameters
    ----------
    seeds : tuple of int
        Student seeds (``>= 1`` distinct); scores are reported as mean ± std over them.
    kd : KDConfig
        Optimisation and loss of every student (the authors: temperature 4, alpha 1).
    step : float
        Perturbation step, per-coordinate RMS in units of the inputs' range
        (:class:`~weightspace.ensembles.kd.one_to_one.PerturbConfig`).
    perturbations : tuple of str
        Which of :data:`KINDS` to run.
    merge : str
        LatentBE merge form of the reported ``latentbe*`` rows; both forms are always
        compared on the plain BatchEnsemble.
    student_seed_offset : int
        Student ``s`` is initialised with zoo seed ``student_seed_offset + s``.
    n_bins : int
        ECE bins (15 as in the paper).
    timing_repeats : int
        Best-of repeats of the inference timing.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    kd: KDConfig = field(
        default_factory=lambda: KDConfig(
            epochs=30, lr=0.003, batch_size=64, optimizer="adam", temperature=4.0, alpha=1.0
        )
    )
    step: float = 1.0 / 255.0
    perturbations: tuple[str, ...] = KINDS
    merge: str = "product_of_means"
    student_seed_offset: int = 1000
    n_bins: int = 15
    timing_repeats: int = 5

    def __post_init__(self) -> None:
        seeds = list(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or any(int(s) < 0 for s in seeds):
            raise InvalidParameterError(
                f"seeds must be >= 1 distinct integers >= 0, got {seeds}; e.g. seeds: [0, 1, 2]"
            )
        bad = [k for k in self.perturbations if k not in KINDS]
        if bad or len(set(self.perturbations)) != len(self.perturbations):
            raise InvalidParameterError(
                f"perturbations must be distinct names from {list(KINDS)}, got "
                f"{list(self.perturbations)}"
            )
        if self.merge not in MERGE_FORMS:
            raise InvalidParameterError(
                f"merge must be one of {list(MERGE_FORMS)}, got {self.merge!r}"
            )
        PerturbConfig(step=self.step)  # validates the step
        for name in ("n_bins", "timing_repeats"):
            if int(getattr(self, name)) < 1:
                raise InvalidParameterError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Trained:
    """One trained student: method (``kd``, ``be``, ``be_ods``, ...), seed, model, time."""

    method: str
    seed: int
    model: nn.Module
    seconds: float
    best_epoch: int


# ------------------------------------------------------------------------------ teachers
def check_teachers(teachers: Sequence[nn.Module]) -> list[nn.Module]:
    """The teachers as a list, checked: ``M >= 2`` modules of one architecture.

    Raises
    ------
    InvalidParameterError
        Fewer than two teachers.
    ArchitectureMismatchError
        Teachers of different classes, parameter names or shapes (output sizes included).
    """
    models = list(teachers)
    if len(models) < 2:
        raise InvalidParameterError(
            f"a deep ensemble needs M >= 2 teachers, got {len(models)}; train more seeds "
            "in the teacher zoo (zoo_distill.grid.seeds)"
        )
    ref = {k: tuple(v.shape) for k, v in models[0].state_dict().items()}
    for i, t in enumerate(models[1:], start=1):
        shapes = {k: tuple(v.shape) for k, v in t.state_dict().items()}
        if type(t) is not type(models[0]) or shapes != ref:
            diff = sorted(set(ref.items()) ^ set(shapes.items()))[:3]
            raise ArchitectureMismatchError(
                f"teacher {i} ({type(t).__name__}) differs from teacher 0 "
                f"({type(models[0]).__name__}) in architecture or output size (first "
                f"differences: {diff}); a deep ensemble needs one architecture and one "
                "class count -- select the teachers from one zoo entry"
            )
    return models


def _n_params(modules: Sequence[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _de_predictor(teachers: Sequence[nn.Module]) -> Predictor:
    ts = tuple(teachers)
    return Predictor(
        fn=lambda x: ensemble_log_probs(torch.stack([t(x) for t in ts])),
        modules=ts,
        n_params=_n_params(ts),
        forward_passes=len(ts),
    )


def _plain_predictor(model: nn.Module) -> Predictor:
    return Predictor(fn=model, modules=(model,), n_params=_n_params([model]), forward_passes=1)


def _be_predictor(be: BatchEnsemble) -> Predictor:
    return Predictor(
        fn=lambda x: ensemble_log_probs(be.member_logits(x)),
        modules=(be,),
        n_params=_n_params([be]),
        forward_passes=be.m,
    )


# ------------------------------------------------------------------------------ training
def _student(teachers: Sequence[nn.Module], protocol: DistillProtocol, seed: int) -> nn.Module:
    """A fresh student of the teachers' architecture (seed ``offset + seed``), train mode."""
    return reinitialized(teachers[0], protocol.student_seed_offset + seed).train()


def train_kd(
    teachers: Sequence[nn.Module], data: SplitDataset, protocol: DistillProtocol, seed: int
) -> Trained:
    """Plain KD of the DE into one student of the teachers' architecture."""
    models = check_teachers(teachers)
    config = dataclasses.replace(protocol.kd, seed=seed)
    res = distill(_student(models, protocol, seed), models, data.train, config, data.val)
    return Trained("kd", seed, res.model, res.seconds, res.best_epoch)


def train_be(
    teachers: Sequence[nn.Module],
    data: SplitDataset,
    protocol: DistillProtocol,
    seed: int,
    kind: str = "none",
) -> Trained:
    """One-to-one KD of the DE into a BatchEnsemble (fast weights start at one).

    ``kind`` is ``"none"`` or one of :data:`KINDS`; the method is named ``be`` or
    ``be_<kind>``.
    """
    models = check_teachers(teachers)
    config = dataclasses.replace(protocol.kd, seed=seed)
    be = BatchEnsemble(_student(models, protocol, seed), len(models))
    perturb = PerturbConfig(kind=kind, step=protocol.step, seed=seed)
    res = distill_one_to_one(be, models, data.train, config, data.val, perturb)
    name = "be" if kind == "none" else f"be_{kind}"
    return Trained(name, seed, res.model, res.seconds, res.best_epoch)


# ------------------------------------------------------------------------------- scoring
def _agreement(a: Predictor, b: Predictor, split: Split) -> float:
    """Share of ``split`` where the two predictors' argmax agree."""
    return float((predict(a, split.x).argmax(-1) == predict(b, split.x).argmax(-1)).double().mean())


def _diversity(member_scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean pairwise disagreement and Fort et al.'s normalized diversity ``(M, N, C)``."""
    m = member_scores.shape[0]
    pairs = [(i, j) for i, j in itertools.permutations(range(m), 2)]
    dis = pairwise_disagreement(member_scores)
    norm = [
        float(normalized_diversity(member_scores[i], member_scores[j], labels)) for i, j in pairs
    ]
    return float(dis.sum() / (m * (m - 1))), sum(norm) / len(norm)


def teacher_scores(
    teachers: Sequence[nn.Module], data: SplitDataset, protocol: DistillProtocol
) -> dict[str, object]:
    """The DE, its average member, each member, and the DE's diversity."""
    models = check_teachers(teachers)
    members = [
        score_predictor(_plain_predictor(t), data.val, data.test, protocol.n_bins) for t in models
    ]
    logits = torch.stack([predict(_plain_predictor(t), data.test.x) for t in models])
    dis, norm = _diversity(logits, data.test.y)
    return {
        "de": score_predictor(_de_predictor(models), data.val, data.test, protocol.n_bins),
        "single": mean_scores(members),
        "single_members": members,
        "disagreement": dis,
        "normalized_diversity": norm,
    }


def _merge_forms(be: BatchEnsemble, data: SplitDataset) -> dict[str, dict[str, float]]:
    """Accuracy, NLL and agreement with the BE of every merge form (and BN re-estimated)."""
    ref = _be_predictor(be)
    merged = {how: merge(be, how=how) for how in MERGE_FORMS}
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in be.modules()):
        bn = recompute_batchnorm_stats(merge(be, how="product_of_means"), data.train.x).eval()
        merged["product_of_means_bn_recomputed"] = bn
    out = {}
    for how, model in merged.items():
        pred = _plain_predictor(model)
        s = score_predictor(pred, data.val, data.test)
        out[how] = {"acc": s.acc, "nll": s.nll, "agreement": _agreement(pred, ref, data.test)}
    return out


def _predictors(run: Trained, how: str) -> dict[str, Predictor]:
    """``kd`` -> the student; ``be[_<kind>]`` -> the BE and ``latentbe[_<kind>]`` (merged)."""
    if run.method == "kd":
        return {"kd": _plain_predictor(run.model)}
    latent = "latentbe" + run.method[len("be") :]
    return {run.method: _be_predictor(run.model), latent: _plain_predictor(merge(run.model, how))}


def _cost(pred: Predictor, x: torch.Tensor, repeats: int) -> dict[str, float]:
    return {
        "n_params": float(pred.n_params),
        "forward_passes": float(pred.forward_passes),
        "seconds_per_example": seconds_per_example(pred, x, repeats),
    }


def _score_runs(
    scores: DistillScores, runs: Sequence[Trained], data: SplitDataset, protocol: DistillProtocol
) -> dict[str, dict[str, Predictor]]:
    """Fill students, agreement, merge forms, BE diversity; return the first seed's predictors."""
    first: dict[str, dict[str, Predictor]] = {}
    be_div: list[tuple[float, float]] = []
    for run in runs:
        preds = _predictors(run, protocol.merge)
        first.setdefault(run.method, preds)
        for name, pred in preds.items():
            row = score_predictor(pred, data.val, data.test, protocol.n_bins)
            scores.students.setdefault(name, []).append(row)
        scores.train_seconds.setdefault(run.method, []).append(run.seconds)
        if run.method == "kd":
            continue
        latent = "latentbe" + run.method[len("be") :]
        agree = _agreement(preds[latent], preds[run.method], data.test)
        scores.agreement.setdefault(latent, []).append(agree)
        if run.method == "be":
            for how, row in _merge_forms(run.model, data).items():
                scores.merge_forms.setdefault(how, []).append(row)
            be_div.append(_diversity(predict_members(run.model, data.test.x), data.test.y))
    if be_div:
        scores.diversity["be_disagreement"] = sum(d for d, _ in be_div) / len(be_div)
        scores.diversity["be_normalized_diversity"] = sum(n for _, n in be_div) / len(be_div)
    return first


@torch.no_grad()
def predict_members(be: BatchEnsemble, x: torch.Tensor) -> torch.Tensor:
    """Member logits ``(M, N, C)`` (CPU) of a BatchEnsemble in eval mode."""
    was = be.training
    be.eval()
    dev = next(be.parameters()).device
    out = torch.cat(
        [be.member_logits(x[s : s + 1024].to(dev)).cpu() for s in range(0, len(x), 1024)], 1
    )
    be.train(was)
    return out


def _best_latent(scores: DistillScores) -> str:
    """The LatentBE variant with the lowest mean validation NLL."""
    names = [n for n in scores.students if n.startswith("latentbe")]
    return min(names, key=lambda n: sum(r.val_nll for r in scores.students[n]))


def evaluate_distillation(
    teachers: Sequence[nn.Module],
    data: SplitDataset,
    runs: Sequence[Trained],
    protocol: DistillProtocol,
) -> DistillScores:
    """Score the DE, its members and every trained student on ``data``'s test split.

    Parameters
    ----------
    teachers : sequence of nn.Module
        The DE (``M >= 2`` of one architecture).
    data : SplitDataset
        ``val`` fits the calibration temperature, ``test`` is scored.
    runs : sequence of Trained
        Students from :func:`train_kd` and :func:`train_be` (any seeds and kinds).
    protocol : DistillProtocol

    Returns
    -------
    DistillScores
    """
    models = check_teachers(teachers)
    scores = DistillScores(m=len(models), seeds=tuple(protocol.seeds))
    t = teacher_scores(models, data, protocol)
    scores.teachers = {k: t[k] for k in ("de", "single", "single_members")}
    scores.diversity = {
        "de_disagreement": t["disagreement"],
        "de_normalized_diversity": t["normalized_diversity"],
    }
    first = _score_runs(scores, runs, data, protocol)
    x = data.test.x
    preds = {"de": _de_predictor(models), "single": _plain_predictor(models[0])}
    for method in ("kd", "be"):
        preds.update(first.get(method, {}))
    scores.cost = {n: _cost(p, x, protocol.timing_repeats) for n, p in preds.items()}
    probs = {"de": predict(preds["de"], x).softmax(-1)}
    if "kd" in first:
        probs["kd"] = predict(first["kd"]["kd"], x).softmax(-1)
    if any(n.startswith("latentbe") for n in scores.students):
        best = _best_latent(scores)
        method = "be" + best[len("latentbe") :]
        probs[best] = predict(first[method][best], x).softmax(-1)
    scores.reliability = {k: (v, data.test.y) for k, v in probs.items()}
    return scores
