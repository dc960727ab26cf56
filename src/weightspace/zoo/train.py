"""Train a stack of same-architecture models at once with ``torch.func`` (vmap).

All ``B`` members of a stack share one architecture, batch size and optimiser kind; each
has its own seed, task (data), learning rate, weight decay, epoch count and init scale.
One step runs the whole stack: gather each member's minibatch from its own task, one
vmapped forward, one backward of the summed per-member mean losses (the members'
gradients do not mix), one stacked optimiser update. Nothing in the loop synchronises with
the device (no ``.item()``), so on a GPU it is bound by the kernels, not by Python.

Equivalence with a per-model loop (:mod:`weightspace.zoo.reference`): member ``b`` sees
exactly the batches a ``DataLoader(shuffle=True)`` with the same order would give it
(orders from :func:`weightspace.zoo.rng.permutation_keys`), the same initial weights
(:func:`weightspace.zoo.init.init_stack`) and the same update rule. With BatchNorm, only
full batches are used (``drop_last``) so that batch statistics never see padding, and
running statistics of members that skip a step are restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.errors import InvalidParameterError
from weightspace.nets.functional import batched_forward, float_buffers
from weightspace.zoo.init import init_stack
from weightspace.zoo.optim import StackedOptimizer
from weightspace.zoo.rng import permutation_keys
from weightspace.zoo.tasks import TaskStack

ProgressFn = Callable[[int], None]


def has_batch_norm(module: nn.Module) -> bool:
    """True if the module contains BatchNorm layers."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@dataclass(frozen=True)
class StackHParams:
    """Per-member hyper-parameters of a stack, as tensors of shape (B,)."""

    seeds: torch.Tensor
    lr: torch.Tensor
    weight_decay: torch.Tensor
    epochs: torch.Tensor
    init_scale: torch.Tensor

    def to(self, device: torch.device | str) -> StackHParams:
        """Move every tensor to ``device``."""
        return StackHParams(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@dataclass
class StackResult:
    """Trained stack: final tensors and optional per-epoch snapshots (on CPU)."""

    final: dict[str, torch.Tensor]
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    train_loss: torch.Tensor | None = None  # (epochs_max, B) mean loss per epoch
    finite: torch.Tensor | None = None  # (B,) False where training diverged to NaN/inf
    steps: torch.Tensor | None = None  # (B,) optimiser steps taken by each member
    snapshot_steps: dict[int, torch.Tensor] = field(default_factory=dict)


def _to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of a stack's tensors."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _check_batching(
    template: nn.Module, n_member: torch.Tensor, batch_size: int, drop_last: bool | None
) -> bool:
    """Resolve ``drop_last`` (default: iff BatchNorm) and check it against the task sizes.

    ``n_member`` ``(B,)`` holds each member's training-set size.
    """
    bn = has_batch_norm(template)
    drop_last = bn if drop_last is None else bool(drop_last)
    if bn and not drop_last:
        raise InvalidParameterError(
            "BatchNorm models must train with drop_last=True so that batch statistics "
            "never include padding; remove drop_last: false from the zoo hparams"
        )
    if drop_last and bool((n_member < batch_size).any()):
        raise InvalidParameterError(
            f"batch_size={batch_size} is larger than the training set of some tasks "
            f"(smallest {int(n_member.min())} samples) and drop_last is on, so they would "
            "never train; lower batch_size"
        )
    return drop_last


def _initial_state(
    template: nn.Module,
    hp: StackHParams,
    init: Mapping[str, torch.Tensor] | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Seeded initial parameters and float buffers ``(B, *shape)``, or copies of ``init``."""
    state = init_stack(template, hp.seeds, hp.init_scale, device=device)
    if init is None:
        return state
    missing = sorted(set(state) - set(init))
    if missing:
        raise InvalidParameterError(f"init lacks tensors {missing[:5]} of the architecture")
    return {k: init[k].detach().to(device=device, dtype=v.dtype).clone() for k, v in state.items()}


class _FlatStack:
    """A stack's parameters as one flat leaf tensor ``(B, D)``, plus its float buffers.

    :meth:`current` views the flat tensor back as named ``(B, *shape)`` parameters, so
    the forward pass differentiates with respect to ``flat``.
    """

    def __init__(self, template: nn.Module, state: Mapping[str, torch.Tensor], b: int) -> None:
        self.b = b
        self.names = [n for n, _ in template.named_parameters()]
        self.shapes = [tuple(state[n].shape[1:]) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.flat = torch.cat([state[n].reshape(b, -1) for n in self.names], 1).requires_grad_(True)
        self.buffers = {n: state[n] for n in float_buffers(template)}

    def current(self) -> dict[str, torch.Tensor]:
        """Named parameters (views of ``flat``) and buffers, each ``(B, *shape)``."""
        views = self.flat.split(self.sizes, dim=1)
        params = {
            n: v.view(self.b, *s) for n, v, s in zip(self.names, views, self.shapes, strict=True)
        }
        return {**params, **self.buffers}


@dataclass
class _Loop:
    """What every step of :func:`train_stack` needs."""

    template: nn.Module
    stack: _FlatStack
    opt: StackedOptimizer
    data: TaskStack
    task_index: torch.Tensor  # (B,)
    n_member: torch.Tensor  # (B,) training-set size of each member's task
    batch_size: int
    drop_last: bool
    n_min: int = field(init=False)  # smallest training set, known on the host
    arange_b: torch.Tensor = field(init=False)  # (batch_size,) positions within a batch

    def __post_init__(self) -> None:
        self.n_min = int(self.n_member.min())
        self.arange_b = torch.arange(self.batch_size, device=self.task_index.device)

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy ``(B, batch_size)`` of the stack on ``(B, batch, ...)``."""
        logits = batched_forward(self.template, self.stack.current(), xb)
        ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
        return ce.view(self.stack.b, self.batch_size)


def _full_step(loop: _Loop, order: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """One step where every member trains on a full batch; mean losses ``(B,)``."""
    xb, yb = loop.data.gather(loop.task_index, order[:, lo:hi])
    per_model = loop.loss(xb, yb).mean(1)
    (grad,) = torch.autograd.grad(per_model.sum(), loop.stack.flat)
    loop.opt.step(grad, None, all_active=True)
    return per_model.detach()


def _masked_step(
    loop: _Loop, order: torch.Tensor, lo: int, in_epoch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step where some members have a partial (or no) batch.

    Only members in their epochs with a usable batch (``active``) are updated; the others
    keep their BatchNorm statistics. Returns mean losses ``(B,)`` and ``active`` ``(B,)``.
    """
    bs, n_max, buffers = loop.batch_size, loop.data.n_max, loop.stack.buffers
    pos = lo + loop.arange_b
    valid = pos[None, :] < loop.n_member[:, None]
    n_valid = valid.sum(1)
    full = n_valid == bs if loop.drop_last else n_valid > 0
    active = in_epoch & full
    xb, yb = loop.data.gather(loop.task_index, order[:, pos.clamp(max=n_max - 1)])
    saved = {n: t.clone() for n, t in buffers.items()}
    per_model = (loop.loss(xb, yb) * valid).sum(1) / n_valid.clamp(min=1)
    (grad,) = torch.autograd.grad(per_model.sum(), loop.stack.flat)
    loop.opt.step(grad, active)
    with torch.no_grad():
        for n, old in saved.items():  # members that skip keep their BN stats
            t = buffers[n]
            t.copy_(torch.where(active.view(-1, *([1] * (t.dim() - 1))), t, old))
    return per_model.detach(), active


def _train_epoch(
    loop: _Loop, hp: StackHParams, epoch: int, min_epochs: int, progress: ProgressFn | None
) -> torch.Tensor:
    """One epoch (0-based ``epoch``) of the whole stack; each member's mean loss ``(B,)``."""
    b, bs, n_max = loop.stack.b, loop.batch_size, loop.data.n_max
    device = loop.stack.flat.device
    steps = n_max // bs if loop.drop_last else math.ceil(n_max / bs)
    order = permutation_keys(hp.seeds, epoch, loop.n_member, n_max)
    in_epoch = epoch < hp.epochs
    loss_sum = torch.zeros(b, device=device)
    n_steps = torch.zeros(b, device=device)  # each member's own steps this epoch
    for step in range(steps):
        lo, hi = step * bs, (step + 1) * bs
        # Host-side knowledge (no device sync): does every member train on a full batch
        # at this step? Then no masking is needed (the common case).
        if epoch < min_epochs and hi <= loop.n_min:
            loss_sum += _full_step(loop, order, lo, hi)
            n_steps += 1
        else:
            per_model, active = _masked_step(loop, order, lo, in_epoch)
            with torch.no_grad():
                loss_sum += per_model * active
                n_steps += active
        if progress is not None:
            progress(1)
    return loss_sum / n_steps.clamp(min=1)


def _finish(result: StackResult, loop: _Loop, losses: torch.Tensor) -> StackResult:
    """Fill ``result`` with the final tensors, finiteness, losses and step counts (CPU)."""
    final = loop.stack.current()
    result.finite = (
        torch.stack([torch.isfinite(t.detach()).flatten(1).all(1) for t in final.values()])
        .all(0)
        .cpu()
    )
    result.final = _to_cpu(final)
    result.train_loss = losses.cpu()
    result.steps = loop.opt.step_count.flatten().long().cpu()
    return result


def train_stack(
    template: nn.Module,
    hp: StackHParams,
    task_index: torch.Tensor,
    data: TaskStack,
    batch_size: int,
    optimizer: str = "adam",
    momentum: float = 0.9,
    drop_last: bool | None = None,
    snapshot_epochs: Sequence[int] = (),
    progress: ProgressFn | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
) -> StackResult:
    """Train ``B`` models of one architecture together.

    Parameters
    ----------
    template : nn.Module
        Module of the architecture, on the training device.
    hp : StackHParams
        Per-member seeds and hyper-parameters, each (B,).
    task_index : LongTensor (B,)
        Which task of ``data`` each member trains on.
    data : TaskStack
        Padded training splits of the tasks.
    batch_size : int
        Minibatch size (shared by the stack).
    optimizer : {"adam", "adamw", "sgd"}
    momentum : float
        SGD momentum.
    drop_last : bool, optional
        Skip each epoch's last partial batch; default True iff the model has BatchNorm.
    snapshot_epochs : sequence of int
        1-based epochs after which to keep a copy of every member still training.
    progress : callable, optional
        Called with the number of steps done since the last call.
    init : mapping name -> Tensor (B, *shape), optional
        Start from these parameters and float buffers (fine-tuning generated or zoo
        weights) instead of the seeded initialisation; ``hp.seeds`` still orders batches.

    Returns
    -------
    StackResult
    """
    device = data.x.device
    hp, task_index = hp.to(device), task_index.to(device)
    n_member = data.n[task_index]
    drop_last = _check_batching(template, n_member, batch_size, drop_last)
    template.train()
    stack = _FlatStack(template, _initial_state(template, hp, init, device), len(hp.seeds))
    opt = StackedOptimizer(stack.flat, optimizer, hp.lr, hp.weight_decay, momentum=momentum)
    loop = _Loop(template, stack, opt, data, task_index, n_member, batch_size, drop_last)
    epochs_host = hp.epochs.tolist()
    max_epochs, min_epochs = max(epochs_host), min(epochs_host)
    snap_at = {int(e) for e in snapshot_epochs if 0 < int(e) <= max_epochs}
    result = StackResult(final={})
    losses = torch.zeros(max_epochs, stack.b, device=device)
    for epoch in range(max_epochs):
        losses[epoch] = _train_epoch(loop, hp, epoch, min_epochs, progress)
        if epoch + 1 in snap_at:
            result.snapshot_steps[epoch + 1] = opt.step_count.flatten().long().cpu()
            result.snapshots[epoch + 1] = _to_cpu(stack.current())
    return _finish(result, loop, losses)


@torch.no_grad()
def predict_stack(
    template: nn.Module,
    stacked: dict[str, torch.Tensor],
    task_index: torch.Tensor,
    data: TaskStack,
    chunk: int = 1024,
) -> torch.Tensor:
    """Logits of every member on its own task's (padded) split: (B, N_max, n_classes)."""
    template.eval()
    device = data.x.device
    stacked = {k: v.to(device) for k, v in stacked.items()}
    task_index = task_index.to(device)
    outs = []
    for start in range(0, data.n_max, chunk):
        pos = torch.arange(start, min(start + chunk, data.n_max), device=device)
        xb, _ = data.gather(task_index, pos.expand(len(task_index), -1))
        outs.append(batched_forward(template, stacked, xb))
    return torch.cat(outs, dim=1)
