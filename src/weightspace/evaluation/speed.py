"""Speed of obtaining a model: batched generation against per-model training.

Used by the weight generators' protocols: how many models a generator produces per
second in one batched call, and how long the plain per-model training loop needs to
reach the same accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data.base import SplitDataset
from weightspace.zoo.init import init_stack
from weightspace.zoo.rng import permutation_keys

Sampler = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]


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
    """Wall time for the plain per-model loop to reach ``target_acc`` on the test split.

    Trains one model epoch by epoch (``weightspace.zoo.reference.train_one`` semantics,
    checking test accuracy after each epoch, the check not timed) and returns
    ``(seconds, epochs)``; ``(inf, max_epochs)`` if never reached.
    """
    model = template_fn().to(device)
    init = init_stack(model, torch.tensor([0]), 1.0, device=device)
    model.load_state_dict({k: v[0] for k, v in init.items()}, strict=False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = task.train.x.to(device), task.train.y.to(device)
    xt, yt = task.test.x.to(device), task.test.y.to(device)
    n, spent = len(y), 0.0
    seed, n_t = torch.tensor([0], device=device), torch.tensor([n], device=device)
    for epoch in range(max_epochs):
        start = time.perf_counter()
        order = permutation_keys(seed, epoch, n_t, n)[0]
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        spent += time.perf_counter() - start
        with torch.no_grad():
            if float((model(xt).argmax(1) == yt).float().mean()) >= target_acc:
                return spent, epoch + 1
    return float("inf"), max_epochs
