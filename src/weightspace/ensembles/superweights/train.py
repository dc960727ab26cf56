"""Joint training of a SuperWeight ensemble with the two gradient-analysis steps.

All members are trained together on the same batches with the sum of their
cross-entropies (supplement Sec. 1; the authors' code). The sharing structure is learned
on the way (supplement Sec. 1.1, 2 and 3.5):

1. after a warm-up epoch (``refine_epoch``, default 1) whose weight gradients were
   accumulated, SuperWeight clusters are refined with threshold ``tau`` (0.1 in the
   paper; ``None`` skips it, e.g. for homogeneous ensembles and the "one SuperWeight per
   layer" baseline); the banks are re-allocated and re-initialised for the new clusters;
2. at ``unshare_epoch`` (10 in the paper, clipped to the run length), shared coefficients
   are un-shared with threshold ``beta`` from the coefficient gradients accumulated over
   that epoch (``None`` skips it). When both steps fall on the same epoch, un-sharing
   runs first, on the same gradients.

After each step the optimizer is rebuilt over the new parameters; the state of the
parameters that survive (per-member ones, and the banks after un-sharing) is carried over.
Coefficients get no weight decay.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from weightspace.ensembles.superweights.clusters import check_threshold
from weightspace.ensembles.superweights.ensemble import SuperWeightEnsemble
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.zoo.optim import OPTIMIZERS, make_optimizer

__all__ = ["SuperWeightTrainConfig", "train_superweights"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuperWeightTrainConfig:
    """Settings of :func:`train_superweights`.

    Attributes
    ----------
    epochs : int
    batch_size : int
    lr, weight_decay, momentum : float
        ``weight_decay`` applies to everything but the coefficients; ``momentum`` to SGD.
    optimizer : {"adam", "adamw", "sgd"}
    tau : float or None
        Cluster refinement threshold in ``[-1, 1]``; None: no refinement.
    refine_epoch : int
        Epoch (1-based) after which clusters are refined.
    beta : float or None
        Coefficient un-sharing threshold in ``[-1, 1]``; None: no un-sharing.
    unshare_epoch : int
        Epoch (1-based) after which coefficients are un-shared; clipped to ``epochs``.
    seed : int
        Seed of the batch order.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    optimizer: str = "adam"
    tau: float | None = 0.1
    refine_epoch: int = 1
    beta: float | None = None
    unshare_epoch: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "refine_epoch", "unshare_epoch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidParameterError(
                f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidParameterError(f"lr must be a positive number, got {self.lr!r}")
        if self.tau is not None:
            check_threshold(self.tau, "tau")
        if self.beta is not None:
            check_threshold(self.beta, "beta")


def _optimizer(
    ensemble: SuperWeightEnsemble, config: SuperWeightTrainConfig, old=None
) -> torch.optim.Optimizer:
    opt = make_optimizer(
        ensemble.param_groups(config.weight_decay),
        config.optimizer,
        config.lr,
        config.weight_decay,
        config.momentum,
    )
    if old is not None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p in old.state:
                    opt.state[p] = old.state[p]
    return opt


def train_superweights(
    ensemble: SuperWeightEnsemble,
    x: Tensor,
    y: Tensor,
    config: SuperWeightTrainConfig | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train all members jointly: ``loss = sum_i CE(member_i(x), y)`` per batch.

    Parameters
    ----------
    ensemble : SuperWeightEnsemble
        Trained in place, on the device of its parameters.
    x : Tensor, shape (S, *input_shape)
    y : Tensor, shape (S,), int
    config : SuperWeightTrainConfig, optional
    progress : bool
        Show a progress bar over epochs.

    Returns
    -------
    list of dict
        One row per epoch: ``epoch``, ``loss`` (mean summed cross-entropy over the
        epoch's batches), ``member_loss`` (its mean per member), ``n_clusters`` and
        ``n_coefficient_sets`` at the end of the epoch.
    """
    config = config or SuperWeightTrainConfig()
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ShapeError(
            f"train_superweights takes x (S, *input_shape) and labels y (S,) with S > 0, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    device = next(ensemble.parameters()).device
    x, y = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    refine_at = config.refine_epoch if config.tau is not None else None
    unshare_at = min(config.unshare_epoch, config.epochs) if config.beta is not None else None
    opt = _optimizer(ensemble, config)
    history: list[dict[str, float]] = []
    ensemble.train()
    for epoch in tqdm(range(1, config.epochs + 1), disable=not progress, desc="superweights"):
        record = epoch in (refine_at, unshare_at)
        if record:
            ensemble.start_recording()
        order = torch.randperm(x.shape[0], generator=gen).to(device)
        total = torch.zeros((), device=device)
        n_batches = 0
        for start in range(0, x.shape[0], config.batch_size):
            idx = order[start : start + config.batch_size]
            logits = ensemble.member_logits(x[idx])  # (N, B, C)
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(logits.shape[0]))
            loss = loss * logits.shape[0]  # sum over members of each member's mean CE
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            n_batches += 1
        if record:
            ensemble.stop_recording()
        if epoch == unshare_at:
            ensemble.unshare_coefficients(config.beta)
            opt = _optimizer(ensemble, config, opt)
        if epoch == refine_at:
            ensemble.refine_clusters(config.tau)
            opt = _optimizer(ensemble, config, opt)
        mean = float(total) / n_batches
        history.append(
            {
                "epoch": epoch,
                "loss": mean,
                "member_loss": mean / ensemble.n_members,
                "n_clusters": ensemble.plan.n_clusters,
                "n_coefficient_sets": ensemble.plan.n_coefficient_sets,
            }
        )
        logger.info("superweights epoch %d: loss %.4f", epoch, mean)
    return history
