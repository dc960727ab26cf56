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
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.data.base import Split
from weightspace.ensembles.kd.config import (
    KDConfig,
    KDResult,
    _check_config,
    _check_split,
    _check_student,
    _eval_batch_size,
)
from weightspace.ensembles.kd.loss import kd_loss, teacher_probs
from weightspace.errors import NonFiniteWeightsError, ShapeError
from weightspace.metrics import accuracy
from weightspace.zoo.evaluate import module_logits
from weightspace.zoo.optim import make_optimizer

__all__ = ["distill"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- checks
def _params_finite(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one host sync per parameter)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _check_distill_inputs(model: nn.Module, probs: Tensor, train: Split, batch_size: int) -> None:
    """Check the student copy, teacher probabilities ``(N, C)`` and labels before training.

    The student's class count is read from its output on the first ``batch_size``
    training samples.
    """
    if not _params_finite(model):
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


# ---------------------------------------------------------------------------- scoring
def _split_accuracy(model: nn.Module, split: Split, batch_size: int) -> float:
    """Top-1 accuracy of ``model`` on ``split``, predicted ``batch_size`` samples at a time.

    Each batch goes through :func:`weightspace.zoo.evaluate.module_logits` (eval mode,
    the model's device), so a large split never needs one forward pass over all ``N``.
    """
    x = split.x
    logits = torch.cat(
        [module_logits(model, x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)]
    )
    return float(accuracy(logits.float(), split.y))


@dataclass
class _Selection:
    """Per-epoch history and the best-validation state seen so far (``None``: no val)."""

    history: dict[str, list[float]]
    best_epoch: int
    best_acc: float
    best_state: dict[str, Tensor] | None

    @classmethod
    def start(cls, model: nn.Module, val: Split | None, config: KDConfig) -> _Selection:
        """Selection before training: epoch 0 is the initial student when ``val`` is given."""
        history: dict[str, list[float]] = {"train_loss": []}
        if val is None:
            return cls(history, config.epochs, -math.inf, None)
        acc0 = _split_accuracy(model, val, _eval_batch_size(config))
        history["val_accuracy"] = [acc0]
        return cls(history, 0, acc0, _snapshot(model))

    def record(
        self, model: nn.Module, epoch: int, loss: float, val: Split | None, config: KDConfig
    ) -> dict[str, str]:
        """Log epoch ``epoch``; keep the model if its val accuracy is strictly the best.

        Returns the progress-bar postfix of the epoch.
        """
        self.history["train_loss"].append(loss)
        msg = f"epoch {epoch}/{config.epochs}: train_loss={loss:.4f}"
        postfix = {"loss": f"{loss:.4f}"}
        if val is not None:
            acc = _split_accuracy(model, val, _eval_batch_size(config))
            self.history["val_accuracy"].append(acc)
            msg += f" val_accuracy={acc:.4f}"
            if acc > self.best_acc:  # strict: ties keep the earliest epoch
                self.best_epoch, self.best_acc, self.best_state = epoch, acc, _snapshot(model)
            postfix["val_acc"] = f"{acc:.4f}"
        logger.debug(msg)
        return postfix


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Detached copy of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- training
def _run_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor, Tensor],
    order: Tensor,
    config: KDConfig,
    has_bn: bool,
) -> float:
    """One pass over ``data = (x, y, probs)`` in minibatches of ``order``; mean KD loss.

    A trailing batch of one sample is skipped for models with BatchNorm (unless ``N = 1``).
    """
    x, y, probs = data
    n = order.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
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
    return float(loss_sum) / max(seen, 1)


def _train_epochs(
    model: nn.Module,
    data: tuple[Tensor, Tensor, Tensor],
    config: KDConfig,
    selection: _Selection,
    val: Split | None,
    progress: bool,
) -> None:
    """Train ``model`` in place for ``config.epochs`` epochs on ``data = (x, y, probs)``.

    Minibatch order comes from ``torch.Generator().manual_seed(config.seed)``; the global
    RNG (dropout) is seeded with ``config.seed`` inside a forked RNG state.
    """
    device = data[0].device
    opt = make_optimizer(
        model.parameters(), config.optimizer, config.lr, config.weight_decay, config.momentum
    )
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    gen = torch.Generator().manual_seed(config.seed)
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    bar = tqdm(range(1, config.epochs + 1), desc="distill", disable=not progress)
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)  # randomness inside the student (dropout)
        model.train()
        for epoch in bar:
            order = torch.randperm(data[0].shape[0], generator=gen).to(device)
            loss = _run_epoch(model, opt, data, order, config, has_bn)
            if not math.isfinite(loss) or not _params_finite(model):
                raise NonFiniteWeightsError(
                    f"distillation diverged in epoch {epoch}/{config.epochs}: the loss or the "
                    f"student's weights became NaN or infinite (lr={config.lr}, "
                    f"optimizer={config.optimizer!r}); lower the learning rate"
                )
            bar.set_postfix(**selection.record(model, epoch, loss, val, config))
    bar.close()


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
    selection = _Selection.start(model, val, config)
    _train_epochs(model, data, config, selection, val, progress)
    if selection.best_state is not None:
        model.load_state_dict(selection.best_state)
    model.eval()
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
