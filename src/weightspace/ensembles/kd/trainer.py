"""Distillation trainer: :func:`distill` trains a copy of a student on teacher targets.

Whatever the student's initialisation (random, a pre-trained student, or a fused model
such as the output of CLAFusion or OTFusion), :func:`distill` trains a copy of it on the
loss of :func:`~weightspace.ensembles.kd.loss.kd_loss` (Hinton et al. [1]_, Sec. 2), with
minibatches in a seeded order, and keeps the epoch with the best validation accuracy.

References
----------
.. [1] G. Hinton, O. Vinyals, J. Dean. "Distilling the Knowledge in a Neural Network."
   NIPS Deep Learning Workshop, 2015. arXiv:1503.02531.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.data.base import Split
from weightspace.ensembles.kd.config import (
    KDConfig,
    KDResult,
    _check_config,
    _check_split,
    _check_student,
    _eval_batch_size,
)
from weightspace.ensembles.kd.loop import StudentTask, _Selection, fit_student, params_finite
from weightspace.ensembles.kd.loss import kd_loss, teacher_probs
from weightspace.errors import NonFiniteWeightsError, ShapeError
from weightspace.zoo.evaluate import module_logits

__all__ = ["distill", "kd_task"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- checks
def _check_distill_inputs(model: nn.Module, probs: Tensor, train: Split, batch_size: int) -> None:
    """Check the student copy, teacher probabilities ``(N, C)`` and labels before training.

    The student's class count is read from its output on the first ``batch_size``
    training samples.
    """
    if not params_finite(model):
        raise NonFiniteWeightsError(
            "the student's initial weights contain NaN or infinity; initialise it again"
        )
    if not bool(torch.isfinite(probs).all()):
        raise NonFiniteWeightsError(
            "the teachers' probabilities contain NaN or infinity; check the teachers' "
            "weights (a diverged teacher cannot be distilled)"
        )
    n_classes = probs.shape[1]
    out = module_logits(model, train.x[:batch_size])
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


def _log_summary(config: KDConfig, selection: _Selection, seconds: float, has_val: bool) -> None:
    """One INFO line: best val accuracy and its epoch, or the final train loss."""
    head = "distilled for %d epochs (T=%g, alpha=%g) in %.1fs; "
    args = (config.epochs, config.temperature, config.alpha, seconds)
    if has_val:
        logger.info(
            head + "best val accuracy %.4f at epoch %d",
            *args,
            selection.best_acc,
            selection.best_epoch,
        )
    else:
        logger.info(head + "final train loss %.4f", *args, selection.history["train_loss"][-1])


def kd_task(model: nn.Module, data: tuple[Tensor, Tensor, Tensor], config: KDConfig) -> StudentTask:
    """The plain-KD :class:`~weightspace.ensembles.kd.loop.StudentTask` on ``data = (x, y, probs)``.

    ``probs`` ``(N, C)`` are the teachers' probabilities softened at ``config.temperature``.
    """
    x, y, probs = data

    def batch_loss(idx: Tensor) -> Tensor:
        return kd_loss(model(x[idx]), probs[idx], y[idx], config.temperature, config.alpha)

    return StudentTask(model=model, batch_loss=batch_loss, predict=model, n_train=x.shape[0])


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
    device = _check_student(student)
    model = copy.deepcopy(student)
    _check_distill_inputs(model, probs, train, config.batch_size)
    data = (train.x.to(device), train.y.to(device), probs.to(device))
    selection = fit_student(kd_task(model, data, config), config, val, progress, "distill")
    seconds = time.perf_counter() - t0
    _log_summary(config, selection, seconds, val is not None)
    return KDResult(
        model=model, history=selection.history, best_epoch=selection.best_epoch, seconds=seconds
    )


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
    config = _check_config(config)
    train = _check_split(train, "train")
    if val is not None:
        val = _check_split(val, "val")
    _check_student(student)
    probs = teacher_probs(teachers, train.x, config.temperature, _eval_batch_size(config))
    return _distill_with_probs(student, probs, train, config, val, progress)
