"""The fusion experiment protocol of CLAFusion §4 on one dataset and one model family.

Given ``S`` trained deep models ``A_i`` and ``S`` shallow models ``B_i``:

- **one shot** (Table 1, left; :func:`one_shot`): accuracy of ``A_i``, ``B_i``, their
  prediction ensemble, vanilla averaging and OTFusion of the same-depth pair
  ``(A_i, A_{i+1})``, and CLAFusion of ``(A_i, B_i)``; K = 2, 4, 6 models alternating
  deep and shallow (Table 2);
- **fine-tuning** (Table 1, right; :func:`finetune_comparison`): the same epochs from the
  fused model, from each parent, from the depth-aligned shallow model (NET2NET-like) and
  from a random initialisation of the fused architecture;
- **cost** (:func:`fusion_cost`): fusion wall time against the time the reference
  per-model trainer needs to bring the fused architecture, from a random initialisation,
  to the one-shot fused accuracy;
- **teacher–student** (Tables 4–5; :func:`teacher_student`): the deep model as teacher,
  the student initialised randomly, from the pre-trained shallow model, from its
  depth-aligned version, or from CLAFusion with the student's widths, then knowledge
  distillation.

The method comes in as its config (:class:`~weightspace.fusion.CLAFusionConfig`, whose
``ot`` also configures the same-depth OTFusion baseline); the protocol comes in as frozen
configs (:class:`FinetuneConfig`, :class:`CostConfig`, :class:`TeacherStudentConfig`).
Every stage returns a dataclass of scores (:mod:`weightspace.evaluation.fusion_scores`:
means over the ``S`` pairs plus per-pair records) that
:mod:`weightspace.reporting.fusion_report` names, tabulates and plots.
Accuracy is scored by the project's one kernel (:mod:`weightspace.zoo.evaluate`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from weightspace.data.base import SplitDataset
from weightspace.ensembles.kd import KDConfig, kd_sweep
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.fusion_scores import (
    FINETUNE_INITS,
    KD_INITS,
    CostScores,
    FinetuneScores,
    KScores,
    OneShotScores,
    PairScores,
    TeacherStudentScores,
)
from weightspace.fusion.clafusion import CLAFusionConfig, CLAFusionResult, clafusion
from weightspace.fusion.otfusion import otfusion, vanilla_average
from weightspace.weights.stacking import stack_state_dicts
from weightspace.zoo.evaluate import ensemble_accuracy, module_accuracy
from weightspace.zoo.finetune import FinetuneResult, finetune_stack
from weightspace.zoo.init import reinitialized
from weightspace.zoo.optim import OPTIMIZERS
from weightspace.zoo.reference import train_one


# ----------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class FinetuneConfig:
    """Retraining shared by every initialisation (the same epochs for all; SGD with
    momentum as in the paper's Tables 7-8)."""

    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_training("finetune", self.optimizer, self.lr, self.batch_size, self.epochs)
        _check_range("finetune", "momentum", self.momentum, 0.0, 1.0, "in [0, 1)")
        _check_range(
            "finetune", "weight_decay", self.weight_decay, 0.0, math.inf, "finite and >= 0"
        )


@dataclass(frozen=True)
class CostConfig:
    """How the fused architecture is trained from scratch for the cost comparison (the
    reference per-model trainer, the zoo's optimiser)."""

    optimizer: str = "adam"
    lr: float = 0.01
    batch_size: int = 32
    max_epochs: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        _check_training(
            "cost", self.optimizer, self.lr, self.batch_size, self.max_epochs, "max_epochs"
        )
        if not _is_int(self.seed) or self.seed < 0:
            raise InvalidParameterError(f"cost.seed must be an integer >= 0, got {self.seed!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _check_training(
    what: str,
    optimizer: str,
    lr: float,
    batch_size: int,
    epochs: int,
    epochs_name: str = "epochs",
) -> None:
    """Optimizer known, ``lr`` finite and > 0, ``batch_size`` and epochs integers >= 1."""
    if optimizer not in OPTIMIZERS:
        raise InvalidParameterError(
            f"{what} optimizer must be one of {OPTIMIZERS}, got {optimizer!r} ({what}.optimizer)"
        )
    bad = [
        (name, value)
        for name, value, ok in (
            ("lr", lr, _is_number(lr) and math.isfinite(lr) and lr > 0),
            ("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1),
            (epochs_name, epochs, _is_int(epochs) and epochs >= 1),
        )
        if not ok
    ]
    if bad:
        got = ", ".join(f"{what}.{name}={value!r}" for name, value in bad)
        raise InvalidParameterError(
            f"{what}: lr must be > 0 and finite, batch_size and {epochs_name} integers >= 1; "
            f"got {got}"
        )


def _check_range(what: str, name: str, value: object, lo: float, hi: float, text: str) -> None:
    """``lo <= value < hi`` (a finite number unless ``hi`` is inf)."""
    if not _is_number(value) or math.isnan(value) or not lo <= value < hi:
        raise InvalidParameterError(f"{what}.{name} must be {text}, got {value!r}")


@dataclass(frozen=True)
class TeacherStudentConfig:
    """Knowledge distillation into each student initialisation (§4.2, Tables 4-5).

    ``n_pairs`` teacher–student pairs; every ``(temperature, alpha)`` of the sweep is one
    KD run of ``train`` (whose own ``temperature`` and ``alpha`` are replaced).
    """

    n_pairs: int = 1
    temperatures: tuple[float, ...] = (2.0, 4.0)
    alphas: tuple[float, ...] = (0.5, 0.9)
    train: KDConfig = field(default_factory=KDConfig)

    def __post_init__(self) -> None:
        if not _is_int(self.n_pairs) or self.n_pairs < 1:
            raise InvalidParameterError(f"kd.n_pairs must be an integer >= 1, got {self.n_pairs!r}")
        if not self.temperatures or not self.alphas:
            raise InvalidParameterError("the KD sweep needs >= 1 temperature and >= 1 alpha")
        for t in self.temperatures:
            if not _is_number(t) or not math.isfinite(t) or t <= 0:
                raise InvalidParameterError(f"kd.temperatures must be finite and > 0, got {t!r}")
        for a in self.alphas:
            if not _is_number(a) or math.isnan(a) or not 0.0 <= a <= 1.0:
                raise InvalidParameterError(f"kd.alphas must lie in [0, 1], got {a!r}")
        for name, values in (("temperatures", self.temperatures), ("alphas", self.alphas)):
            if len(set(values)) != len(values):
                raise InvalidParameterError(f"kd.{name} must be distinct, got {list(values)}")


# ------------------------------------------------------------------------------ stages
@dataclass
class OneShotResult:
    """The one-shot models the later stages start from, and their scores."""

    scores: OneShotScores
    fused: list[nn.Module]
    depth_aligned: list[nn.Module]
    k_fused: dict[int, nn.Module]


def score_pair(
    a: nn.Module, b: nn.Module, a2: nn.Module, dataset: SplitDataset, cla: CLAFusionConfig
) -> tuple[PairScores, CLAFusionResult]:
    """CLAFusion of ``(a, b)``, vanilla averaging and OTFusion of ``(a, a2)``, scored."""
    test, x = dataset.test, dataset.train.x
    result = clafusion([a, b], x, cla)
    start = time.perf_counter()
    ot_model = otfusion([a, a2], x, config=cla.ot)
    ot_seconds = time.perf_counter() - start
    scores = PairScores(
        model_a_acc=module_accuracy(a, test),
        model_b_acc=module_accuracy(b, test),
        ensemble_acc=ensemble_accuracy([a, b], test),
        vanilla_avg_acc=module_accuracy(vanilla_average([a, a2]), test),
        otfusion_acc=module_accuracy(ot_model, test),
        otfusion_seconds=ot_seconds,
        same_depth_ensemble_acc=ensemble_accuracy([a, a2], test),
        clafusion_acc=module_accuracy(result.fused, test),
        clafusion_val_acc=module_accuracy(result.fused, dataset.val),
        depth_aligned_b_acc=module_accuracy(result.depth_aligned[1], test),
        fusion_seconds=result.seconds,
        mapping=tuple(tuple(g) for g in result.mappings[1]),
    )
    return scores, result


def alternating(deep: Sequence[nn.Module], shallow: Sequence[nn.Module], k: int) -> list:
    """The first ``k`` models of ``A_0, B_0, A_1, B_1, ...`` (Table 2)."""
    if k > 2 * len(deep):
        raise InvalidParameterError(
            f"K={k} needs {k // 2 + k % 2} deep models; the zoo has {len(deep)}"
        )
    return [deep[j // 2] if j % 2 == 0 else shallow[j // 2] for j in range(int(k))]


def one_shot(
    deep: Sequence[nn.Module],
    shallow: Sequence[nn.Module],
    dataset: SplitDataset,
    cla: CLAFusionConfig,
    ks: Sequence[int] = (2, 4, 6),
    progress: bool = False,
    desc: str = "fusion",
) -> OneShotResult:
    """One-shot fusion of every pair ``(A_i, B_i)`` and of K alternating models.

    ``A_{i+1}`` (cyclically) is the same-depth partner of ``A_i`` for the vanilla
    averaging and OTFusion baselines. K = 2 reuses the first pair's fusion. ``progress``
    shows a tqdm bar over the pairs and the K fusions.
    """
    s = len(deep)
    if s < 2 or len(shallow) != s:
        raise InvalidParameterError(
            f"the fusion protocol needs >= 2 deep and as many shallow models, got {s} and "
            f"{len(shallow)}; raise zoo seeds"
        )
    bar = tqdm(total=s + len(ks), desc=f"{desc}: one shot", disable=not progress)
    scored = []
    for i in range(s):
        scored.append(score_pair(deep[i], shallow[i], deep[(i + 1) % s], dataset, cla))
        bar.update()
    pairs, results = zip(*scored, strict=True)
    k_fused, k_rows = {}, []
    for k in (int(k) for k in ks):
        bar.set_postfix_str(f"K={k}")
        members = alternating(deep, shallow, k)
        fused = results[0].fused if k == 2 else clafusion(members, dataset.train.x, cla).fused
        k_fused[k] = fused
        k_rows.append(
            KScores(
                k=k,
                member_accs=tuple(module_accuracy(m, dataset.test) for m in members),
                ensemble_acc=ensemble_accuracy(members, dataset.test),
                fused_acc=module_accuracy(fused, dataset.test),
            )
        )
        bar.update()
    bar.close()
    return OneShotResult(
        scores=OneShotScores(pairs=tuple(pairs), k_rows=tuple(k_rows)),
        fused=[r.fused for r in results],
        depth_aligned=[r.depth_aligned[1] for r in results],
        k_fused=k_fused,
    )


def retrain(
    models: Sequence[nn.Module],
    dataset: SplitDataset,
    cfg: FinetuneConfig,
    seed: int,
    from_scratch: bool = False,
    device: torch.device | str = "cpu",
) -> FinetuneResult:
    """Fine-tune a stack of ``models`` (or, ``from_scratch``, train their architecture
    from seeded random initialisations) with the shared settings, on ``device``."""
    init = None
    if not from_scratch:
        stacked = stack_state_dicts([m.state_dict() for m in models])
        init = {k: v for k, v in stacked.items() if v.is_floating_point()}
    return finetune_stack(
        copy.deepcopy(models[0]).to(device), dataset, cfg.epochs, cfg.lr, cfg.batch_size,
        init=init, seeds=torch.arange(len(models)) + seed, optimizer=cfg.optimizer,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )  # fmt: skip


def finetune_comparison(
    deep: Sequence[nn.Module],
    shallow: Sequence[nn.Module],
    shot: OneShotResult,
    dataset: SplitDataset,
    cfg: FinetuneConfig,
    seed: int = 1000,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "fusion",
) -> FinetuneScores:
    """Retrain every initialisation for the same epochs (Table 1, right; Table 2), as
    stacks on ``device``; the random initialisations use seeds ``seed + 7919 + i``.
    ``progress`` shows a tqdm bar over the retraining runs (one stack each)."""
    starts = {
        "parent_a": deep,
        "parent_b": shallow,
        "clafusion": shot.fused,
        "depth_aligned_b": shot.depth_aligned,
    }
    k_more = {k: model for k, model in shot.k_fused.items() if k > 2}
    total = len(starts) + 1 + len(k_more)
    with tqdm(total=total, desc=f"{desc}: finetune", unit="run", disable=not progress) as bar:
        runs = {}
        for name, ms in starts.items():
            bar.set_postfix_str(f"{name} x{len(ms)}, {cfg.epochs} epochs")
            runs[name] = retrain(ms, dataset, cfg, seed, device=device)
            bar.update()
        bar.set_postfix_str(f"random_init x{len(shot.fused)}, {cfg.epochs} epochs")
        runs["random_init"] = retrain(shot.fused, dataset, cfg, seed + 7919, True, device)
        bar.update()
        k_acc = {2: float(runs["clafusion"].best_test_accuracy[0])}
        for k, model in k_more.items():
            bar.set_postfix_str(f"K={k}, {cfg.epochs} epochs")
            run = retrain([model], dataset, cfg, seed, device=device)
            k_acc[k] = float(run.best_test_accuracy.mean())
            bar.update()
    return FinetuneScores(
        best_test_acc={n: float(runs[n].best_test_accuracy.mean()) for n in FINETUNE_INITS},
        k_best_test_acc=k_acc,
        curves={n: tuple(runs[n].val_accuracy.mean(0).tolist()) for n in FINETUNE_INITS},
        pair_test_acc={n: tuple(runs[n].best_test_accuracy.tolist()) for n in FINETUNE_INITS},
    )


def time_to_accuracy(
    template: nn.Module,
    dataset: SplitDataset,
    target_val_acc: float,
    cfg: CostConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "fusion",
) -> tuple[int, float, bool]:
    """Train ``template``'s architecture from a seeded random initialisation with the
    reference per-model trainer until its validation accuracy reaches ``target_val_acc``
    (``progress``: a tqdm bar over the epochs).

    Returns
    -------
    epochs, seconds, reached
        Epochs run, wall time of the training steps only, and whether the target was met
        within ``cfg.max_epochs``.
    """
    seen = {"epochs": 0, "seconds": 0.0, "reached": False}
    bar = tqdm(total=int(cfg.max_epochs), desc=f"{desc}: cost", unit="epoch", disable=not progress)

    def reached(epoch: int, model: nn.Module, seconds: float) -> bool:
        seen.update(epochs=epoch, seconds=seconds)
        acc = module_accuracy(model, dataset.val)
        seen["reached"] = acc >= target_val_acc
        bar.set_postfix_str(f"val {acc:.3f} / {target_val_acc:.3f}")
        bar.update()
        return seen["reached"]

    model = copy.deepcopy(template).to(torch.device(device))
    with bar:
        train_one(
            model, dataset.train, cfg.seed, cfg.lr, 0.0, int(cfg.max_epochs), cfg.batch_size,
            optimizer=cfg.optimizer, on_epoch_end=reached,
        )  # fmt: skip
    return int(seen["epochs"]), float(seen["seconds"]), bool(seen["reached"])


def fusion_cost(
    fused_val_acc: float,
    fused_template: nn.Module,
    dataset: SplitDataset,
    fusion_seconds: float,
    cfg: CostConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "fusion",
) -> CostScores:
    """How much cheaper fusion is than training the fused architecture to its accuracy
    (:func:`time_to_accuracy` until the one-shot fused model's validation accuracy)."""
    epochs, seconds, reached = time_to_accuracy(
        fused_template, dataset, fused_val_acc, cfg, device, progress, desc
    )
    return CostScores(
        train_epochs=epochs,
        train_seconds=seconds,
        fusion_seconds=fusion_seconds,
        ratio=seconds / max(fusion_seconds, 1e-9),
        reached=reached,
    )


def distil_pair(
    teacher: nn.Module,
    student: nn.Module,
    dataset: SplitDataset,
    cla: CLAFusionConfig,
    cfg: TeacherStudentConfig,
    seed: int = 0,
    bar: tqdm | None = None,
) -> dict[str, float]:
    """One teacher–student pair: CLAFusion with the student's widths and the teacher's
    depth, then the KD sweep from each initialisation (:data:`KD_INITS`); ``bar`` (a
    tqdm bar) advances by one per initialisation."""
    result = clafusion([teacher, student], dataset.train.x, cla, target=1)
    inits = {
        "random_b": reinitialized(student, seed=10_000 + seed),
        "pretrained_b": student,
        "depth_aligned_b": result.depth_aligned[1],
        "fused": result.fused,
        "random_fused": reinitialized(result.fused, seed=20_000 + seed),
    }
    out = {
        "teacher_acc": module_accuracy(teacher, dataset.test),
        "student_acc": module_accuracy(student, dataset.test),
        "fused_student_oneshot_acc": module_accuracy(result.fused, dataset.test),
        "n_params_teacher": _n_params(teacher),
        "n_params_student": _n_params(student),
        "n_params_fused_student": _n_params(result.fused),
    }
    for name in KD_INITS:
        if bar is not None:
            bar.set_postfix_str(name)
        sweep = kd_sweep(
            inits[name], teacher, dataset.train, dataset.val, dataset.test, cfg.train,
            cfg.temperatures, cfg.alphas,
        )  # fmt: skip
        out[f"best/{name}"] = sweep["best_test_accuracy"]
        out[f"mean/{name}"] = sweep["mean_best_over_temperatures"]
        if bar is not None:
            bar.update()
    return out


def teacher_student(
    teachers: Sequence[nn.Module],
    students: Sequence[nn.Module],
    dataset: SplitDataset,
    cla: CLAFusionConfig,
    cfg: TeacherStudentConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "fusion",
) -> TeacherStudentScores:
    """Distil a large (deep, wide) teacher into differently initialised students (§4.2,
    Tables 4–5), averaged over ``cfg.n_pairs`` teacher–student pairs (``progress``: a
    tqdm bar over the pairs' KD sweeps)."""
    n = min(int(cfg.n_pairs), len(teachers), len(students))
    if n < 1:
        raise InvalidParameterError("teacher_student needs >= 1 teacher and >= 1 student")
    records = []
    total = n * len(KD_INITS)
    with tqdm(total=total, desc=f"{desc}: distill", unit="sweep", disable=not progress) as bar:
        for i in range(n):
            teacher, student = (copy.deepcopy(m[i]).to(device) for m in (teachers, students))
            records.append(distil_pair(teacher, student, dataset, cla, cfg, seed=i, bar=bar))
    mean = {k: float(np.mean([r[k] for r in records])) for k in records[0]}
    return TeacherStudentScores(
        teacher_acc=mean["teacher_acc"],
        student_acc=mean["student_acc"],
        fused_student_oneshot_acc=mean["fused_student_oneshot_acc"],
        kd_best_acc={name: mean[f"best/{name}"] for name in KD_INITS},
        kd_mean_acc={name: mean[f"mean/{name}"] for name in KD_INITS},
        n_params_teacher=mean["n_params_teacher"],
        n_params_student=mean["n_params_student"],
        n_params_fused_student=mean["n_params_fused_student"],
    )


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
