"""Train one zoo with several processes (``torchrun``): members sharded across ranks.

``torchrun --nproc_per_node=N ... run --pipeline=zoo`` starts ``N`` processes that all call
:func:`weightspace.zoo.build.train_zoo` with the same members and ``world`` (see
:mod:`weightspace.distributed`); :func:`train_zoo_sharded` is what they run:

1. **Open** (rank 0): take the folder's lock (:func:`~weightspace.zoo.folder.zoo_lock`,
   held until the end of the run), remove stale temporary files, reopen the zoo
   (:func:`~weightspace.zoo.folder.recover_zoo`, which also adopts the part files of an
   interrupted run), decide which members are reused and re-score rows rebuilt from
   checkpoints. If that fails (another run holds the lock, a corrupt checkpoint, ...)
   rank 0 raises its error and every other rank a
   :class:`~weightspace.distributed.DistributedRunError` naming it; nothing on disk changed.
2. **Shared folder check**: rank 0 writes a token file ``root/.world-<hex>``; a rank that
   does not see it raises :class:`~weightspace.distributed.DistributedSetupError` (on
   every rank): the zoo folder must be on a filesystem every host of the run sees (NFS,
   Lustre, ...), since ranks write checkpoints that rank 0 indexes.
3. **Shard** (every rank, no communication): the members to train are grouped as stacks
   are (architecture and :meth:`~weightspace.zoo.spec.MemberSpec.stack_key`, in order of
   first appearance) and rank ``r`` takes the contiguous slice
   :func:`~weightspace.distributed.shard_slice` of every group (:func:`shard_members`),
   then stacks its share in chunks of at most ``max_stack``. A member's weights do not
   depend on the stack it trains in, nor therefore on the number of ranks: its initial
   weights and sample order come from counter-based generators keyed by the member
   (:mod:`weightspace.zoo.rng`), so a sharded zoo equals the single-process zoo: bit
   for bit for MLPs on the CPU (tested), to float noise (about 1e-7) for convolutional
   members, whose batched convolution picks its algorithm by the stack's size.
4. **Train** (every rank, on ``world.device``): each stack's checkpoints are written
   atomically, then its index rows to ``root/parts/<stack_id>.parquet``. Ranks never
   write ``index.parquet``. SIGINT stops a rank after its current stack.
5. **Merge** (rank 0): the reused rows and the rows of every rank (gathered with
   :meth:`World.gather <weightspace.distributed.World.gather>`, the rows each rank holds
   in memory anyway) are put in grid order, deduplicated by model id, written atomically
   as ``index.parquet``; the merged part files are deleted and, with ``prune``,
   checkpoints outside the grid. Every rank returns the same :class:`Zoo` (tensors on
   disk) and :class:`ZooRunReport` (members summed over ranks, the slowest rank's time).

**What a kill loses.** An exception on any rank is raised on every rank at the next
collective step; a rank that is killed makes the others raise ``DistributedRunError`` at
their next collective step (after finishing their current share). Every stack whose part
file was written is kept: the next run, with any number of processes (1 included),
adopts those rows with their metrics and trains only the unfinished stacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from weightspace.atomic import atomic_write_bytes
from weightspace.data.base import SplitDataset
from weightspace.data.tasks import TaskSpec
from weightspace.distributed import DistributedSetupError, World, check_same, shard_slice
from weightspace.errors import EmptyZooError
from weightspace.zoo.build import (
    ZooRunOptions,
    ZooRunReport,
    _assemble_index,
    _rescore,
    _train_stacks,
    _Trained,
)
from weightspace.zoo.folder import (
    PARTS_DIR,
    WORLD_TOKEN_PREFIX,
    ZooWriter,
    clean_stale_tmp,
    part_files,
    prune_outside,
    recover_zoo,
    remove_files,
    write_checkpoints,
    write_part,
    zoo_lock,
)
from weightspace.zoo.plan import (
    TaskShape,
    ZooPlan,
    _group_stacks,
    materialize_tasks,
    model_ids_of,
    reusable_members,
    stack_groups,
    task_shapes,
    total_steps,
)
from weightspace.zoo.spec import MemberSpec
from weightspace.zoo.zoo import INDEX_COLUMNS, Zoo

__all__ = ["shard_members", "train_zoo_sharded"]

log = logging.getLogger(__name__)

#: Called after each stack a rank wrote, with the world and the stack's rows (tests use it
#: to kill a rank mid-run). None in production.
_after_stack_hook: Callable[[World, list[dict]], None] | None = None


def shard_members(
    todo: Sequence[MemberSpec],
    tasks: Mapping[TaskSpec, SplitDataset | TaskShape],
    world: World,
) -> list[MemberSpec]:
    """This rank's share of the members to train.

    The members are grouped as stacks are (architecture and stack key, in order of first
    appearance, :func:`~weightspace.zoo.plan.stack_groups`) and rank ``r`` takes the
    contiguous slice :func:`~weightspace.distributed.shard_slice` of every group, so every
    rank trains stacks as large as it can and the shares differ by at most one member per
    group. Deterministic; the shares of all ranks are disjoint and cover ``todo``.

    Parameters
    ----------
    todo : sequence of MemberSpec
        The members to train, in grid order (the same on every rank).
    tasks : mapping TaskSpec -> SplitDataset or TaskShape
        Input shape and class count of every task of ``todo``
        (:func:`~weightspace.zoo.plan.task_shapes`).
    world : World

    Returns
    -------
    list of MemberSpec
        Grouped, each group in grid order.
    """
    return [
        m
        for _arch, group in stack_groups(todo, tasks)
        for m in group[shard_slice(len(group), world)]
    ]


def _fingerprint(members: Sequence[MemberSpec], options: ZooRunOptions) -> str:
    """What every rank must agree on: the grid and the options that shape the zoo."""
    what = [m.member_id for m in members]
    what += [repr((options.snapshot_every, options.max_stack, options.on_corrupt))]
    what += [repr((options.on_diverge, options.prune))]
    return hashlib.sha256("\n".join(what).encode()).hexdigest()[:16]


@dataclasses.dataclass
class _Opened:
    """What rank 0 found when opening the folder (the other ranks get ``reuse``, ``token``)."""

    reuse: set[str] = dataclasses.field(default_factory=set)
    token: str = ""
    reused_rows: pd.DataFrame | None = None
    consumed_parts: list[Path] = dataclasses.field(default_factory=list)


def _open(
    stack: contextlib.ExitStack,
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    options: ZooRunOptions,
    root: Path,
    device: torch.device,
) -> _Opened:
    """Rank 0: lock (held by ``stack``), clean, recover, decide reuse, write the token."""
    stack.enter_context(zoo_lock(root))
    clean_stale_tmp(root)
    wanted = {mid for m in members for mid, _ in model_ids_of(m, options.snapshot_every)}
    consumed = part_files(root)
    previous = recover_zoo(root, wanted)
    reuse, rows = reusable_members(previous, members, options.snapshot_every, options.on_corrupt)
    rows = _rescore(rows, previous, members, datasets, device, options.max_stack)
    token = f"{WORLD_TOKEN_PREFIX}{secrets.token_hex(8)}"
    stack.callback(lambda: (root / token).unlink(missing_ok=True))
    atomic_write_bytes(root / token, b"weightspace: every rank of a sharded zoo run reads this\n")
    return _Opened(reuse, token, rows, consumed)


def _check_shared(root: Path, token: str, world: World) -> None:
    """Raise when this rank does not see rank 0's token file in ``root``."""
    if not (root / token).is_file():
        raise DistributedSetupError(
            f"rank {world.rank} of {world.world_size} does not see the file {token} that rank 0 "
            f"wrote in the zoo folder {root}: the zoo folder must be on a filesystem every "
            "rank (every host) sees, e.g. NFS or Lustre. Point the zoo's catalog entry at "
            "such a folder, or run on one host"
        )


class _PartWriter:
    """Write a finished stack's checkpoints, then its rows to ``parts/<stack_id>.parquet``.

    Same interface as :class:`~weightspace.zoo.folder.ZooWriter` for
    :func:`~weightspace.zoo.build._train_stacks`; never writes the index.
    """

    def __init__(self, root: Path, world: World) -> None:
        self.root, self.world = root, world

    def add(
        self, rows: list[dict], tensors: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> list[dict]:
        out = write_checkpoints(self.root, rows, tensors)
        if out:
            write_part(self.root, out)
        if _after_stack_hook is not None:
            _after_stack_hook(self.world, out)
        return out


def _train_share(
    todo: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    options: ZooRunOptions,
    root: Path,
    world: World,
) -> tuple[int, _Trained]:
    """Train this rank's share of ``todo``; returns its size and what was trained."""
    mine = shard_members(todo, task_shapes(todo, datasets), world)
    tasks = materialize_tasks(mine, datasets)
    stacks = _group_stacks(mine, tasks, options.max_stack)
    plan = ZooPlan(
        mine, set(), pd.DataFrame(columns=INDEX_COLUMNS), tasks, stacks, total_steps(stacks, tasks)
    )
    log.info(
        "rank %d of %d: training %d of %d member(s) in %d stack(s) on %s",
        world.rank, world.world_size, len(mine), len(todo), len(stacks), world.device,
    )  # fmt: skip
    if not world.is_main:  # one progress bar: rank 0's
        options = dataclasses.replace(options, progress=False)
    return len(mine), _train_stacks(plan, options, world.device, _PartWriter(root, world))


def _merge(
    members: Sequence[MemberSpec],
    opened: _Opened,
    new_rows: list[dict],
    root: Path,
    options: ZooRunOptions,
) -> pd.DataFrame:
    """Rank 0: the final index (grid order, one row per model), written; parts deleted."""
    assert opened.reused_rows is not None
    index = _assemble_index(members, opened.reused_rows, new_rows)
    if len(index) == 0:
        raise EmptyZooError("every member of the zoo was dropped; nothing to save")
    ZooWriter(root, index).write_index(index)
    stack_ids = sorted({str(r["stack_id"]) for r in new_rows})
    remove_files(root / PARTS_DIR / f"{s}.parquet" for s in stack_ids)
    with contextlib.suppress(OSError):  # empty once merged
        (root / PARTS_DIR).rmdir()
    prune_outside(root, index["model_id"].tolist(), options.prune)
    return index


def train_zoo_sharded(
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    options: ZooRunOptions,
    root: Path,
    world: World,
) -> tuple[Zoo, ZooRunReport]:
    """:func:`~weightspace.zoo.build.train_zoo` on every rank of an active ``world``.

    Called by ``train_zoo`` (which checks ``members`` and ``root``); see the module
    docstring for the steps. Every rank must call it with the same members and options.

    Returns
    -------
    (Zoo, ZooRunReport)
        The same on every rank; the zoo is rooted at ``root`` with nothing in memory.

    Raises
    ------
    ZooLockedError, ZooFolderNotWritableError, CorruptCheckpointError
        On rank 0 when opening the folder fails (the other ranks raise
        :class:`~weightspace.distributed.DistributedRunError`).
    DistributedSetupError
        If a rank does not see the zoo folder rank 0 writes (not a shared filesystem).
    DistributedRunError
        On the other ranks when a rank fails or is lost (the failing rank raises its own
        error, e.g. :class:`NonFiniteWeightsError`).
    """
    check_same(world, _fingerprint(members, options), "the zoo grid and run options")
    with contextlib.ExitStack() as stack:
        opened = _Opened()
        with world.collective("opening the zoo folder"):
            if world.is_main:
                opened = _open(stack, members, datasets, options, root, world.device)
        # The reused rows stay on rank 0 (only it writes the index): the ids suffice here.
        reuse, token = world.broadcast((opened.reuse, opened.token))
        with world.collective("checking that every rank sees the zoo folder"):
            _check_shared(root, token, world)
        todo = [m for m in members if m.member_id not in reuse]
        n_mine, trained = 0, _Trained()
        with world.collective("training the zoo"):
            if world.is_main:
                (root / token).unlink(missing_ok=True)
                assert opened.reused_rows is not None
                ZooWriter(root, opened.reused_rows).write_index(opened.reused_rows)
                remove_files(opened.consumed_parts)
            n_mine, trained = _train_share(todo, datasets, options, root, world)
        shares = world.gather((n_mine, len(trained.dropped), trained.seconds, trained.rows))
        index = None
        with world.collective("merging the zoo index"):
            if world.is_main:
                new_rows = [r for *_, rows in shares for r in rows]
                index = _merge(members, opened, new_rows, root, options)
        index = world.broadcast(index)
    n_todo = sum(s[0] for s in shares)
    n_dropped = sum(s[1] for s in shares)
    report = ZooRunReport(
        len(members), n_todo - n_dropped, len(reuse), n_dropped, max(s[2] for s in shares)
    )
    if world.is_main:
        log.info(
            "zoo (%d ranks): %d trained (%.1f models/s), %d reused, %d dropped",
            world.world_size, report.n_trained, report.models_per_second, report.n_reused,
            report.n_dropped,
        )  # fmt: skip
    return Zoo(index, root=root), report
