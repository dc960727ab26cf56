"""Speed of obtaining a model: batched generation against per-model training.

Used by the weight generators' protocols: how many models a generator produces per
second in one batched call, and how long the plain per-model training loop needs to
reach the same accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from weightspace.data.base import SplitDataset
from weightspace.generators.d2nwg_stages import Sampler
from weightspace.zoo.evaluate import module_accuracy
from weightspace.zoo.reference import train_one


def generation_throughput(
    sampler: Sampler, sets: torch.Tensor, n: int, sync: Callable[[], None]
) -> float:
    """Generated models per second for ``len(sets) * n`` models in one batched call."""
    sampler(sets[:1], 1)  # warm-up
    sync()
    start = time.perf_counter()
    out = sampler(sets, n)
    sync()
    seconds = time.perf_counter() - start
    return next(iter(out.values())).shape[0] / seconds


def seconds_to_match(
    template_fn: Callable[[], nn.Module],
    task: SplitDataset,
    target_acc: float,
    lr: float,
    batch_size: int,
    max_epochs: int = 100,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Wall time for the reference per-model loop to reach ``target_acc`` on the test split.

    Trains one model (seed 0, Adam) with :func:`weightspace.zoo.reference.train_one`,
    checking test accuracy after each epoch (the check is not timed), and returns
    ``(seconds, epochs)``; ``(inf, max_epochs)`` if never reached.
    """
    seen = {"seconds": float("inf"), "epochs": max_epochs}

    def reached(epoch: int, model: nn.Module, seconds: float) -> bool:
        if module_accuracy(model, task.test) >= target_acc:
            seen.update(seconds=seconds, epochs=epoch)
            return True
        return False

    model = template_fn().to(device)
    train_one(model, task.train, 0, lr, 0.0, max_epochs, batch_size, on_epoch_end=reached)
    return float(seen["seconds"]), int(seen["epochs"])
