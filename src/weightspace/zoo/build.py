"""Build a zoo: resume what exists, train the rest in stacks, evaluate, index.

:func:`train_zoo` is the whole zoo job, independent of Kedro: given the members (see
:mod:`weightspace.zoo.grid`), the base datasets and optionally the zoo from a previous
run, it keeps every member whose checkpoints verify, trains the others in stacks of the
same architecture (:func:`weightspace.zoo.train.train_stack`) and returns a :class:`Zoo`
whose new checkpoints are in memory until saved.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

import weightspace
from weightspace.data.base import SplitDataset
from weightspace.data.tasks import TaskSpec, make_task
from weightspace.device import resolve_device
from weightspace.errors import (
    CorruptCheckpointError,
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    UnknownDatasetError,
)
from weightspace.nets.registry import ArchSpec, build_model
from weightspace.zoo.evaluate import SPLIT_NAMES, evaluate_stack
from weightspace.zoo.spec import MemberSpec, canonical_json
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, train_stack
from weightspace.zoo.zoo import INDEX_COLUMNS, Zoo, checkpoint_relpath

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

    def __post_init__(self) -> None:
        if self.on_corrupt not in ("error", "retrain"):
            raise InvalidParameterError("on_corrupt must be 'error' or 'retrain'")
        if self.on_diverge not in ("error", "drop"):
            raise InvalidParameterError("on_diverge must be 'error' or 'drop'")
        if self.max_stack < 1 or self.snapshot_every < 0:
            raise InvalidParameterError("max_stack must be >= 1 and snapshot_every >= 0")


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


def model_ids_of(member: MemberSpec, snapshot_every: int) -> list[tuple[str, int]]:
    """(model_id, epoch) of every checkpoint a member produces, the final one last."""
    mid, epochs = member.member_id, member.train.epochs
    snaps = [e for e in range(snapshot_every, epochs, snapshot_every)] if snapshot_every else []
    return [(f"{mid}-e{e:03d}", e) for e in snaps] + [(mid, epochs)]


def materialize_tasks(
    members: Sequence[MemberSpec], datasets: Mapping[str, SplitDataset]
) -> dict[TaskSpec, SplitDataset]:
    """The dataset of every distinct task of the members."""
    out: dict[TaskSpec, SplitDataset] = {}
    for m in members:
        if m.task in out:
            continue
        if m.task.dataset not in datasets:
            raise UnknownDatasetError(
                f"member task {m.task.name!r} needs dataset {m.task.dataset!r}, which was not "
                f"loaded (loaded: {sorted(datasets)}); add it to the zoo's data section"
            )
        out[m.task] = make_task(datasets[m.task.dataset], m.task)
    return out


def _reusable(
    previous: Zoo | None, members: Sequence[MemberSpec], options: ZooRunOptions
) -> tuple[set[str], pd.DataFrame]:
    """Members whose every checkpoint exists and verifies in ``previous``."""
    if previous is None or len(previous) == 0:
        return set(), pd.DataFrame(columns=INDEX_COLUMNS)
    known = set(previous.model_ids)
    candidates = [
        m
        for m in members
        if all(mid in known for mid, _ in model_ids_of(m, options.snapshot_every))
    ]
    wanted = {mid for m in candidates for mid, _ in model_ids_of(m, options.snapshot_every)}
    sub = previous.select(previous.index["model_id"].isin(wanted))
    missing, corrupt = sub.verify()
    if corrupt and options.on_corrupt == "error":
        paths = [str(sub.file_path(c)) for c in corrupt]
        raise CorruptCheckpointError(
            f"{len(corrupt)} checkpoint(s) do not match their recorded sha256: {paths[:10]}. "
            "Delete them to retrain those models, or set on_corrupt: retrain"
        )
    for c in corrupt:
        log.warning("checkpoint %s is corrupt (sha256 mismatch): retraining", sub.file_path(c))
    for m in missing:
        log.info("checkpoint of %s is missing: retraining", m)
    bad = set(missing) | set(corrupt)
    reuse = {
        m.member_id
        for m in candidates
        if not any(mid in bad for mid, _ in model_ids_of(m, options.snapshot_every))
    }
    keep_ids = {
        mid
        for m in candidates
        if m.member_id in reuse
        for mid, _ in model_ids_of(m, options.snapshot_every)
    }
    rows = previous.index[previous.index["model_id"].isin(keep_ids)]
    return reuse, rows


def _rows(
    members: Sequence[MemberSpec],
    arch: ArchSpec,
    n_params: int,
    epoch_of: Sequence[int],
    model_ids: Sequence[str],
    metrics: Mapping[str, torch.Tensor],
    stack_seconds: float,
) -> list[dict]:
    stack_id = hashlib.sha256("".join(m.member_id for m in members).encode()).hexdigest()[:12]
    rows = []
    for i, (m, mid, epoch) in enumerate(zip(members, model_ids, epoch_of, strict=True)):
        row = {
            "model_id": mid,
            "member_id": m.member_id,
            "arch": m.arch,
            "arch_config": canonical_json(dict(m.arch_config)),
            "arch_key": arch.key,
            "input_shape": canonical_json(list(arch.input_shape)),
            "n_classes": arch.n_classes,
            "dataset": m.task.dataset,
            "task": m.task.name,
            "task_spec": canonical_json(m.task.to_dict()),
            "seed": m.seed,
            "data_seed": m.data_seed,
            "hparams": canonical_json(m.train.to_dict()),
            "lr": m.train.lr,
            "weight_decay": m.train.weight_decay,
            "init_scale": m.train.init_scale,
            "epoch": int(epoch),
            "epochs": m.train.epochs,
            "is_final": int(epoch) == m.train.epochs,
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


def train_zoo(
    members: Sequence[MemberSpec],
    datasets: Mapping[str, SplitDataset],
    previous: Zoo | None = None,
    options: ZooRunOptions | None = None,
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
    options : ZooRunOptions, optional

    Returns
    -------
    (Zoo, ZooRunReport)
    """
    options = options or ZooRunOptions()
    if not members:
        raise EmptyZooError("the zoo grid produced no members; check tasks/architectures/seeds")
    ids = [m.member_id for m in members]
    if len(set(ids)) != len(ids):
        raise InvalidParameterError("the zoo grid lists the same member twice; remove duplicates")
    device = resolve_device(options.device)
    reuse, reused_rows = _reusable(previous, members, options)
    todo = [m for m in members if m.member_id not in reuse]
    tasks = materialize_tasks(todo, datasets)

    groups: dict[tuple, list[MemberSpec]] = defaultdict(list)
    archs: dict[tuple, ArchSpec] = {}
    for m in todo:
        ds = tasks[m.task]
        arch = ArchSpec(m.arch, dict(m.arch_config), ds.input_shape, ds.n_classes)
        key = (arch.key, *m.stack_key())
        groups[key].append(m)
        archs[key] = arch

    stacks = [
        (key, group[i : i + options.max_stack])
        for key, group in groups.items()
        for i in range(0, len(group), options.max_stack)
    ]
    total_steps = 0
    for _key, chunk in stacks:
        n_max = max(len(tasks[m.task].train) for m in chunk)
        steps_per_epoch = math.ceil(n_max / chunk[0].train.batch_size)
        total_steps += steps_per_epoch * max(m.train.epochs for m in chunk)

    new_rows: list[dict] = []
    new_tensors: dict[str, dict[str, torch.Tensor]] = {}
    dropped: list[str] = []
    start = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        desc=f"zoo: {len(todo)} models",
        unit="step",
        disable=not options.progress or not todo,
        mininterval=2.0,
    )
    for key, chunk in stacks:
        stack_start = time.perf_counter()
        arch = archs[key]
        template = build_model(arch.name, arch.config, arch.input_shape, arch.n_classes).to(device)
        chunk_tasks = list(dict.fromkeys(m.task for m in chunk))
        pos = {t: i for i, t in enumerate(chunk_tasks)}
        split_stacks = {
            s: TaskStack.from_splits([tasks[t].split(s) for t in chunk_tasks], device=device)
            for s in SPLIT_NAMES
        }
        task_index = torch.tensor([pos[m.task] for m in chunk], device=device)
        hp = StackHParams(
            seeds=torch.tensor([m.seed for m in chunk]),
            lr=torch.tensor([m.train.lr for m in chunk]),
            weight_decay=torch.tensor([m.train.weight_decay for m in chunk]),
            epochs=torch.tensor([m.train.epochs for m in chunk]),
            init_scale=torch.tensor([m.train.init_scale for m in chunk]),
        )
        snapshot_epochs = (
            range(
                options.snapshot_every,
                1 + max(m.train.epochs for m in chunk),
                options.snapshot_every,
            )
            if options.snapshot_every
            else ()
        )
        first = chunk[0].train
        result = train_stack(
            template, hp, task_index, split_stacks["train"], first.batch_size,
            optimizer=first.optimizer, momentum=first.momentum,
            snapshot_epochs=snapshot_epochs, progress=bar.update,
        )  # fmt: skip
        finite = result.finite.tolist()
        if not all(finite):
            bad = [m for m, ok in zip(chunk, finite, strict=True) if not ok]
            names = [f"{m.member_id} ({m.task.name}, lr={m.train.lr}, seed={m.seed})" for m in bad]
            if options.on_diverge == "error":
                raise NonFiniteWeightsError(
                    f"{len(bad)} member(s) diverged to NaN/inf weights: {names[:5]}; lower "
                    "their lr or init_scale, or set on_diverge: drop to leave them out"
                )
            log.warning("dropping %d diverged member(s): %s", len(bad), names[:5])
            dropped += [m.member_id for m in bad]
        n_params = sum(p.numel() for p in template.parameters())
        snaps = result.snapshots
        for i, m in enumerate(chunk):
            if not finite[i]:
                continue
            for mid, epoch in model_ids_of(m, options.snapshot_every):
                if epoch == m.train.epochs:
                    src, steps = result.final, int(result.steps[i])
                else:
                    src, steps = snaps[epoch], int(result.snapshot_steps[epoch][i])
                new_tensors[mid] = _member_state(src, i, steps, template)
        stack_seconds = time.perf_counter() - stack_start  # result is on the CPU: synced
        evaluations = [
            (result.final, [m.train.epochs for m in chunk], [m.member_id for m in chunk])
        ]
        for epoch, state in snaps.items():
            evaluations.append(
                (state, [epoch] * len(chunk), [f"{m.member_id}-e{epoch:03d}" for m in chunk])
            )
        keep = [i for i, ok in enumerate(finite) if ok]  # diverged members are not evaluated
        kept = [chunk[i] for i in keep]
        keep_t = torch.tensor(keep, dtype=torch.long)
        for state, epochs, mids in evaluations:
            if not keep:
                break
            sub = {k: v[keep_t] for k, v in state.items()}
            metrics = evaluate_stack(template, sub, task_index[keep_t.to(device)], split_stacks)
            rows = _rows(
                kept, arch, n_params, [epochs[i] for i in keep], [mids[i] for i in keep],
                metrics, stack_seconds,
            )  # fmt: skip
            new_rows += [r for r in rows if r["model_id"] in new_tensors]
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start if todo else 0.0

    index = pd.concat(
        [reused_rows, pd.DataFrame(new_rows, columns=INDEX_COLUMNS)], ignore_index=True
    )
    order = {mid: i for i, mid in enumerate(ids)}
    index = index.assign(_o=index["member_id"].map(order), _e=index["epoch"]).sort_values(
        ["_o", "_e"]
    )
    index = index.drop(columns=["_o", "_e"]).reset_index(drop=True)
    root = previous.root if previous is not None else None
    zoo = Zoo(index, root=root, tensors=new_tensors)
    if len(zoo) == 0:
        raise EmptyZooError("every member of the zoo was dropped; nothing to save")
    report = ZooRunReport(len(members), len(todo) - len(dropped), len(reuse), len(dropped), seconds)
    log.info(
        "zoo: %d trained (%.1f models/s), %d reused, %d dropped",
        report.n_trained,
        report.models_per_second,
        report.n_reused,
        report.n_dropped,
    )
    return zoo, report
