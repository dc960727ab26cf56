"""Speed of obtaining a model: batched generation against per-model training.

Used by the weight generators' protocols: how many models a generator produces per
second in one batched call, and how long the plain per-model training loop needs to
reach the same accuracy. Both are wall times on a shared machine, so each is the median
of repeated measurements (:class:`Timings` keeps every one, to show the spread):

* throughput: ``repeats`` timed batched calls after one untimed warm-up call of the same
  size (allocations, kernel selection, caches);
* time to accuracy: ``repeats`` runs of the reference trainer, each stopped when the
  model's **validation** accuracy reaches the target (the test split is never looked at
  while training: a stop rule on test accuracy would select on the test split).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from weightspace.data.base import SplitDataset
from weightspace.errors import InvalidParameterError
from weightspace.generators.d2nwg_stages import Sampler
from weightspace.zoo.evaluate import module_accuracy
from weightspace.zoo.reference import train_one


@dataclass(frozen=True)
class Timings:
    """Repeated wall-time measurements of one thing.

    Attributes
    ----------
    seconds : tuple of float
        Wall time of each repeat, in order (``inf``: the repeat never finished its goal).
    n_models : int
        Models produced per repeat (throughput) or 1 (one model trained).
    epochs : tuple of int
        Epochs of each training run (empty for throughput).
    """

    seconds: tuple[float, ...]
    n_models: int = 1
    epochs: tuple[int, ...] = ()

    @property
    def median_seconds(self) -> float:
        """Median wall time over the repeats."""
        return float(statistics.median(self.seconds))

    @property
    def per_second(self) -> float:
        """Median rate over the repeats: ``n_models / seconds`` of each, then the median."""
        rates = [self.n_models / s if s > 0 else math.inf for s in self.seconds]
        return float(statistics.median(rates))

    @property
    def median_epochs(self) -> int:
        """Median epoch count of the training runs (they agree on a deterministic device)."""
        return int(statistics.median_low(self.epochs))


def _check_repeats(repeats: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidParameterError(f"repeats must be an integer >= 1, got {repeats!r}")


def throughput_timings(
    sampler: Sampler,
    sets: torch.Tensor,
    n: int,
    sync: Callable[[], None],
    repeats: int = 5,
) -> Timings:
    """Wall time of ``repeats`` batched calls ``sampler(sets, n)`` after one warm-up call.

    Parameters
    ----------
    sampler : Sampler
        ``(sets (B, ...), n) -> {name: (B * n, *shape)}``.
    sets : Tensor (B, ...)
        Support sets; each call generates ``len(sets) * n`` models.
    n : int
        Models per set.
    sync : callable
        Waits for the device (``torch.cuda.synchronize``; a no-op on the CPU).
    repeats : int
        Timed calls (default 5).

    Returns
    -------
    Timings
        ``n_models`` is the number of models of one call.
    """
    _check_repeats(repeats)
    out = sampler(sets, n)  # warm-up, untimed, the size of the timed calls
    sync()
    n_models = int(next(iter(out.values())).shape[0])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler(sets, n)
        sync()
        seconds.append(time.perf_counter() - start)
    return Timings(tuple(seconds), n_models)


def generation_throughput(
    sampler: Sampler,
    sets: torch.Tensor,
    n: int,
    sync: Callable[[], None],
    repeats: int = 5,
) -> float:
    """Generated models per second: the median over ``repeats`` timed batched calls of
    ``len(sets) * n`` models, after a warm-up (:func:`throughput_timings`)."""
    return throughput_timings(sampler, sets, n, sync, repeats).per_second


def time_to_match(
    template_fn: Callable[[], nn.Module],
    task: SplitDataset,
    target_acc: float,
    lr: float,
    batch_size: int,
    max_epochs: int = 100,
    device: torch.device | str = "cpu",
    repeats: int = 3,
) -> Timings:
    """Wall times of ``repeats`` runs of the reference per-model loop until its model
    reaches ``target_acc`` on the task's **validation** split.

    Each run trains a fresh ``template_fn()`` (seed 0, Adam) with
    :func:`weightspace.zoo.reference.train_one`, checking validation accuracy after each
    epoch (the check is not timed); a run that never reaches the target records ``inf``
    seconds and ``max_epochs`` epochs. The test split is never read.
    """
    _check_repeats(repeats)
    seconds, epochs = [], []
    for _ in range(repeats):
        seen = {"seconds": math.inf, "epochs": max_epochs}

        def reached(epoch: int, model: nn.Module, elapsed: float, seen: dict = seen) -> bool:
            if module_accuracy(model, task.val) >= target_acc:
                seen.update(seconds=elapsed, epochs=epoch)
                return True
            return False

        model = template_fn().to(device)
        train_one(model, task.train, 0, lr, 0.0, max_epochs, batch_size, on_epoch_end=reached)
        seconds.append(float(seen["seconds"]))
        epochs.append(int(seen["epochs"]))
    return Timings(tuple(seconds), 1, tuple(epochs))


def seconds_to_match(
    template_fn: Callable[[], nn.Module],
    task: SplitDataset,
    target_acc: float,
    lr: float,
    batch_size: int,
    max_epochs: int = 100,
    device: torch.device | str = "cpu",
    repeats: int = 3,
) -> tuple[float, int]:
    """``(median seconds, epochs)`` of :func:`time_to_match`: the reference loop's wall
    time to reach ``target_acc`` on the validation split, ``(inf, max_epochs)`` if never."""
    t = time_to_match(template_fn, task, target_acc, lr, batch_size, max_epochs, device, repeats)
    return t.median_seconds, t.median_epochs
