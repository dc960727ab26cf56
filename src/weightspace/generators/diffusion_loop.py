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
  caller's ``batch(rows, pick, gen_dev)`` for ``(x0, cond)``. The draws of
  ``INDEX_CHUNK`` steps are made ahead and copied to the device at once
  (:class:`IndexDraws`): the same numbers, but one host-to-device copy, which waits for
  the device, per chunk instead of two per step, so the host can queue the next steps
  while the device runs. ``rows`` and ``pick`` reach ``batch`` on the training device;
  checkpoints store the CPU generator's state after the draws actually used;
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
from weightspace.errors import InvalidParameterError
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

INDEX_CHUNK = 64
"""Steps whose ``(rows, pick)`` are drawn ahead and copied to the device together."""


class IndexDraws:
    """Each step's ``(rows (b,), pick (b,))``, drawn from ``gen`` step after step (rows,
    then pick), ``chunk`` steps ahead, and handed out on ``device``.

    The numbers are those of drawing at every step; :meth:`consumed_state` is ``gen``'s
    state after only the draws handed out so far (what a checkpoint must store).

    Parameters
    ----------
    gen : torch.Generator
        The CPU generator; advanced by every draw made ahead.
    n_rows, n_sets, b : int
        ``rows ~ U{0..n_rows-1}^b``, ``pick ~ U{0..n_sets-1}^b``.
    steps : int
        Steps left; no chunk draws beyond them.
    """

    def __init__(
        self, gen: torch.Generator, n_rows: int, n_sets: int, b: int, steps: int,
        device: torch.device, chunk: int = INDEX_CHUNK,
    ) -> None:  # fmt: skip
        self.gen, self.n_rows, self.n_sets, self.b = gen, n_rows, n_sets, b
        self.left, self.device, self.chunk = steps, device, max(int(chunk), 1)
        self._start = gen.get_state()
        self._rows = self._pick = torch.zeros(0, b, dtype=torch.long)
        self._used = 0

    def _draw(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, self.n_rows, (self.b,), generator=gen)
        return rows, torch.randint(0, self.n_sets, rows.shape, generator=gen)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next step's ``(rows, pick)`` on the device."""
        if self._used == len(self._rows):
            n = min(self.chunk, self.left)
            if n < 1:
                raise InvalidParameterError("IndexDraws: every step's draws are used")
            self._start = self.gen.get_state()
            rows, pick = zip(*(self._draw(self.gen) for _ in range(n)), strict=True)
            self._rows = torch.stack(rows).to(self.device)
            self._pick = torch.stack(pick).to(self.device)
            self._used, self.left = 0, self.left - n
        i, self._used = self._used, self._used + 1
        return self._rows[i], self._pick[i]

    def consumed_state(self) -> torch.Tensor:
        """``gen``'s state had only the handed-out steps been drawn."""
        g = torch.Generator()
        g.set_state(self._start)
        for _ in range(self._used):
            self._draw(g)
        return g.get_state()


BatchFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]
]
"""``batch(rows (b,), pick (b,), gen_dev) -> (x0 (b, ...), cond (b, ...) or None)``;
``rows`` and ``pick`` are on the training device."""


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
    # fused on CUDA: one kernel for the whole update instead of a chain of multi-tensor ones
    opt = torch.optim.AdamW(trainable.parameters(), lr=training.lr, weight_decay=0.0,
                            fused=device.type == "cuda")  # fmt: skip
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
    draws = IndexDraws(gen_cpu, n_rows, n_sets, b, training.steps - start, device)
    used = torch.Generator()  # gen_cpu as it would be after the draws used so far
    with stop_on_sigint() as stop:
        for step in bar:
            rows, pick = draws.next()
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
                used.set_state(draws.consumed_state())
                ck.save(done, {
                    "step": done, "model": trainable.state_dict(), "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(), "losses": losses_tensor(losses),
                    "rng": get_rng_states(used, gen_dev, device=device),
                })  # fmt: skip
            if requested and not last:
                gen_cpu.set_state(draws.consumed_state())
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


__all__ = ["INDEX_CHUNK", "BatchFn", "IndexDraws", "train_diffusion_loop"]
