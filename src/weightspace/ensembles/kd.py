"""Knowledge distillation (Hinton et al. [1]_) from frozen teachers into a student.

The student is trained on

.. math::

    \\mathcal{L} = \\alpha\\, T^2\\, \\mathrm{KL}\\big(p^T_{\\text{teacher}} \\,\\|\\,
    \\mathrm{softmax}(z_{\\text{student}} / T)\\big)
    + (1 - \\alpha)\\, \\mathrm{CE}(z_{\\text{student}}, y),

where :math:`p^T_{\\text{teacher}}` are the teacher's probabilities softened by the
temperature :math:`T` (for several teachers, the mean of their softened probabilities) and
the factor :math:`T^2` keeps the gradient of the soft term on the same scale as the hard
term when :math:`T` changes (Sec. 2 of [1]_).

Whatever the student's initialisation (random, a pre-trained student, or a fused model
such as the output of CLAFusion or OTFusion), :func:`distill` trains a copy of it;
:func:`kd_sweep` repeats this over a grid of temperatures and loss-weight factors and
reports the "Best" and "Average" numbers of Table 5 of CLAFusion [2]_ (Sec. 4.2.1,
"Knowledge distillation"; there, ``T in {20, 10, 8, 4, 1}`` and
``alpha in {0.05, 0.1, 0.5, 0.7, 0.95, 0.99}``, following Singh & Jaggi's OTFusion, Appendix S12).

References
----------
.. [1] G. Hinton, O. Vinyals, J. Dean. "Distilling the Knowledge in a Neural Network."
   NIPS Deep Learning Workshop, 2015. arXiv:1503.02531.
.. [2] D. Nguyen, T. Nguyen, K. Nguyen, D. Phung, H. Bui, N. Ho. "On Cross-Layer Alignment
   for Model Fusion of Heterogeneous Neural Networks" (CLAFusion), Sec. 4.2.1 and
   Table 5 (``papers/clafusion_cross_layer_alignment_fusion.txt``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.data.base import Split
from weightspace.errors import InvalidParameterError, NonFiniteWeightsError, ShapeError
from weightspace.metrics import accuracy

__all__ = ["KDConfig", "KDResult", "distill", "kd_loss", "kd_sweep", "teacher_probs"]

logger = logging.getLogger(__name__)

_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


# ----------------------------------------------------------------------------- checks
def _check_temperature(temperature: object) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise InvalidParameterError(
            f"temperature must be a finite number > 0, got {temperature!r}; "
            "T = 1 is the plain softmax, Hinton et al. use T in [1, 20]"
        )
    return float(temperature)


def _check_alpha(alpha: object) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or not 0.0 <= alpha <= 1.0
    ):
        raise InvalidParameterError(
            f"alpha (weight of the distillation term) must lie in [0, 1], got {alpha!r}; "
            "alpha = 0 is plain cross-entropy, alpha = 1 pure distillation"
        )
    return float(alpha)


def _as_teacher_list(teachers: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(teachers, nn.Module):
        return [teachers]
    if isinstance(teachers, str) or not isinstance(teachers, Sequence):
        raise InvalidParameterError(
            f"teachers must be an nn.Module or a sequence of them, got {type(teachers).__name__}"
        )
    out = list(teachers)
    if not out:
        raise InvalidParameterError("teachers is empty; pass at least one teacher model")
    for i, t in enumerate(out):
        if not isinstance(t, nn.Module):
            raise InvalidParameterError(
                f"teachers[{i}] must be an nn.Module, got {type(t).__name__}"
            )
    return out


def _module_device(module: nn.Module, default: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return default


def _params_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# ------------------------------------------------------------------------------- loss
def kd_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch.

    ``alpha * T**2 * KL(p_teacher || softmax(student / T)) + (1 - alpha) * CE(student, y)``.

    Parameters
    ----------
    student_logits : Tensor, shape (B, C)
        Raw (unsoftened) student logits.
    teacher_probs : Tensor, shape (B, C)
        Teacher probabilities already softened at ``temperature`` (see
        :func:`teacher_probs`); rows sum to 1.
    labels : Tensor, shape (B,), int64
        Hard labels in ``[0, C)``.
    temperature : float
        Softmax temperature ``T > 0``.
    alpha : float
        Weight of the distillation term, in ``[0, 1]``.

    Returns
    -------
    Tensor, shape ()
        The loss; differentiable with respect to ``student_logits``.

    Raises
    ------
    InvalidParameterError
        If ``temperature <= 0`` or ``alpha`` is outside ``[0, 1]``.
    ShapeError
        If the shapes disagree.
    """
    temperature = _check_temperature(temperature)
    alpha = _check_alpha(alpha)
    if student_logits.ndim != 2:
        raise ShapeError(
            f"student_logits must have shape (B, C), got {tuple(student_logits.shape)}"
        )
    if teacher_probs.shape != student_logits.shape:
        raise ShapeError(
            f"teacher_probs must have the shape of student_logits "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_probs.shape)}; the teacher "
            "and the student must have the same number of classes"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ShapeError(
            f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}"
        )
    loss = student_logits.new_zeros(())
    if alpha > 0.0:
        log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
        # kl_div(input=log q, target=p) = sum p (log p - log q), with 0 log 0 = 0.
        kl = F.kl_div(log_p_student, teacher_probs.to(log_p_student.dtype), reduction="batchmean")
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


@torch.no_grad()
def teacher_probs(
    teachers: nn.Module | Sequence[nn.Module],
    x: Tensor,
    temperature: float,
    batch_size: int = 1024,
) -> Tensor:
    """Mean over teachers of their softened probabilities ``softmax(logits / T)``.

    Teachers run in eval mode under ``no_grad``, in batches, each on its own device; their
    train/eval mode is restored afterwards.

    Parameters
    ----------
    teachers : nn.Module or sequence of nn.Module
        One or more teachers mapping ``(B, *input_shape)`` to ``(B, C)`` logits.
    x : Tensor, shape (N, *input_shape)
        Inputs.
    temperature : float
        Softmax temperature ``T > 0``.
    batch_size : int
        Samples per forward pass.

    Returns
    -------
    Tensor, shape (N, C), float32, on ``x.device``
        Rows sum to 1.

    Raises
    ------
    InvalidParameterError
        On an invalid temperature, batch size or teacher list.
    ShapeError
        If a teacher does not output ``(B, C)`` logits, or teachers disagree on ``C``.
    """
    temperature = _check_temperature(temperature)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    models = _as_teacher_list(teachers)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ShapeError(f"x must have shape (N, *input_shape) with N >= 1, got {tuple(x.shape)}")
    was_training = [m.training for m in models]
    total: Tensor | None = None
    try:
        for i, model in enumerate(models):
            model.eval()
            dev = _module_device(model, x.device)
            chunks = []
            for start in range(0, x.shape[0], batch_size):
                logits = model(x[start : start + batch_size].to(dev))
                if logits.ndim != 2:
                    raise ShapeError(
                        f"teacher {i} must output (B, C) logits, got {tuple(logits.shape)}"
                    )
                chunks.append(torch.softmax(logits.float() / temperature, dim=-1).to(x.device))
            probs = torch.cat(chunks)
            if total is None:
                total = probs
            elif probs.shape[1] != total.shape[1]:
                raise ShapeError(
                    f"teachers disagree on the number of classes: teacher 0 has "
                    f"{total.shape[1]}, teacher {i} has {probs.shape[1]}"
                )
            else:
                total = total + probs
    finally:
        for model, mode in zip(models, was_training, strict=True):
            model.train(mode)
    assert total is not None
    return total / len(models)


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class KDConfig:
    """Hyper-parameters of :func:`distill`.

    Parameters
    ----------
    epochs : int
        Training epochs, ``>= 1``.
    lr : float
        Learning rate, ``> 0``.
    batch_size : int
        Minibatch size, ``>= 1``.
    optimizer : str
        ``"sgd"`` (with ``momentum``) or ``"adam"``.
    momentum : float
        SGD momentum in ``[0, 1)``; ignored by Adam.
    weight_decay : float
        L2 penalty, ``>= 0``.
    temperature : float
        Distillation temperature ``T > 0``.
    alpha : float
        Weight of the distillation term in ``[0, 1]`` (the loss-weight factor gamma of
        CLAFusion Sec. 4.2.1).
    seed : int
        Seed of the minibatch order (and of any randomness inside the student, e.g.
        dropout), ``>= 0``.
    """

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.epochs) or self.epochs < 1:
            raise InvalidParameterError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not is_num(self.lr) or self.lr <= 0:
            raise InvalidParameterError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise InvalidParameterError(
                f"batch_size must be an integer >= 1, got {self.batch_size!r}"
            )
        if self.optimizer not in _OPTIMIZERS:
            raise InvalidParameterError(
                f"optimizer must be one of {list(_OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not is_num(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise InvalidParameterError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            raise InvalidParameterError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        _check_temperature(self.temperature)
        _check_alpha(self.alpha)
        if not is_int(self.seed) or self.seed < 0:
            raise InvalidParameterError(f"seed must be an integer >= 0, got {self.seed!r}")


@dataclass
class KDResult:
    """Outcome of :func:`distill`.

    Attributes
    ----------
    model : nn.Module
        The student (a copy) at the best validation epoch, or after the last epoch when no
        validation split was given; in eval mode.
    history : dict of str to list of float
        ``"train_loss"``: mean KD loss of each epoch (``epochs`` entries).
        ``"val_accuracy"`` (only with a validation split): accuracy before training
        (index 0) and after each epoch (``epochs + 1`` entries).
    best_epoch : int
        Epoch of ``model``: 0 means the initial student, ``epochs`` the last one.
    seconds : float
        Wall-clock time of the whole call.
    """

    model: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------------------- training
@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, device: torch.device, batch_size: int) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        out = [
            model(x[s : s + batch_size].to(device)).float()
            for s in range(0, x.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out)


def _accuracy_of(model: nn.Module, split: Split, device: torch.device, batch_size: int) -> float:
    logits = _predict(model, split.x, device, batch_size)
    return float(accuracy(logits, split.y.to(logits.device)))


def _check_split(split: object, name: str) -> Split:
    if not isinstance(split, Split):
        raise InvalidParameterError(f"{name} must be a Split, got {type(split).__name__}")
    if len(split) == 0:
        raise ShapeError(f"{name} split is empty; distillation needs at least one sample")
    return split


def _student_device(student: nn.Module) -> torch.device:
    if not isinstance(student, nn.Module):
        raise InvalidParameterError(f"student must be an nn.Module, got {type(student).__name__}")
    params = list(student.parameters())
    if not params:
        raise InvalidParameterError("student has no parameters to train")
    return params[0].device


def _distill_with_probs(
    student: nn.Module,
    probs: Tensor,
    train: Split,
    config: KDConfig,
    val: Split | None,
    progress: bool,
) -> KDResult:
    """Core of :func:`distill`, given the softened teacher probabilities ``(N, C)``."""
    t0 = time.perf_counter()
    device = _student_device(student)
    model = copy.deepcopy(student)
    if not _params_finite(model):
        raise NonFiniteWeightsError(
            "the student's initial weights contain NaN or infinity; initialise it again"
        )
    if not bool(torch.isfinite(probs).all()):
        raise NonFiniteWeightsError(
            "the teachers' probabilities contain NaN or infinity; check the teachers' "
            "weights (a diverged teacher cannot be distilled)"
        )
    n, n_classes = probs.shape
    # Class-count check on one batch, before any training.
    out = _predict(model, train.x[: config.batch_size], device, config.batch_size)
    if out.ndim != 2:
        raise ShapeError(f"the student must output (B, C) logits, got {tuple(out.shape)}")
    if out.shape[1] != n_classes:
        raise ShapeError(
            f"the teachers output {n_classes} classes but the student outputs "
            f"{out.shape[1]}; distillation needs the same classes"
        )
    y_max = int(train.y.max())
    if y_max >= n_classes:
        raise ShapeError(f"train labels go up to {y_max} but the models have {n_classes} classes")

    x, y, probs = train.x.to(device), train.y.to(device), probs.to(device)
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    history: dict[str, list[float]] = {"train_loss": []}
    best_epoch, best_acc, best_state = config.epochs, -math.inf, None
    if val is not None:
        acc0 = _accuracy_of(model, val, device, max(config.batch_size, 1024))
        history["val_accuracy"] = [acc0]
        best_epoch, best_acc = 0, acc0
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    gen = torch.Generator().manual_seed(config.seed)
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    bar = tqdm(range(1, config.epochs + 1), desc="distill", disable=not progress)
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)  # randomness inside the student (dropout)
        model.train()
        for epoch in bar:
            order = torch.randperm(n, generator=gen).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            seen = 0
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                if has_bn and len(idx) == 1 and n > 1:
                    continue  # BatchNorm cannot normalise a batch of one sample
                loss = kd_loss(model(x[idx]), probs[idx], y[idx], config.temperature, config.alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * len(idx)
                seen += len(idx)
            epoch_loss = float(loss_sum) / max(seen, 1)
            if not math.isfinite(epoch_loss) or not _params_finite(model):
                raise NonFiniteWeightsError(
                    f"distillation diverged in epoch {epoch}/{config.epochs}: the loss or the "
                    f"student's weights became NaN or infinite (lr={config.lr}, "
                    f"optimizer={config.optimizer!r}); lower the learning rate"
                )
            history["train_loss"].append(epoch_loss)
            msg = f"epoch {epoch}/{config.epochs}: train_loss={epoch_loss:.4f}"
            if val is not None:
                acc = _accuracy_of(model, val, device, max(config.batch_size, 1024))
                history["val_accuracy"].append(acc)
                msg += f" val_accuracy={acc:.4f}"
                if acc > best_acc:  # strict: ties keep the earliest epoch
                    best_epoch, best_acc = epoch, acc
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bar.set_postfix(loss=f"{epoch_loss:.4f}", val_acc=f"{acc:.4f}")
            else:
                bar.set_postfix(loss=f"{epoch_loss:.4f}")
            logger.debug(msg)
    bar.close()

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - t0
    if val is not None:
        logger.info(
            "distilled for %d epochs (T=%g, alpha=%g) in %.1fs; best val accuracy %.4f at epoch %d",
            config.epochs,
            config.temperature,
            config.alpha,
            seconds,
            best_acc,
            best_epoch,
        )
    else:
        logger.info(
            "distilled for %d epochs (T=%g, alpha=%g) in %.1fs; final train loss %.4f",
            config.epochs,
            config.temperature,
            config.alpha,
            seconds,
            history["train_loss"][-1],
        )
    return KDResult(model=model, history=history, best_epoch=best_epoch, seconds=seconds)


def distill(
    student: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    train: Split,
    config: KDConfig,
    val: Split | None = None,
    progress: bool = False,
) -> KDResult:
    """Distil one or more frozen teachers into (a copy of) ``student``.

    The student's initialisation is whatever ``student`` holds: random, pre-trained, or a
    fused model. The teachers' softened probabilities on ``train.x`` are computed once
    (the teachers are frozen and there is no augmentation). Each epoch visits the training
    samples in an order drawn from ``torch.Generator().manual_seed(config.seed)``, so two
    calls with the same arguments give the same model.

    Parameters
    ----------
    student : nn.Module
        Student mapping ``(B, *input_shape)`` to ``(B, C)`` logits; not modified. Training
        runs on the device of its parameters.
    teachers : nn.Module or sequence of nn.Module
        Teachers with the same ``C``; several are averaged in probability space.
    train : Split
        Training inputs ``(N, *input_shape)`` and labels ``(N,)``.
    config : KDConfig
        Hyper-parameters.
    val : Split, optional
        Validation split; when given, the epoch (0 = before training) with the highest
        validation accuracy is returned (ties: the earliest).
    progress : bool
        Show a tqdm bar over epochs.

    Returns
    -------
    KDResult

    Raises
    ------
    InvalidParameterError
        If ``config`` is not a :class:`KDConfig`, or the student has no parameters.
    ShapeError
        If the teachers' class count differs from the student's, or a split is empty.
    NonFiniteWeightsError
        If the teachers' outputs, the loss or the student's weights become NaN/infinite.
    """
    if not isinstance(config, KDConfig):
        raise InvalidParameterError(f"config must be a KDConfig, got {type(config).__name__}")
    train = _check_split(train, "train")
    if val is not None:
        val = _check_split(val, "val")
    _student_device(student)
    probs = teacher_probs(teachers, train.x, config.temperature, max(config.batch_size, 1024))
    return _distill_with_probs(student, probs, train, config, val, progress)


def kd_sweep(
    student: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    train: Split,
    val: Split,
    test: Split,
    config: KDConfig,
    temperatures: Sequence[float],
    alphas: Sequence[float],
) -> dict[str, Any]:
    """Distil for every ``(temperature, alpha)`` and summarise as in CLAFusion Table 5.

    Each run starts from the same ``student`` with ``config`` (its ``temperature`` and
    ``alpha`` replaced) and keeps its best-validation epoch. Selection always uses
    validation accuracy; test accuracy is only reported.

    Parameters
    ----------
    student, teachers, train, config
        As in :func:`distill`.
    val : Split
        Validation split: selects the epoch of each run and the run of each temperature.
    test : Split
        Test split on which every returned model is scored.
    temperatures : sequence of float
        Distinct temperatures ``T > 0``, e.g. ``(20, 10, 8, 4, 1)``.
    alphas : sequence of float
        Distinct loss-weight factors in ``[0, 1]``, e.g. ``(0.05, 0.1, 0.5, 0.7, 0.95, 0.99)``.

    Returns
    -------
    dict
        ``"runs"``: one dict per run, temperatures outer and alphas inner, with keys
        ``"temperature"``, ``"alpha"``, ``"val_accuracy"`` (at the best epoch),
        ``"test_accuracy"``, ``"best_epoch"``.
        ``"best_test_accuracy"``: test accuracy of the run with the highest validation
        accuracy (ties: the first run) -- Table 5's "Best".
        ``"best_run"``: that run's dict.
        ``"best_per_temperature"``: for each temperature, the run of its best-validation
        alpha.
        ``"mean_best_over_temperatures"``, ``"std_best_over_temperatures"``: mean and
        population standard deviation (ddof = 0) over temperatures of the test accuracy of
        each temperature's best-validation alpha -- Table 5's "Average".

    Raises
    ------
    InvalidParameterError
        If ``temperatures`` or ``alphas`` is empty, has duplicates or invalid values.
    """
    if not isinstance(config, KDConfig):
        raise InvalidParameterError(f"config must be a KDConfig, got {type(config).__name__}")
    temps = [_check_temperature(t) for t in temperatures]
    alps = [_check_alpha(a) for a in alphas]
    for name, values in (("temperatures", temps), ("alphas", alps)):
        if not values:
            raise InvalidParameterError(f"{name} is empty; give at least one value")
        if len(set(values)) != len(values):
            raise InvalidParameterError(f"{name} has duplicates: {values}")
    train = _check_split(train, "train")
    val = _check_split(val, "val")
    test = _check_split(test, "test")
    device = _student_device(student)
    eval_bs = max(config.batch_size, 1024)

    runs: list[dict[str, Any]] = []
    best_per_temperature: list[dict[str, Any]] = []
    for temperature in temps:
        probs = teacher_probs(teachers, train.x, temperature, eval_bs)
        best_here: dict[str, Any] | None = None
        for alpha in alps:
            cfg = dataclasses.replace(config, temperature=temperature, alpha=alpha)
            res = _distill_with_probs(student, probs, train, cfg, val, progress=False)
            run = {
                "temperature": temperature,
                "alpha": alpha,
                "val_accuracy": res.history["val_accuracy"][res.best_epoch],
                "test_accuracy": _accuracy_of(res.model, test, device, eval_bs),
                "best_epoch": res.best_epoch,
            }
            logger.info(
                "kd_sweep T=%g alpha=%g: val %.4f, test %.4f (epoch %d)",
                temperature,
                alpha,
                run["val_accuracy"],
                run["test_accuracy"],
                run["best_epoch"],
            )
            runs.append(run)
            if best_here is None or run["val_accuracy"] > best_here["val_accuracy"]:
                best_here = run
        assert best_here is not None
        best_per_temperature.append(best_here)

    best_run = runs[0]
    for run in runs[1:]:
        if run["val_accuracy"] > best_run["val_accuracy"]:
            best_run = run
    per_t = torch.tensor([r["test_accuracy"] for r in best_per_temperature], dtype=torch.float64)
    return {
        "runs": runs,
        "best_test_accuracy": best_run["test_accuracy"],
        "best_run": best_run,
        "best_per_temperature": best_per_temperature,
        "mean_best_over_temperatures": float(per_t.mean()),
        "std_best_over_temperatures": float(per_t.std(correction=0)),
    }
