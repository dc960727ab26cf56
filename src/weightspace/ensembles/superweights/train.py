"""Joint training of a SuperWeight ensemble with the two gradient-analysis steps.

All members are trained together on the same batches with the sum of their
cross-entropies (supplement Sec. 1; the authors' code). The sharing structure is learned
on the way (supplement Sec. 1.1, 2 and 3.5):

1. **cluster refinement** (``tau``; 0.1 in the paper; ``None`` skips it, e.g. for
   homogeneous ensembles and the "one SuperWeight per layer" baseline): a warm-up of
   ``refine_epoch`` epochs (default 1) accumulates the layers' weight gradients over its
   last epoch, the SuperWeight clusters are split by Eq. 2 / Algorithm 1, and then, as in
   the authors' code (``learn_gradient_similarity_groups``: the warm-up model is analysed
   and discarded), the ensemble **restarts from its initial state** with the refined
   clusters (fresh banks and coefficients, the members' own parameters reset) and trains
   for the full ``epochs``. ``restart_after_refine=False`` keeps the warm-up's member
   parameters and continues instead (the warm-up epochs then count towards ``epochs``);
2. **coefficient un-sharing** at ``unshare_epoch`` (10 in the paper, clipped to the run
   length) of the main phase, in place, with threshold ``beta`` from the coefficient
   gradients accumulated over that epoch (``None`` skips it).

After each step the optimizer is rebuilt over the new parameters; the state of the
parameters that survive (per-member ones, and the banks after un-sharing) is carried over
(not across a restart). Coefficients get no weight decay.
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
    restart_after_refine : bool
        True (the authors' code): the refinement warm-up is discarded and the refined
        ensemble trains from its initial state for ``epochs``; False: training continues
        from the warm-up's member parameters (fresh banks), ``refine_epoch`` included in
        ``epochs``.
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
    restart_after_refine: bool = True
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


def _epoch(
    ensemble: SuperWeightEnsemble,
    x: Tensor,
    y: Tensor,
    opt: torch.optim.Optimizer,
    batch_size: int,
    gen: torch.Generator,
) -> float:
    """One pass over ``(x, y)`` in a seeded order; returns the mean summed CE."""
    order = torch.randperm(x.shape[0], generator=gen).to(x.device)
    total = torch.zeros((), device=x.device)
    n_batches = 0
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        logits = ensemble.member_logits(x[idx])  # (N, B, C)
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(logits.shape[0]))
        loss = loss * logits.shape[0]  # sum over members of each member's mean CE
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
        n_batches += 1
    return float(total) / n_batches


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
        One row per epoch: ``phase`` (``"warmup"`` for the discarded refinement warm-up,
        ``"train"`` otherwise), ``epoch`` (1-based within its phase), ``loss`` (mean
        summed cross-entropy over the epoch's batches), ``member_loss`` (its mean per
        member), ``n_clusters`` and ``n_coefficient_sets`` at the end of the epoch.
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
    restart = config.tau is not None and config.restart_after_refine
    refine_at = config.refine_epoch if config.tau is not None else None
    unshare_at = min(config.unshare_epoch, config.epochs) if config.beta is not None else None
    history: list[dict[str, float]] = []

    def log(phase: str, epoch: int, mean: float) -> None:
        history.append(
            {
                "phase": phase,
                "epoch": epoch,
                "loss": mean,
                "member_loss": mean / ensemble.n_members,
                "n_clusters": ensemble.plan.n_clusters,
                "n_coefficient_sets": ensemble.plan.n_coefficient_sets,
            }
        )
        logger.debug("superweights %s epoch %d: loss %.4f", phase, epoch, mean)

    ensemble.train()
    opt = _optimizer(ensemble, config)
    warmup = refine_at if restart else 0
    total = warmup + config.epochs
    for step in tqdm(range(1, total + 1), disable=not progress, desc="superweights"):
        phase, epoch = ("warmup", step) if step <= warmup else ("train", step - warmup)
        refine = epoch == refine_at and (phase == "warmup" or not restart)
        unshare = phase == "train" and epoch == unshare_at
        if refine or unshare:
            ensemble.start_recording()
        mean = _epoch(ensemble, x, y, opt, config.batch_size, gen)
        if refine or unshare:
            ensemble.stop_recording()
        if unshare:
            ensemble.unshare_coefficients(config.beta)
            opt = _optimizer(ensemble, config, opt)
        if refine:
            ensemble.refine_clusters(config.tau)
            if restart:
                ensemble.reset_members()
            opt = _optimizer(ensemble, config, None if restart else opt)
        log(phase, epoch, mean)
    return history
