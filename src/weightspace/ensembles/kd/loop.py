"""The one distillation training loop, shared by plain KD and one-to-one KD.

:func:`fit_student` trains whatever a :class:`StudentTask` describes: the module to
update, its loss on a minibatch of training indices, how it predicts for validation
(e.g. the mean of a BatchEnsemble's member probabilities) and an optional gradient
adjustment before each optimiser step (BatchEnsemble's fast-weight rules). Minibatch
order, seeding, divergence checks, best-validation selection and the progress bar live
here once; :func:`~weightspace.ensembles.kd.distill` and
:func:`~weightspace.ensembles.kd.distill_one_to_one` only build the task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.data.base import Split
from weightspace.device import module_device
from weightspace.ensembles.kd.config import KDConfig
from weightspace.errors import NonFiniteWeightsError
from weightspace.metrics import accuracy
from weightspace.zoo.optim import make_optimizer

__all__ = ["StudentTask", "fit_student"]


@dataclass
class StudentTask:
    """What :func:`fit_student` trains.

    Attributes
    ----------
    model : nn.Module
        Updated in place.
    batch_loss : callable
        ``batch_loss(idx)`` with ``idx`` a LongTensor ``(b,)`` of training indices on the
        training device; returns the scalar loss of that minibatch (model in train mode).
    predict : callable
        ``predict(x)`` maps inputs ``(B, *in)`` to scores ``(B, C)`` whose argmax is the
        prediction (logits or log-probabilities); called under ``no_grad`` in eval mode.
    n_train : int
        Number of training samples.
    param_groups : iterable
        What the optimiser updates (parameters or ``torch.optim`` parameter groups);
        defaults to every parameter of ``model``.
    after_backward : callable, optional
        Called between ``backward`` and the optimiser step (gradient rules).
    """

    model: nn.Module
    batch_loss: Callable[[Tensor], Tensor]
    predict: Callable[[Tensor], Tensor]
    n_train: int
    param_groups: Iterable[Any] | None = None
    after_backward: Callable[[], None] | None = None


def params_finite(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one host sync per parameter)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


@torch.no_grad()
def split_accuracy(predict: Callable[[Tensor], Tensor], model: nn.Module, split: Split) -> float:
    """Top-1 accuracy of ``predict`` on ``split`` in batches of 1024, ``model`` in eval mode.

    ``split`` is moved batch by batch to the device of ``model``'s first parameter; the
    model's train/eval mode is restored.
    """
    was = model.training
    model.eval()
    device = module_device(model)
    try:
        chunks = [split.x[s : s + 1024].to(device) for s in range(0, len(split), 1024)]
        scores = torch.cat([predict(xb).float().cpu() for xb in chunks])
    finally:
        model.train(was)
    return float(accuracy(scores, split.y))


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Detached copy of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Selection:
    """Per-epoch history and the best-validation state seen so far."""

    history: dict[str, list[float]]
    best_epoch: int
    best_acc: float
    best_state: dict[str, Tensor] | None

    @classmethod
    def start(cls, task: StudentTask, val: Split | None, epochs: int) -> _Selection:
        """Selection before training: epoch 0 is the initial student when ``val`` is given."""
        history: dict[str, list[float]] = {"train_loss": []}
        if val is None:
            return cls(history, epochs, -math.inf, None)
        acc0 = split_accuracy(task.predict, task.model, val)
        history["val_accuracy"] = [acc0]
        return cls(history, 0, acc0, _snapshot(task.model))

    def record(self, task: StudentTask, epoch: int, loss: float, val: Split | None) -> dict:
        """Log one epoch; keep the model if its val accuracy is strictly the best.

        Returns the progress-bar postfix.
        """
        self.history["train_loss"].append(loss)
        postfix = {"loss": f"{loss:.4f}"}
        if val is not None:
            acc = split_accuracy(task.predict, task.model, val)
            self.history["val_accuracy"].append(acc)
            if acc > self.best_acc:  # strict: ties keep the earliest epoch
                self.best_epoch, self.best_acc, self.best_state = epoch, acc, _snapshot(task.model)
            postfix["val_acc"] = f"{acc:.4f}"
        return postfix


def _run_epoch(
    task: StudentTask, opt: torch.optim.Optimizer, order: Tensor, batch_size: int, has_bn: bool
) -> float:
    """One pass over the training indices in ``order``; the sample-weighted mean loss.

    A trailing batch of one sample is skipped for models with BatchNorm (unless ``N = 1``).
    """
    n = order.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=order.device)
    seen = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if has_bn and len(idx) == 1 and n > 1:
            continue  # BatchNorm cannot normalise a batch of one sample
        loss = task.batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if task.after_backward is not None:
            task.after_backward()
        opt.step()
        loss_sum += loss.detach().double() * len(idx)
        seen += len(idx)
    return float(loss_sum) / max(seen, 1)


def fit_student(
    task: StudentTask, config: KDConfig, val: Split | None, progress: bool, desc: str
) -> _Selection:
    """Train ``task.model`` in place for ``config.epochs`` epochs; keep the best epoch.

    Minibatch order comes from ``torch.Generator().manual_seed(config.seed)``; the global
    RNG (dropout) is seeded with ``config.seed`` inside a forked RNG state. With ``val``,
    the state of the epoch (0 = before training) with the highest validation accuracy of
    ``task.predict`` is loaded back (ties: the earliest). The model is left in eval mode.

    Raises
    ------
    NonFiniteWeightsError
        If the loss or a parameter becomes NaN or infinite.
    """
    device = module_device(task.model)
    groups = task.param_groups if task.param_groups is not None else task.model.parameters()
    opt = make_optimizer(groups, config.optimizer, config.lr, config.weight_decay, config.momentum)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in task.model.modules())
    gen = torch.Generator().manual_seed(config.seed)
    selection = _Selection.start(task, val, config.epochs)
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    bar = tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress)
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)  # randomness inside the student (dropout)
        task.model.train()
        for epoch in bar:
            order = torch.randperm(task.n_train, generator=gen).to(device)
            loss = _run_epoch(task, opt, order, config.batch_size, has_bn)
            if not math.isfinite(loss) or not params_finite(task.model):
                raise NonFiniteWeightsError(
                    f"{desc} diverged in epoch {epoch}/{config.epochs}: the loss or the "
                    f"student's weights became NaN or infinite (lr={config.lr}, "
                    f"optimizer={config.optimizer!r}); lower the learning rate"
                )
            bar.set_postfix(**selection.record(task, epoch, loss, val))
    bar.close()
    if selection.best_state is not None:
        task.model.load_state_dict(selection.best_state)
    task.model.eval()
    return selection
