"""Build a zoo: resume what exists, train the rest in stacks, evaluate, index.

:func:`train_zoo` is the whole zoo job, independent of Kedro: given the members (see
:mod:`weightspace.zoo.grid`), the base datasets and optionally the zoo from a previous
run, it keeps every member whose checkpoints verify, trains the others in stacks of the
same architecture (:func:`weightspace.zoo.train.train_stack`) and returns a :class:`Zoo`
whose new checkpoints are in memory until saved.

Given its folder (``root``), the run writes through: it locks the folder, removes stale
temporary files, reopens the zoo there (rebuilding a lost index from the checkpoints,
:func:`weightspace.zoo.folder.recover_zoo`), writes each stack's checkpoints and the index
as soon as the stack is trained, and on SIGINT stops after the current stack is written.
A kill loses at most the stack in flight; the rerun retrains only unfinished stacks.

Under ``torchrun`` (``world`` active, :mod:`weightspace.distributed`) the members are split
across the ranks and each rank trains its share on its own device; see
:mod:`weightspace.zoo.sharded`. A member's weights do not depend on the number of ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import weightspace
from weightspace.data.base import SplitDataset
from weightspace.data.tasks import TaskSpec
from weightspace.device import resolve_device
from weightspace.distributed import SINGLE, World
from weightspace.errors import (
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
)
from weightspace.nets.registry import ArchSpec, build_model
from weightspace.zoo.evaluate import SPLIT_NAMES, evaluate_stack
from weightspace.zoo.folder import (
    METRIC_COLUMNS,
    ZooWriter,
    clean_stale_tmp,
    member_row,
    part_files,
    prune_outside,
    recover_zoo,
    remove_files,
    zoo_lock,
)
from weightspace.zoo.plan import ZooPlan, check_members, materialize_tasks, model_ids_of, plan_zoo
from weightspace.zoo.spec import MemberSpec
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, StackResult, train_stack
from weightspace.zoo.zoo import INDEX_COLUMNS, Zoo, checkpoint_relpath

__all__ = ["ZooRunOptions", "ZooRunReport", "materialize_tasks", "model_ids_of", "train_zoo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooRunOptions:
    """How to run the zoo job (not part of any member's identity)."""

    device: str = "auto"
    max_stack: int = 4096
    snapshot_every: int = 0
    on_corrupt: str = "error"
    on_diverge: str = "error"
    progress: bool = True
    prune: bool = False

    def __post_init__(self) -> None:
        if self.on_corrupt not in ("error", "retrain"):
            raise InvalidParameterError("on_corrupt must be 'error' or 'retrain'")
        if self.on_diverge not in ("error", "drop"):
            raise InvalidParameterError("on_diverge must be 'error' or 'drop'")
        if self.max_stack < 1 or self.snapshot_every < 0:
            raise InvalidParameterError("max_stack must be >= 1 and snapshot_every >= 0")
        if not isinstance(self.prune, bool):
            raise InvalidParameterError(f"prune must be true or false, got {self.prune!r}")


@dataclass(frozen=True)
class ZooRunReport:
    """What a zoo run did."""

    n_members: int
    n_trained: int
    n_reused: int
    n_dropped: int
    train_seconds: float

    @property
    def models_per_second(self) -> float:
        """Members trained per second of training (0 when nothing was trained)."""
        return self.n_trained / self.train_seconds if self.train_seconds > 0 else 0.0


def _rows(
    members: Sequence[MemberSpec],
    arch: ArchSpec,
    n_params: int,
    epoch_of: Sequence[int],
    model_ids: Sequence[str],
    metrics: Mapping[str, torch.Tensor],
    stack_seconds: float,
) -> list[dict]:
    """Index rows of one evaluated stack state, one per member.

    Parameters
    ----------
    members : sequence of MemberSpec
        The (finite) members, in stack order.
    arch : ArchSpec
        Their architecture.
    n_params : int
        Parameters per model.
    epoch_of, model_ids : sequence
        Epoch and checkpoint id of each row.
    metrics : mapping str -> Tensor (B,)
        ``{split}_{accuracy,nll,ece}`` of :func:`~weightspace.zoo.evaluate.evaluate_stack`.
    stack_seconds : float
        Training time of the stack.
    """
    stack_id = hashlib.sha256("".join(m.member_id for m in members).encode()).hexdigest()[:12]
    rows = []
    for i, (m, mid, epoch) in enumerate(zip(members, model_ids, epoch_of, strict=True)):
        row = member_row(m, mid, arch, epoch)
        row |= {
            "n_params": n_params,
            "path": checkpoint_relpath(mid),
            "sha256": "",
            "library_version": weightspace.__version__,
            "stack_id": stack_id,
            "stack_seconds": stack_seconds,
        }
        for split in SPLIT_NAMES:
            for metric in ("accuracy", "nll", "ece"):
                row[f"{split}_{metric}"] = float(metrics[f"{split}_{metric}"][i])
        rows.append(row)
    return rows


def _member_state(stacked: Mapping[str, torch.Tensor], i: int, steps: int, template) -> dict:
    """Member ``i`` of a stack as a full state dict (integer buffers = step count)."""
    state = {k: v[i].clone() for k, v in stacked.items()}
    for name, buf in template.named_buffers():
        if name not in state:  # integer buffers: BatchNorm's num_batches_tracked
            state[name] = torch.tensor(steps, dtype=buf.dtype)
    return state


@dataclass
class _Trained:
    """Accumulated output of the stacks: index rows, member states, dropped member ids."""

    rows: list[dict] = field(default_factory=list)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _stack_hparams(chunk: Sequence[MemberSpec]) -> StackHParams:
    """Per-member seeds and hyper-parameters of a stack, each ``(B,)``."""
    return StackHParams(
        seeds=torch.tensor([m.seed for m in chunk]),
        lr=torch.tensor([m.train.lr for m in chunk]),
        weight_decay=torch.tensor([m.train.weight_decay for m in chunk]),
        epochs=torch.tensor([m.train.epochs for m in chunk]),
        init_scale=torch.tensor([m.train.init_scale for m in chunk]),
    )


def _stack_data(
    chunk: Sequence[MemberSpec], tasks: Mapping[TaskSpec, SplitDataset], device: torch.device
) -> tuple[dict[str, TaskStack], torch.Tensor]:
    """Padded splits of the stack's distinct tasks and each member's task index ``(B,)``."""
    chunk_tasks = list(dict.fromkeys(m.task for m in chunk))
    pos = {t: i for i, t in enumerate(chunk_tasks)}
    split_stacks = {
        s: TaskStack.from_splits([tasks[t].split(s) for t in chunk_tasks], device=device)
        for s in SPLIT_NAMES
    }
    task_index = torch.tensor([pos[m.task] for m in chunk], device=device)
    return split_stacks, task_index


def _check_diverged(
    chunk: Sequence[MemberSpec], finite: Sequence[bool], options: ZooRunOptions
) -> list[str]:
    """Member ids of a stack that diverged to NaN/inf (to drop), or raise per ``on_diverge``."""
    if all(finite):
        return []
    bad = [m for m, ok in zip(chunk, finite, strict=True) if not ok]
    names = [f"{m.member_id} ({m.task.name}, lr={m.train.lr}, seed={m.seed})" for m in bad]
    if options.on_diverge == "error":
        raise NonFiniteWeightsError(
            f"{len(bad)} member(s) diverged to NaN/inf weights: {names[:5]}; lower "
            "their lr or init_scale, or set on_diverge: drop to leave them out"
        )
    log.warning("dropping %d diverged member(s): %s", len(bad), names[:5])
    return [m.member_id for m in bad]


def _collect_states(
    chunk: Sequence[MemberSpec],
    result: StackResult,
    finite: Sequence[bool],
    template: torch.nn.Module,
    snapshot_every: int,
) -> dict[str, dict[str, torch.Tensor]]:
    """State dict of every checkpoint (snapshots and final) of the finite members."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, m in enumerate(chunk):
        if not finite[i]:
            continue
        for mid, epoch in model_ids_of(m, snapshot_every):
            if epoch == m.train.epochs:
                src, steps = result.final, int(result.steps[i])
            else:
                src, steps = result.snapshots[epoch], int(result.snapshot_steps[epoch][i])
            out[mid] = _member_state(src, i, steps, template)
    return out


def _evaluate_rows(
    chunk: Sequence[MemberSpec],
    result: StackResult,
    finite: Sequence[bool],
    template: torch.nn.Module,
    arch: ArchSpec,
    data: tuple[dict[str, TaskStack], torch.Tensor],
    stack_seconds: float,
) -> list[dict]:
    """Index rows (with metrics) of the final and snapshot states of the finite members.

    ``data`` is ``(split_stacks, task_index)`` of :func:`_stack_data`; the rows of every
    checkpoint are returned, final ones first, then by snapshot epoch.
    """
    split_stacks, task_index = data
    evaluations = [(result.final, [m.train.epochs for m in chunk], [m.member_id for m in chunk])]
    for epoch, state in result.snapshots.items():
        evaluations.append(
            (state, [epoch] * len(chunk), [f"{m.member_id}-e{epoch:03d}" for m in chunk])
        )
    keep = [i for i, ok in enumerate(finite) if ok]  # diverged members are not evaluated
    if not keep:
        return []
    kept = [chunk[i] for i in keep]
    keep_t = torch.tensor(keep, dtype=torch.long)
    n_params = sum(p.numel() for p in template.parameters())
    rows: list[dict] = []
    for state, epochs, mids in evaluations:
        sub = {k: v[keep_t] for k, v in state.items()}
        metrics = evaluate_stack(
            template, sub, task_index[keep_t.to(task_index.device)], split_stacks
        )
        rows += _rows(
            kept, arch, n_params, [epochs[i] for i in keep], [mids[i] for i in keep],
            metrics, stack_seconds,
        )  # fmt: skip
    return rows


def _train_one_stack(
    arch: ArchSpec,
    chunk: list[MemberSpec],
    plan: ZooPlan,
    options: ZooRunOptions,
    device: torch.device,
    progress: Callable[[int], object],
    out: _Trained,
) -> None:
    """Train one stack, then add its checkpoints, index rows and dropped ids to ``out``."""
    stack_start = time.perf_counter()
    template = build_model(arch.name, arch.config, arch.input_shape, arch.n_classes).to(device)
    split_stacks, task_index = _stack_data(chunk, plan.tasks, device)
    every, max_epochs = options.snapshot_every, max(m.train.epochs for m in chunk)
    first = chunk[0].train
    result = train_stack(
        template, _stack_hparams(chunk), task_index, split_stacks["train"], first.batch_size,
        optimizer=first.optimizer, momentum=first.momentum,
        snapshot_epochs=range(every, 1 + max_epochs, every) if every else (), progress=progress,
    )  # fmt: skip
    finite = result.finite.tolist()
    out.dropped += _check_diverged(chunk, finite, options)
    out.tensors.update(_collect_states(chunk, result, finite, template, every))
    stack_seconds = time.perf_counter() - stack_start  # result is on the CPU: synced
    rows = _evaluate_rows(
        chunk, result, finite, template, arch, (split_stacks, task_index), stack_seconds
    )
    out.rows += [r for r in rows if r["model_id"] in out.tensors]


@contextlib.contextmanager
def _sigint_after_stack(enabled: bool) -> Iterator[dict[str, bool]]:
    """Defer SIGINT to the end of the current stack: yields a flag set by Ctrl-C (a second
    Ctrl-C interrupts at once). A no-op off the main thread or when not ``enabled``."""
    flag = {"hit": False}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        log.warning(
            "interrupt: the zoo stops once the current stack is trained and written "
            "(interrupt again to stop at once, losing that stack)"
        )

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _train_stacks(
    plan: ZooPlan, options: ZooRunOptions, device: torch.device, writer: ZooWriter | None = None
) -> _Trained:
    """Train every stack of the plan, with one progress bar over all their steps.

    With a ``writer``, each stack's checkpoints and the index are written as soon as the
    stack is trained (states are not kept in memory), and SIGINT stops after that.
    """
    out = _Trained()
    start = time.perf_counter()
    bar = tqdm(
        total=plan.total_steps,
        desc=f"zoo: {len(plan.todo)} models",
        unit="step",
        disable=not options.progress or not plan.todo,
        mininterval=2.0,
    )
    with _sigint_after_stack(writer is not None) as interrupted:
        for k, (arch, chunk) in enumerate(plan.stacks):
            n_rows = len(out.rows)
            _train_one_stack(arch, chunk, plan, options, device, bar.update, out)
            if writer is not None:
                out.rows[n_rows:] = writer.add(out.rows[n_rows:], out.tensors)
                out.tensors.clear()
            if interrupted["hit"]:
                bar.close()
                log.warning(
                    "zoo interrupted after %d of %d stacks; their checkpoints are saved, the "
                    "next run trains the rest",
                    k + 1,
                    len(plan.stacks),
                )
                raise KeyboardInterrupt(f"zoo interrupted after stack {k + 1}/{len(plan.stacks)}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out.seconds = time.perf_counter() - start if plan.todo else 0.0
    return out


def _rescore(
    rows: pd.DataFrame,
    zoo: Zoo,
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    device: torch.device,
    max_stack: int,
) -> pd.DataFrame:
    """Fill the NaN metrics of reused rows (rebuilt from checkpoints) by evaluating them."""
    need = rows[rows["test_accuracy"].isna()] if len(rows) else rows
    if need.empty:
        return rows
    rows = rows.copy()
    by_id = {m.member_id: m for m in members}
    tasks = materialize_tasks([by_id[m] for m in need["member_id"]], datasets)
    for arch_key, group in need.groupby("arch_key", sort=False):
        template = ArchSpec.from_dict(json.loads(arch_key)).build().to(device)
        for lo in range(0, len(group), max_stack):
            part = group.iloc[lo : lo + max_stack]
            chunk = [by_id[m] for m in part["member_id"]]
            split_stacks, task_index = _stack_data(chunk, tasks, device)
            stacked = {k: v.to(device) for k, v in zoo.stack(part["model_id"]).items()}
            metrics = evaluate_stack(template, stacked, task_index, split_stacks)
            for col in METRIC_COLUMNS:
                rows.loc[part.index, col] = metrics[col].numpy()
    log.info("re-scored %d checkpoint(s) rebuilt from their files", len(need))
    return rows


def _assemble_index(
    members: Sequence[MemberSpec], reused_rows: pd.DataFrame, new_rows: list[dict]
) -> pd.DataFrame:
    """Reused and new index rows, ordered by member (as listed) then epoch; a model listed
    twice keeps its last (newest) row."""
    index = pd.concat(
        [reused_rows, pd.DataFrame(new_rows, columns=INDEX_COLUMNS)], ignore_index=True
    )
    index = index.drop_duplicates("model_id", keep="last")
    order = {m.member_id: i for i, m in enumerate(members)}
    index = index.assign(_o=index["member_id"].map(order), _e=index["epoch"]).sort_values(
        ["_o", "_e"]
    )
    return index.drop(columns=["_o", "_e"]).reset_index(drop=True)


def train_zoo(
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    previous: Zoo | None = None,
    options: ZooRunOptions | None = None,
    root: str | os.PathLike | None = None,
    world: World = SINGLE,
) -> tuple[Zoo, ZooRunReport]:
    """Train (or reuse) every member and return the zoo with its index.

    Parameters
    ----------
    members : sequence of MemberSpec
        The grid (:func:`weightspace.zoo.grid.expand_grid`).
    datasets : mapping name -> SplitDataset
        Base datasets the members' tasks are made from.
    previous : Zoo, optional
        The zoo of an earlier run: members whose checkpoints verify are not retrained.
        With ``root``, it must be rooted there (or absent): the zoo is reopened from disk
        under the lock.
    options : ZooRunOptions, optional
    root : path, optional
        The zoo folder to write through (see the module docstring). Without it the new
        checkpoints stay in memory until :meth:`Zoo.save`. Required in a sharded run.
    world : World, optional
        The processes of a ``torchrun`` launch (:func:`weightspace.distributed.current_world`);
        when active, every rank calls ``train_zoo`` with the same arguments, trains its
        share of the members on ``world.device`` (which overrides ``options.device``) and
        rank 0 merges the index (:mod:`weightspace.zoo.sharded`).

    Returns
    -------
    (Zoo, ZooRunReport)
        With ``root``, the zoo holds the current grid's members, all saved under ``root``
        (on every rank of a sharded run; the report counts all ranks' members).

    Raises
    ------
    InvalidParameterError
        If ``world`` is active and ``root`` is not given.
    DistributedRunError
        On the other ranks of a sharded run when one rank fails (or is lost); the
        failing rank raises its own error.
    ZooLockedError
        If another run is writing ``root``.
    ZooFolderNotWritableError
        If ``root`` cannot be written.
    CorruptCheckpointError
        If a checkpoint to reuse is corrupt (sha256, unreadable, NaN/inf) and
        ``options.on_corrupt == "error"``.
    KeyboardInterrupt
        On SIGINT, once the current stack is written (with ``root``).
    """
    options = options or ZooRunOptions()
    check_members(members)
    if world.active and root is None:
        raise InvalidParameterError(
            f"train_zoo: a sharded run ({world.world_size} processes) writes through its zoo "
            "folder, but root is None; pass root= (a folder every rank can read and write)"
        )
    device = world.device if world.active else resolve_device(options.device)
    if root is None:
        return _run(members, datasets, previous, options, device, None)
    root = Path(root)
    if (
        previous is not None
        and previous.root is not None
        and previous.root.resolve() != (root.resolve())
    ):
        raise InvalidParameterError(
            f"train_zoo: previous zoo is rooted at {previous.root}, not at root={root}; "
            "pass the zoo of that folder (or none)"
        )
    if world.active:
        from weightspace.zoo.sharded import train_zoo_sharded  # imports this module

        return train_zoo_sharded(members, datasets, options, root, world)
    with zoo_lock(root):
        clean_stale_tmp(root)
        wanted = {mid for m in members for mid, _ in model_ids_of(m, options.snapshot_every)}
        parts = part_files(root)  # adopted by recover_zoo, deleted once indexed
        previous = recover_zoo(root, wanted)
        return _run(members, datasets, previous, options, device, root, parts)


def _run(
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    previous: Zoo | None,
    options: ZooRunOptions,
    device: torch.device,
    root: Path | None,
    consumed_parts: Sequence[Path] = (),
) -> tuple[Zoo, ZooRunReport]:
    """:func:`train_zoo` after the folder is locked and reopened (``root``) or in memory.

    ``consumed_parts``: part files :func:`recover_zoo` read, deleted once the index that
    includes their rows is written.
    """
    plan = plan_zoo(
        members,
        datasets,
        previous,
        snapshot_every=options.snapshot_every,
        on_corrupt=options.on_corrupt,
        max_stack=options.max_stack,
    )
    reused_rows = plan.reused_rows
    writer = None
    if root is not None:
        assert previous is not None
        reused_rows = _rescore(reused_rows, previous, members, datasets, device, options.max_stack)
        writer = ZooWriter(root, reused_rows)
        writer.write_index(reused_rows)
        remove_files(consumed_parts)
    trained = _train_stacks(plan, options, device, writer)
    index = _assemble_index(members, reused_rows, trained.rows)
    if len(index) == 0:
        raise EmptyZooError("every member of the zoo was dropped; nothing to save")
    if writer is not None:
        writer.write_index(index)
        prune_outside(root, index["model_id"].tolist(), options.prune)
    zoo = Zoo(index, root=root or (previous.root if previous else None), tensors=trained.tensors)
    n_todo, n_dropped = len(plan.todo), len(trained.dropped)
    report = ZooRunReport(
        len(members), n_todo - n_dropped, len(plan.reuse), n_dropped, trained.seconds
    )
    log.info(
        "zoo: %d trained (%.1f models/s), %d reused, %d dropped",
        report.n_trained,
        report.models_per_second,
        report.n_reused,
        report.n_dropped,
    )
    return zoo, report
