"""The per-model training loop that batched training must reproduce.

This is how a researcher trains one model: an :class:`torch.nn.Module`, a
:mod:`torch.optim` optimiser, minibatches in a shuffled order. It uses the same initial
weights and the same sample order as :func:`weightspace.zoo.train.train_stack`, so it is
both the correctness oracle of batched training (tests compare weights) and the baseline
of ``benchmarks/zoo_throughput.py``. With ``on_epoch_end`` it is also the project's one
time-to-accuracy trainer (the fusion cost ratio): the callback sees each epoch's model and
the training wall time so far, and may stop the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data.base import Split
from weightspace.device import module_device
from weightspace.zoo.init import init_stack
from weightspace.zoo.optim import make_optimizer
from weightspace.zoo.rng import permutation_keys
from weightspace.zoo.train import has_batch_norm


def train_one(
    model: nn.Module,
    split: Split,
    seed: int,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    optimizer: str = "adam",
    momentum: float = 0.9,
    init_scale: float = 1.0,
    drop_last: bool | None = None,
    on_epoch_end: Callable[[int, nn.Module, float], bool] | None = None,
) -> nn.Module:
    """Initialise ``model`` from ``seed`` and train it on ``split`` in place.

    Parameters mirror :func:`weightspace.zoo.train.train_stack` for one member, plus

    on_epoch_end : callable ``(epoch, model, train_seconds) -> bool``, optional
        Called after every epoch (1-based) with the model and the wall time of the
        training steps so far (synchronised on CUDA; the callback's own time is not
        counted); returning True stops training. The model is in train mode again when
        training continues.
    """
    device = module_device(model)
    init = init_stack(model, torch.tensor([seed]), init_scale, device=device)
    model.load_state_dict({k: v[0] for k, v in init.items()}, strict=False)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_batches_tracked.zero_()
    drop_last = has_batch_norm(model) if drop_last is None else drop_last
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    x, y = split.x.to(device), split.y.to(device)
    n = len(split)
    seed_t, n_t = torch.tensor([seed], device=device), torch.tensor([n], device=device)
    seconds = 0.0
    for epoch in range(epochs):
        model.train()
        tick = time.perf_counter()
        order = permutation_keys(seed_t, epoch, n_t, n)[0]  # on the device: no host copies
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch_end is None:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - tick
        if on_epoch_end(epoch + 1, model, seconds):
            break
    return model
