"""The per-model training loop that batched training must reproduce.

This is how a researcher trains one model: an :class:`torch.nn.Module`, a
:mod:`torch.optim` optimiser, minibatches in a shuffled order. It uses the same initial
weights and the same sample order as :func:`weightspace.zoo.train.train_stack`, so it is
both the correctness oracle of batched training (tests compare weights) and the baseline
of ``benchmarks/zoo_throughput.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data.base import Split
from weightspace.errors import InvalidParameterError
from weightspace.zoo.init import init_stack
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
) -> nn.Module:
    """Initialise ``model`` from ``seed`` and train it on ``split`` in place.

    Parameters mirror :func:`weightspace.zoo.train.train_stack` for one member.
    """
    device = next(model.parameters()).device
    init = init_stack(model, torch.tensor([seed]), init_scale, device=device)
    model.load_state_dict({k: v[0] for k, v in init.items()}, strict=False)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_batches_tracked.zero_()
    drop_last = has_batch_norm(model) if drop_last is None else drop_last
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        raise InvalidParameterError(f"unknown optimizer {optimizer!r}")
    x, y = split.x.to(device), split.y.to(device)
    n = len(split)
    model.train()
    seed_t, n_t = torch.tensor([seed], device=device), torch.tensor([n], device=device)
    for epoch in range(epochs):
        order = permutation_keys(seed_t, epoch, n_t, n)[0]  # on the device: no host copies
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model
