"""The conditional-diffusion training loop every D2NWG generator shares.

D2NWG's stage 3 (``d2nwg_diffusion_weight_generation_review_discussion.txt`` §3.2-3.3)
trains a denoiser on clean targets ``x0`` with a condition drawn afresh for every row of
every batch ("we ensure diversity in the training data by sampling a new conditioned
image at every batch"), AdamW, EMA weights and classifier-free-guidance dropout. The
whole-model generator (:func:`weightspace.generators.d2nwg.fit_diffusion`, ``x0`` = VAE
latents) and the class-wise head generator
(:func:`weightspace.generators.classwise.fit_classwise_diffusion`, ``x0`` = residual class
rows) differ only in how a batch is made; this module holds the loop once:

* each step draws ``rows`` (training items) and ``pick`` (which of the item's
  pre-drawn conditioning sets) from the CPU generator, in that order, then asks the
  caller's ``batch(rows, pick, gen_dev)`` for ``(x0, cond)``;
* periodic, atomic checkpoints of the whole state and resumption (an interrupted run
  ends with the same weights as an uninterrupted one), Ctrl-C honoured after a step;
* at the end the EMA weights are copied into the trained modules.

With a :class:`~weightspace.distributed.World` of several processes (``torchrun``), the
loop is data-parallel (:mod:`weightspace.generators.data_parallel`): every rank draws the
same global batch and the same noise, runs the denoiser on its share of the rows under
``DistributedDataParallel``, and follows the single-process run with the same global
batch up to float noise. Rank 0 alone writes checkpoints; a resumed run reads them on
rank 0 and broadcasts the state. EMA weights are kept on every rank (they are identical).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from weightspace.distributed import SINGLE, World, shard_slice
from weightspace.generators.data_parallel import (
    check_batch,
    cpu_state,
    data_parallel,
    global_sum,
)
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.ema import EMA
from weightspace.generators.training_checkpoint import (
    TrainingCheckpoints,
    get_rng_states,
    interrupted,
    losses_list,
    losses_tensor,
    set_rng_states,
    stop_on_sigint,
)

log = logging.getLogger(__name__)

BatchFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]
]
"""``batch(rows (b,), pick (b,), gen_dev) -> (x0 (b, ...), cond (b, ...) or None)``."""


def train_diffusion_loop(
    stage: str,
    trainable: nn.Module,
    denoiser: nn.Module,
    diffusion: GaussianDiffusion,
    batch: BatchFn,
    n_rows: int,
    n_sets: int,
    training: Any,
    seed: int,
    device: torch.device,
    progress: bool = False,
    ck: TrainingCheckpoints | None = None,
    gen_cpu: torch.Generator | None = None,
    world: World = SINGLE,
) -> list[float]:
    """Train ``trainable`` (which holds ``denoiser``) for ``training.steps`` steps.

    Parameters
    ----------
    stage : str
        Name in the progress bar, the log and the interruption message.
    trainable : nn.Module
        Every trained module (denoiser, condition adapter); optimised, EMA-averaged and
        checkpointed as one state dict.
    denoiser : nn.Module
        ``denoiser(x_t, t, cond, drop_cond)``, the noise predictor.
    diffusion : GaussianDiffusion
    batch : BatchFn
        Makes the clean targets and conditions of the drawn rows.
    n_rows, n_sets : int
        Training items and pre-drawn conditioning sets per item.
    training : DiffusionTraining
        ``steps``, ``batch_size``, ``lr``, ``p_uncond``, ``ema_decay``.
    seed : int
        Seeds the CPU generator (rows, picks) and the device generator (noise).
    ck : TrainingCheckpoints, optional
        Opened checkpoints of this stage: resume from the newest valid one, write every
        ``ck.every`` steps, at the end and on Ctrl-C.
    gen_cpu : torch.Generator, optional
        The CPU generator to continue (e.g. one that already drew the conditioning sets);
        default: a new one seeded with ``seed``.
    world : World, optional
        Train data-parallel over these processes (see the module docstring); ``ck`` is
        used on rank 0 only (pass it on every rank; the others ignore it).

    Returns
    -------
    list of float
        The loss of every ``steps // 100``-th step (resumed runs include earlier ones).
    """
    trainable.train()
    b = min(training.batch_size, n_rows)
    check_batch(b, world, f"d2nwg {stage}")
    rows_of_rank = shard_slice(b, world)
    ck = ck if world.is_main else None
    opt = torch.optim.AdamW(trainable.parameters(), lr=training.lr, weight_decay=0.0)
    ema = EMA(trainable, decay=training.ema_decay)
    gen_cpu = torch.Generator().manual_seed(seed) if gen_cpu is None else gen_cpu
    gen_dev = torch.Generator(device=device).manual_seed(seed)
    losses: list[float] = []
    start = 0
    found = world.broadcast(cpu_state(None if ck is None else ck.load_latest()))
    if found is not None:
        start, state = found
        trainable.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"], gen_cpu, gen_dev, device=device)
        losses = losses_list(state["losses"])
        log.info(stage + ": resuming from step %d of %d", start, training.steps)

    def step_loss(rows: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        x0, cond = batch(rows, pick, gen_dev)
        if not world.active:
            return diffusion.training_loss(
                denoiser, x0, cond=cond, p_uncond=training.p_uncond, generator=gen_dev
            )
        part = diffusion.training_loss(
            denoiser, x0, cond=cond, p_uncond=training.p_uncond, generator=gen_dev,
            rows=rows_of_rank,
        )  # fmt: skip
        return part * world.world_size  # DDP averages the ranks' gradients

    step_module = data_parallel(trainable, step_loss, world)
    bar = tqdm(
        range(start, training.steps), initial=start, total=training.steps, desc=f"d2nwg {stage}",
        disable=not progress or not world.is_main, mininterval=2,
    )  # fmt: skip
    with stop_on_sigint() as stop:
        for step in bar:
            rows = torch.randint(0, n_rows, (b,), generator=gen_cpu)
            pick = torch.randint(0, n_sets, rows.shape, generator=gen_cpu)
            loss = step_module(rows, pick)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(trainable)
            if step % max(training.steps // 100, 1) == 0:
                losses.append(global_sum(loss, world) / world.world_size)
            done, last = step + 1, step + 1 == training.steps
            requested = _stop_requested(stop.requested, done, world)
            if ck is not None and (last or requested or ck.due(done)):
                ck.save(done, {
                    "step": done, "model": trainable.state_dict(), "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(), "losses": losses_tensor(losses),
                    "rng": get_rng_states(gen_cpu, gen_dev, device=device),
                })  # fmt: skip
            if requested and not last:
                world.barrier()  # rank 0's checkpoint is written before anyone stops
                raise interrupted(stage, done, ck)
    ema.copy_to(trainable)
    return losses


def _stop_requested(requested: bool, step: int, world: World, every: int = 50) -> bool:
    """Ctrl-C on any rank stops every rank at the same step (checked every ``every``
    steps in a data-parallel run, so that the check costs one small collective)."""
    if not world.active:
        return requested
    return world.any(requested) if step % every == 0 else False


__all__ = ["BatchFn", "train_diffusion_loop"]
