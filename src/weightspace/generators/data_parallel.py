"""Data-parallel training of the generators with ``DistributedDataParallel``.

Every rank of a :class:`~weightspace.distributed.World` draws the same *global* batch
(same seeds, same generators), then runs the model on its own contiguous share of the
rows (:func:`~weightspace.distributed.shard_slice`). A rank's loss is its share of the
full batch's mean (squared errors summed over its rows, divided by the whole batch's
element count) times the world size, so that DDP's gradient *average* is exactly the
gradient of the single-process loss: a run on ``W`` processes follows the single-process
run with the same global batch up to the summation order of the all-reduce (float noise).
All randomness is drawn for the whole batch on every rank; that costs ``W`` times the
random numbers of one shard, which is small beside the model's forward and backward.

Frozen parts of a model (a VAE under the diffusion stage, a frozen dataset encoder) are
made identical on every rank with :func:`sync_module` (rank 0's tensors), and the
training data are compared across ranks with :func:`check_same_data` before a stage
starts, so a rank whose upstream computation differs fails with a clear error instead of
training on different data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from weightspace.distributed import World, check_same
from weightspace.errors import InvalidParameterError

__all__ = [
    "LossModule",
    "check_same_data",
    "cpu_state",
    "data_parallel",
    "global_sum",
    "sync_module",
]


class LossModule(nn.Module):
    """``forward(*args) = loss_fn(*args)``, holding ``trainable`` so that DDP sees (and
    synchronises the gradients of) its parameters: the whole loss is computed inside
    the wrapped forward, as DDP requires."""

    def __init__(self, trainable: nn.Module, loss_fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.trainable = trainable
        self._loss_fn = loss_fn

    def forward(self, *args: Any) -> torch.Tensor:
        """The loss of one step."""
        return self._loss_fn(*args)


def data_parallel(
    trainable: nn.Module, loss_fn: Callable[..., torch.Tensor], world: World
) -> nn.Module:
    """``loss_fn`` as a module: DDP-wrapped over ``world`` (rank 0's parameters are
    broadcast at construction), or plain in a single-process run."""
    module = LossModule(trainable, loss_fn)
    if not world.active:
        return module
    # device_ids=None: DDP must not move the forward's arguments (row indices stay on
    # the CPU, where the loss functions index CPU tensors with them)
    return DistributedDataParallel(module, device_ids=None)


def check_batch(batch_size: int, world: World, what: str) -> None:
    """Every rank needs at least one row of every global batch."""
    if batch_size < world.world_size:
        raise InvalidParameterError(
            f"{what}: the global batch ({batch_size} rows) is smaller than the number of "
            f"processes ({world.world_size}); raise batch_size or start fewer processes"
        )


@torch.no_grad()
def sync_module(module: nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank."""
    if not world.active:
        return
    for t in [*module.parameters(), *module.buffers()]:
        world._call("broadcast", dist.broadcast, t.data, src=0)


def cpu_state(obj: Any) -> Any:
    """``obj`` (nested dicts/lists of tensors) with every tensor copied to the CPU, so
    that it can be broadcast to ranks on other devices."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


def global_sum(value: torch.Tensor, world: World) -> float:
    """Sum of a scalar tensor over every rank (the value itself in a plain run)."""
    value = value.detach().float().reshape(())
    if world.active:
        value = value.clone()
        world._call("all_reduce", dist.all_reduce, value)
    return float(value)


def check_same_data(world: World, what: str, *tensors: torch.Tensor) -> None:
    """Raise on every rank when the ranks' ``tensors`` differ (sha256 of their bytes)."""
    if not world.active:
        return
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu().reshape(-1)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    check_same(world, h.hexdigest()[:16], f"the training data of {what}")
