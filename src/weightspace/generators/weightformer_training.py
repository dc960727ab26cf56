"""Training WeightFormer (Fei et al., Sec. 3.3, Algorithm 1, Sec. 4.1).

:func:`fit_weightformer` samples ``T`` teachers from a pool of training checkpoints,
generates the student in one forward pass, and minimises eq. (4): the student's
cross-entropy on a training batch plus ``alpha`` times the shift-consistency loss (eq. 3;
each of its two passes with its own weight cutoff). The teacher set is re-sampled every
``resample_every`` steps ("to avoid too much costs on reloading parameters ... we
re-sample the teacher model checkpoints ... every predefined steps"); every
``eval_every`` steps the generated students of fixed validation teacher sets are scored
on the validation split, the best generator state is kept and training stops when it has
not improved for ``patience`` evaluations ("terminated until accuracy achieves no
increment in the validation set").

:func:`pretrain_weightformer` is the optional warm start of Sec. 4.1: an L2 loss between
the generated tokens and those of knowledge-distilled students of the same teachers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.checks import positive_number
from weightspace.data.base import Split
from weightspace.distributed import SINGLE, World, shard_slice
from weightspace.ensembles.kd.loss import kd_loss
from weightspace.errors import InvalidParameterError, NonFiniteWeightsError, ShapeError
from weightspace.generators.data_parallel import (
    check_batch,
    check_same_data,
    data_parallel,
    global_sum,
    sync_module,
)
from weightspace.generators.weight_tokens import tokenize
from weightspace.generators.weightformer import (
    WeightFormer,
    shift_consistency,
    student_logits,
    student_state,
)
from weightspace.metrics import accuracy
from weightspace.zoo.rng import hash_keys

__all__ = ["FitConfig", "FitResult", "fit_weightformer", "pretrain_weightformer", "sample_sets"]


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of :func:`fit_weightformer`.

    Parameters
    ----------
    steps : int
        Maximum optimiser steps.
    lr : float
        Adam learning rate.
    batch_size : int
        Training samples per step.
    alpha : float
        Weight of the shift-consistency loss (the paper: 1.0; 0 is the ablation).
    n_teachers : int
        Teachers per generated student (the paper: 3).
    resample_every : int
        Steps between teacher re-samples.
    eval_every : int
        Steps between validation scores.
    n_val_sets : int
        Fixed validation teacher sets averaged at every evaluation.
    patience : int
        Evaluations without improvement before stopping.
    seed : int
        Seed of teacher sets, batches and cutoff draws.
    kd_alpha : float
        Share of the data term taken by distillation from the set's own teachers:
        ``kd_loss(student, mean softened teacher probabilities, y, kd_temperature,
        kd_alpha)`` replaces the cross-entropy. 0 (the default) is eq. (4) exactly; the
        paper has no such term (see the module docstring for when it matters).
    kd_temperature : float
        Temperature of that term.
    sets_per_step : int
        Teacher sets per optimiser step, their students' losses averaged. 1 (the
        default) is Algorithm 1 exactly; a data-parallel run
        (:func:`fit_weightformer` with a ``world``) shares a step's sets between the
        processes, so it needs at least one set per process.
    """

    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 128
    alpha: float = 1.0
    n_teachers: int = 3
    resample_every: int = 20
    eval_every: int = 100
    n_val_sets: int = 4
    patience: int = 5
    seed: int = 0
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    sets_per_step: int = 1

    def __post_init__(self) -> None:
        ints = ("steps", "batch_size", "n_teachers", "resample_every", "eval_every",
                "sets_per_step")  # fmt: skip
        for name in (*ints, "n_val_sets", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (("lr", self.lr), ("alpha", self.alpha)):
            bad = isinstance(value, bool) or not isinstance(value, int | float)
            if bad or not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise InvalidParameterError(f"{name} must be a finite number >= 0 (lr > 0)")
        if isinstance(self.kd_alpha, bool) or not 0 <= self.kd_alpha <= 1:
            raise InvalidParameterError(f"kd_alpha must lie in [0, 1], got {self.kd_alpha!r}")
        positive_number("kd_temperature", self.kd_temperature, "Hinton et al. use T in [1, 20]")


@dataclass
class FitResult:
    """Outcome of :func:`fit_weightformer`: the generator at its best validation score."""

    model: WeightFormer
    best_step: int
    best_val_accuracy: float
    history: dict[str, list[float]] = field(default_factory=dict)


def sample_sets(n_pool: int, n_teachers: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` teacher sets ``(count, n_teachers)`` drawn without replacement within a set."""
    if n_teachers > n_pool:
        raise InvalidParameterError(
            f"cannot draw sets of {n_teachers} teachers from a pool of {n_pool} checkpoints"
        )
    return torch.stack(
        [torch.randperm(n_pool, generator=generator)[:n_teachers] for _ in range(count)]
    )


def _set_tokens(model: WeightFormer, pool: Mapping[str, Tensor], idx: Tensor) -> list[Tensor]:
    """Tokens ``(1, T, n_out, w)`` per layer of the pool checkpoints ``idx``."""
    dev = next(model.parameters()).device
    chosen = {k: v[idx].to(dev) for k, v in pool.items()}
    return [t[None] for t in tokenize(model.layout, chosen)]


@torch.no_grad()
def _val_accuracy(
    model: WeightFormer, template: nn.Module, pool: Mapping[str, Tensor], sets: Tensor, val: Split
) -> float:
    """Mean validation accuracy of the students generated for ``sets`` (eval mode)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    accs = []
    for idx in sets:
        state = student_state(model.layout, model(_set_tokens(model, pool, idx)))
        logits = student_logits(template, state, val.x.to(dev))
        accs.append(float(accuracy(logits.cpu(), val.y)))
    model.train(was)
    return sum(accs) / len(accs)


@torch.no_grad()
def _teacher_probs(
    template: nn.Module, pool: Mapping[str, Tensor], idx: Tensor, x: Tensor, temperature: float
) -> Tensor:
    """Mean softened probabilities ``(B, C)`` of the pool checkpoints ``idx`` on ``x``."""
    state = {k: v[idx].to(x.device) for k, v in pool.items()}
    logits = torch.stack([student_logits(template, state, x, index=i) for i in range(idx.shape[0])])
    return (logits / temperature).softmax(-1).mean(0)


def _step_loss(
    model: WeightFormer,
    template: nn.Module,
    tokens: list[Tensor],
    batch: tuple[Tensor, Tensor],
    config: FitConfig,
    gen: torch.Generator,
    soft: Tensor | None = None,
) -> tuple[Tensor, float]:
    """Eq. (4) on one batch; returns the loss and its consistency part.

    ``soft`` (B, C): the teachers' softened probabilities when ``config.kd_alpha > 0``.
    """
    if config.alpha > 0:
        out, consist = shift_consistency(model, tokens, gen)
    else:
        out, consist = model(tokens, gen), torch.zeros(())
    logits = student_logits(template, student_state(model.layout, out), batch[0])
    if soft is None:
        data = F.cross_entropy(logits, batch[1])
    else:
        data = kd_loss(logits, soft, batch[1], config.kd_temperature, config.kd_alpha)
    return data + config.alpha * consist, float(consist.detach())


def _set_generator(seed: int, step: int, j: int) -> torch.Generator:
    """The cutoff draws of set ``j`` at ``step`` when a step has several sets: its own
    counter-based stream, so that a rank draws exactly what one process draws for it."""
    return torch.Generator().manual_seed(int(hash_keys(seed, step, j)))


def fit_weightformer(
    model: WeightFormer,
    template: nn.Module,
    pool: Mapping[str, Tensor],
    train: Split,
    val: Split,
    config: FitConfig,
    progress: bool = False,
    world: World = SINGLE,
) -> FitResult:
    """Algorithm 1: train (a copy of) ``model`` on teacher sets drawn from ``pool``.

    Parameters
    ----------
    model : WeightFormer
        Generator (not modified).
    template : nn.Module
        The teachers' architecture (its buffers are used for every student).
    pool : mapping name -> Tensor (P, *shape)
        The training checkpoints (``P >= n_teachers``), e.g. ``stack_state_dicts``.
    train, val : Split
        Data for the student loss and for the stopping rule.
    config : FitConfig
    progress : bool
        Show a tqdm bar over steps.
    world : World, optional
        Train data-parallel (``DistributedDataParallel``) over several processes: every
        rank draws the same teacher sets and batch, generates the students of its share
        of the step's ``config.sets_per_step`` sets, and the gradients are averaged so
        that the run follows a single process with the same ``sets_per_step`` (to float
        noise). Rank 0 scores the validation sets and decides when to stop.

    Returns
    -------
    FitResult

    Raises
    ------
    NonFiniteWeightsError
        If the loss becomes NaN or infinite.
    InvalidParameterError
        If a data-parallel run has fewer sets per step than processes.
    """
    k = config.sets_per_step
    check_batch(k, world, "WeightFormer (sets_per_step)")
    mine = range(k)[shard_slice(k, world)]
    gen = torch.Generator().manual_seed(config.seed)
    n_pool = next(iter(pool.values())).shape[0]
    val_sets = sample_sets(n_pool, config.n_teachers, config.n_val_sets, gen)
    wf = copy.deepcopy(model).train()
    sync_module(wf, world)
    dev = next(wf.parameters()).device
    opt = torch.optim.Adam(wf.parameters(), lr=config.lr)
    x, y = train.x.to(dev), train.y.to(dev)
    check_same_data(world, "WeightFormer", x, y, *pool.values())

    def validate() -> float:
        acc = _val_accuracy(wf, template, pool, val_sets, val) if world.is_main else 0.0
        return float(world.broadcast(acc))

    last = {"consistency": 0.0}  # this rank's summed consistency term of the last step

    def step_loss(step: int, tokens: dict, teachers: Tensor, idx: Tensor) -> Tensor:
        total, consist_sum = torch.zeros((), device=dev), 0.0
        for j in mine:
            soft = None
            if config.kd_alpha > 0:
                soft = _teacher_probs(template, pool, teachers[j], x[idx], config.kd_temperature)
            g = gen if k == 1 and not world.active else _set_generator(config.seed, step, j)
            loss_j, consist = _step_loss(wf, template, tokens[j], (x[idx], y[idx]), config, g, soft)
            total = total + loss_j
            consist_sum += consist
        last["consistency"] = consist_sum
        return total / k * world.world_size  # DDP averages the ranks' gradients

    step_module = data_parallel(wf, step_loss, world)
    history: dict[str, list[float]] = {"loss": [], "consistency": [], "val_accuracy": []}
    best = (validate(), 0, copy.deepcopy(wf.state_dict()))
    history["val_accuracy"].append(best[0])
    waited, tokens, teachers = 0, None, None
    bar = tqdm(range(1, config.steps + 1), desc="WeightFormer",
               disable=not progress or not world.is_main)  # fmt: skip
    for step in bar:
        if tokens is None or (step - 1) % config.resample_every == 0:
            teachers = sample_sets(n_pool, config.n_teachers, k, gen)
            tokens = {j: _set_tokens(wf, pool, teachers[j]) for j in mine}
        idx = torch.randint(0, x.shape[0], (config.batch_size,), generator=gen).to(dev)
        loss = step_module(step, tokens, teachers, idx)
        value = global_sum(loss, world) / world.world_size
        if not math.isfinite(value):
            raise NonFiniteWeightsError(
                f"WeightFormer's loss became {value} at step {step}; lower lr={config.lr}"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(value)
        consist = last["consistency"]
        if world.active:
            consist = global_sum(torch.tensor(consist), world)
        history["consistency"].append(consist / k)
        if step % config.eval_every == 0:
            acc = validate()
            history["val_accuracy"].append(acc)
            if acc > best[0]:
                best, waited = (acc, step, copy.deepcopy(wf.state_dict())), 0
            else:
                waited += 1
                if waited >= config.patience:
                    break
    wf.load_state_dict(best[2])
    return FitResult(wf.eval(), best[1], best[0], history)


def pretrain_weightformer(
    model: WeightFormer,
    pool: Mapping[str, Tensor],
    sets: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    steps: int,
    lr: float = 1e-3,
) -> WeightFormer:
    """Warm start (Sec. 4.1): L2 between generated tokens and KD students' tokens.

    Parameters
    ----------
    model : WeightFormer
        Trained in place (train mode) and returned.
    pool : mapping name -> Tensor (P, *shape)
    sets : LongTensor (S, T)
        Teacher sets of the pool.
    targets : sequence of S state dicts
        The knowledge-distilled student of each set.
    steps : int
        Optimiser steps, cycling through the sets.
    lr : float
    """
    if len(targets) != sets.shape[0]:
        raise ShapeError(f"{sets.shape[0]} teacher sets but {len(targets)} KD targets")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    target_tokens = [tokenize(model.layout, [t]) for t in targets]
    model.train()
    for step in range(steps):
        i = step % sets.shape[0]
        out = model(_set_tokens(model, pool, sets[i]))
        loss = sum(
            F.mse_loss(o[0], t[0].to(o.device)) for o, t in zip(out, target_tokens[i], strict=True)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model
