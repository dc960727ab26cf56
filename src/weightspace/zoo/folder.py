"""The zoo folder on disk while a run writes it: lock, stale temp files, recovery, write-through.

A zoo run that is given its folder (``train_zoo(..., root=...)``) holds an exclusive lock
on ``root/.lock`` (:func:`zoo_lock`; the pid of the holder is written into it, and the OS
releases it when the process dies, so a killed run never blocks the next), removes the
temporary files a killed save left behind (:func:`clean_stale_tmp`), reopens the zoo
(:func:`recover_zoo`: a missing or unreadable ``index.parquet`` is rebuilt from the
checkpoints, which carry their member in their metadata; checkpoints written after the
last index write are adopted) and writes every stack as soon as it is trained
(:class:`ZooWriter`). A kill therefore loses at most the stack in flight.

A sharded run (:mod:`weightspace.zoo.sharded`) does not let its ranks write the index:
each rank writes a stack's checkpoints, then that stack's index rows to a part file
``root/parts/<stack_id>.parquet`` (:func:`write_part`), and rank 0 merges them at the end.
Part files a killed run left behind are adopted by :func:`recover_zoo` (rows whose
checkpoint exists and matches their sha256 keep their metrics), whatever the number of
processes of the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from weightspace.atomic import atomic_path, sha256_file
from weightspace.errors import (  # noqa: F401 (re-exported)
    CorruptCheckpointError,
    NonFiniteWeightsError,
    WeightspaceError,
    ZooFolderNotWritableError,
    ZooLockedError,
)
from weightspace.nets.registry import ArchSpec
from weightspace.zoo import checkpoint
from weightspace.zoo.spec import MemberSpec, canonical_json
from weightspace.zoo.zoo import (
    CHECKPOINT_DIR,
    INDEX_COLUMNS,
    INDEX_FILE,
    Zoo,
    _member_json,
    checkpoint_relpath,
    prune_outside,
)

__all__ = [
    "LOCK_FILE",
    "PARTS_DIR",
    "WORLD_TOKEN_PREFIX",
    "ZooFolderNotWritableError",
    "ZooLockedError",
    "ZooWriter",
    "clean_stale_tmp",
    "part_files",
    "prune_outside",
    "recover_zoo",
    "remove_files",
    "write_checkpoints",
    "write_part",
    "zoo_lock",
]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
WRITE_THREADS = 8
"""Checkpoint files written at once (each atomically): their fsyncs overlap."""
#: Folder of the per-stack index rows of a sharded run (merged into the index by rank 0).
PARTS_DIR = "parts"
#: Prefix of the file rank 0 of a sharded run writes to check every rank sees the folder.
WORLD_TOKEN_PREFIX = ".world-"
METRIC_COLUMNS = [c for c in INDEX_COLUMNS if c.endswith(("_accuracy", "_nll", "_ece"))]


# ---- lock ---------------------------------------------------------------------------------


def _not_writable(root: Path, exc: OSError) -> ZooFolderNotWritableError:
    return ZooFolderNotWritableError(
        f"zoo folder {os.fspath(root)!r} is not writable by this process (uid {os.getuid()}): "
        f"{exc.strerror or exc}. Make the folder writable (chown/chmod) or point the zoo's "
        "catalog entry at a folder you can write; nothing in it was changed"
    )


def _check_writable(root: Path) -> None:
    """Create and remove a probe file in ``root`` and ``root/checkpoints``."""
    for folder in (root, root / CHECKPOINT_DIR):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _not_writable(folder, exc) from exc


@contextlib.contextmanager
def zoo_lock(root: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``root/.lock`` (and check ``root`` is
    writable).

    Raises
    ------
    ZooLockedError
        At once, if another process holds the lock (the message names it).
    ZooFolderNotWritableError
        If the folder (or its ``checkpoints/``) cannot be written.
    """
    root = Path(root)
    path = root / LOCK_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _not_writable(root, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown process"
            raise ZooLockedError(
                f"zoo folder {os.fspath(root)!r} is being written by another run ({holder}); "
                "wait for it to finish or stop it, or give this run another zoo folder. "
                f"(lock file: {os.fspath(path)})"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        _check_writable(root)
        yield root
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def clean_stale_tmp(root: str | os.PathLike) -> list[Path]:
    """Remove temporary files (``.*.tmp``) a killed save left in the zoo folder (and in
    ``checkpoints/`` and ``parts/``), and the shared-folder tokens of killed sharded runs.

    Call only while holding :func:`zoo_lock` (a live writer's files look the same).
    """
    root = Path(root)
    stale = sorted(
        [
            *root.glob(".*.tmp"),
            *(root / CHECKPOINT_DIR).glob(".*.tmp"),
            *(root / PARTS_DIR).glob(".*.tmp"),
            *root.glob(f"{WORLD_TOKEN_PREFIX}*"),
        ]
    )
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        log.warning(
            "removed %d stale temporary file(s) left by an interrupted zoo run in %s: %s",
            len(stale),
            root,
            [f.name for f in stale],
        )
    return stale


# ---- recovery -----------------------------------------------------------------------------


def member_row(member: MemberSpec, model_id: str, arch: ArchSpec, epoch: int) -> dict:
    """The index columns that describe a member's checkpoint (what, not how it scored).

    Parameters
    ----------
    member : MemberSpec
    model_id : str
        Checkpoint id (``member_id``, or ``member_id-eNNN`` for a snapshot).
    arch : ArchSpec
        The member's architecture.
    epoch : int
        Epoch of the checkpoint.

    Returns
    -------
    dict
        ``model_id`` ... ``is_final`` of :data:`~weightspace.zoo.zoo.INDEX_COLUMNS`.
    """
    return {
        "model_id": model_id,
        "member_id": member.member_id,
        "arch": member.arch,
        "arch_config": canonical_json(dict(member.arch_config)),
        "arch_key": arch.key,
        "input_shape": canonical_json(list(arch.input_shape)),
        "n_classes": arch.n_classes,
        "dataset": member.task.dataset,
        "task": member.task.name,
        "task_spec": canonical_json(member.task.to_dict()),
        "seed": member.seed,
        "data_seed": member.data_seed,
        "hparams": canonical_json(member.train.to_dict()),
        "lr": member.train.lr,
        "weight_decay": member.train.weight_decay,
        "init_scale": member.train.init_scale,
        "epoch": int(epoch),
        "epochs": member.train.epochs,
        "is_final": int(epoch) == member.train.epochs,
    }


def _row_from_checkpoint(path: Path, rel: str) -> dict:
    """Index row of a checkpoint file from its metadata (metrics are NaN: unknown).

    Raises
    ------
    CorruptCheckpointError
        If the file cannot be parsed, holds NaN/inf, or its metadata names another model.
    """
    try:
        ckpt = checkpoint.read(path)
    except NonFiniteWeightsError as exc:
        raise CorruptCheckpointError(str(exc)) from exc
    meta = ckpt.metadata
    try:
        member = MemberSpec.from_dict(json.loads(meta["member"]))
        epoch = int(meta["epoch"])
        model_id = str(meta["model_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpointError(f"checkpoint {path} lacks zoo metadata ({exc})") from exc
    final = epoch == member.train.epochs
    expected = member.member_id if final else f"{member.member_id}-e{epoch:03d}"
    if model_id != path.stem or model_id != expected:
        raise CorruptCheckpointError(
            f"checkpoint {path} holds model {model_id!r} of member {member.member_id}: "
            "it was copied under another model's name"
        )
    arch = ckpt.arch
    row = member_row(member, model_id, arch, epoch)
    row.update(
        {
            "n_params": sum(p.numel() for p in arch.build().parameters()),
            "path": rel,
            "sha256": sha256_file(path),
            "library_version": meta.get("library_version", ""),
            "stack_id": "",
            "stack_seconds": math.nan,
        }
    )
    row.update({c: math.nan for c in METRIC_COLUMNS})
    return row


def _read_index(root: Path) -> pd.DataFrame | None:
    """The saved index, or None (logged) when it is missing or unreadable."""
    path = root / INDEX_FILE
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # any parquet/arrow error: unreadable
        log.warning(
            "zoo index %s is unreadable (%s): rebuilding it from the checkpoints", path, exc
        )
        return None


def part_files(root: str | os.PathLike) -> list[Path]:
    """The part files (``parts/*.parquet``) of sharded runs in ``root``, sorted by name."""
    return sorted((Path(root) / PARTS_DIR).glob("*.parquet"))


def _read_parts(root: Path) -> list[tuple[Path, pd.DataFrame]]:
    """Readable part files with every index column, newest first (unreadable: warned)."""
    out, bad = [], []
    for f in part_files(root):
        try:
            rows = pd.read_parquet(f)
            mtime = f.stat().st_mtime_ns
        except Exception as exc:  # any parquet/arrow/OS error: unusable
            bad.append(f"{f.name} ({type(exc).__name__}: {exc})")
            continue
        missing = [c for c in INDEX_COLUMNS if c not in rows.columns]
        if missing:
            bad.append(f"{f.name} (lacks columns {missing[:5]})")
            continue
        out.append((mtime, f, rows[INDEX_COLUMNS]))
    if bad:
        log.warning(
            "ignored %d unreadable part file(s) of an interrupted sharded zoo run in %s "
            "(their checkpoints are adopted from their metadata or retrained): %s",
            len(bad),
            root / PARTS_DIR,
            bad[:10],
        )
    out.sort(key=lambda t: (t[0], t[1].name), reverse=True)
    return [(f, rows) for _, f, rows in out]


def _adopt_parts(
    root: Path, index: pd.DataFrame, wanted: Collection[str] | None
) -> tuple[pd.DataFrame, list[dict]]:
    """Index rows of the part files whose checkpoint exists and matches their sha256.

    Returns the index without the rows the parts replace (a listed model whose file now
    matches a newer part row instead of the index) and the adopted rows (with metrics).
    Among part rows of one model, the newest file's matching row wins.
    """
    listed = dict(zip(index["model_id"], index["sha256"], strict=True)) if len(index) else {}
    candidates: dict[str, list[dict]] = {}
    for _, rows in _read_parts(root):
        for row in rows.to_dict("records"):
            mid = str(row["model_id"])
            if wanted is None or mid in wanted:
                candidates.setdefault(mid, []).append(row)
    adopted, replaced, ignored = [], set(), []
    for mid, rows in candidates.items():
        if any(listed.get(mid) == r["sha256"] for r in rows):
            continue  # already indexed (the part was merged before the run stopped)
        try:
            sha = sha256_file(root / checkpoint_relpath(mid))
        except OSError:
            ignored.append(f"{mid} (checkpoint missing)")
            continue
        match = [r for r in rows if r["sha256"] == sha and r["path"] == checkpoint_relpath(mid)]
        if not match:
            ignored.append(f"{mid} (sha256 differs from its checkpoint)")
            continue
        adopted.append(match[0])
        if mid in listed:
            replaced.add(mid)
    if ignored:
        log.warning(
            "ignored %d row(s) of part files in %s that do not match their checkpoint (the "
            "checkpoint is adopted from its metadata, or the model retrained): %s",
            len(ignored),
            root / PARTS_DIR,
            ignored[:10],
        )
    if adopted:
        log.warning(
            "adopted %d model(s) of %s from the part files of an interrupted sharded run: %s",
            len(adopted),
            root,
            [r["model_id"] for r in adopted][:10],
        )
    if replaced:
        index = index[~index["model_id"].isin(replaced)]
    return index, adopted


def recover_zoo(root: str | os.PathLike, wanted: Collection[str] | None = None) -> Zoo:
    """Open the zoo in ``root``, rebuilding what a crash or a deleted index lost.

    The saved index is read when it exists and is readable. Rows of the part files that
    sharded runs left in ``root/parts/`` (:func:`write_part`) are adopted next, with their
    metrics, when their model is not listed, their checkpoint exists and its sha256 matches
    (unreadable or mismatching rows are ignored with a warning). Checkpoint files listed by
    neither (written after the last index write, or all of them when the index is gone) are
    adopted from their metadata. Only model ids in ``wanted`` are adopted (every one when
    ``None``). Rows adopted from metadata have NaN metrics (``train_zoo`` re-scores them).
    Files that cannot be parsed, hold NaN/inf or carry another model's metadata are
    skipped with a warning (they stay on disk; a member needing them is retrained). Part
    files are only read: the caller deletes them once an index including them is written.

    Parameters
    ----------
    root : path
        The zoo folder.
    wanted : collection of str, optional
        Model ids worth adopting (the current grid's).

    Returns
    -------
    Zoo
        Rooted at ``root``, nothing in memory.
    """
    root = Path(root)
    index = _read_index(root)
    if index is None:
        index = pd.DataFrame({c: [] for c in INDEX_COLUMNS})
        lost = True
    else:
        lost = False
    index, from_parts = _adopt_parts(root, index, wanted)
    listed = set(index["model_id"]) if "model_id" in index.columns else set()
    listed |= {r["model_id"] for r in from_parts}
    files = sorted((root / CHECKPOINT_DIR).glob("*.safetensors"))
    todo = [f for f in files if f.stem not in listed and (wanted is None or f.stem in wanted)]
    rows, skipped = [], []
    for f in todo:
        try:
            rows.append(_row_from_checkpoint(f, checkpoint_relpath(f.stem)))
        except (CorruptCheckpointError, OSError) as exc:
            skipped.append(f"{f.name} ({exc})")
    if lost and files:
        log.warning(
            "zoo index %s is missing: rebuilt %d row(s) from the checkpoints in %s",
            root / INDEX_FILE,
            len(rows) + len(from_parts),
            root / CHECKPOINT_DIR,
        )
    elif rows:
        log.warning(
            "adopted %d checkpoint(s) of %s that its index did not list (a run stopped "
            "before writing it): %s",
            len(rows),
            root,
            [r["model_id"] for r in rows][:10],
        )
    if skipped:
        log.warning("skipped %d unusable checkpoint file(s): %s", len(skipped), skipped[:10])
    if from_parts or rows:
        new = pd.DataFrame(from_parts + rows, columns=INDEX_COLUMNS)
        index = pd.concat([index, new], ignore_index=True)
    return Zoo(index, root=root)


# ---- writing ------------------------------------------------------------------------------


def _write_index(root: Path, index: pd.DataFrame) -> None:
    with atomic_path(root / INDEX_FILE) as tmp:
        index.to_parquet(tmp, index=False)


def write_checkpoints(
    root: str | os.PathLike,
    rows: Iterable[dict],
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
) -> list[dict]:
    """Write the checkpoint of every row (state in ``tensors``) atomically under ``root``.

    Returns the rows with ``path`` and ``sha256`` filled in.
    """
    root = Path(root)
    out, jobs = [], []
    archs: dict[str, ArchSpec] = {}
    for row in rows:
        mid = row["model_id"]
        row = {**row, "path": checkpoint_relpath(mid)}
        meta = {"model_id": mid, "member": _member_json(row), "epoch": row["epoch"]}
        key = row["arch_key"]
        if key not in archs:
            archs[key] = ArchSpec.from_dict(json.loads(key))
        jobs.append((root / row["path"], tensors[mid], archs[key], meta))
        out.append(row)
    if len(jobs) < 2 * WRITE_THREADS:
        hashes = [checkpoint.write(*job) for job in jobs]
    else:  # each file is its own atomic write; threads overlap their fsyncs
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            hashes = list(pool.map(lambda job: checkpoint.write(*job), jobs))
    for row, sha in zip(out, hashes, strict=True):
        row["sha256"] = sha
    return out


def write_part(root: str | os.PathLike, rows: list[dict]) -> Path:
    """Write the index rows of one stack (checkpoints already written) to
    ``root/parts/<stack_id>.parquet``, atomically; returns the file's path."""
    stack_ids = {str(r["stack_id"]) for r in rows}
    if len(stack_ids) != 1 or not next(iter(stack_ids)):
        raise ValueError(f"a part file holds the rows of one stack, got stack ids {stack_ids}")
    path = Path(root) / PARTS_DIR / f"{stack_ids.pop()}.parquet"
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=INDEX_COLUMNS).to_parquet(tmp, index=False)
    return path


def remove_files(paths: Iterable[Path]) -> None:
    """Delete files (consumed part files) that may already be gone."""
    for p in paths:
        p.unlink(missing_ok=True)


class ZooWriter:
    """Write each finished stack's checkpoints, then the index, atomically.

    Parameters
    ----------
    root : path
        The zoo folder (held under :func:`zoo_lock`).
    rows : DataFrame
        Index rows already on disk that stay valid (the reused members').
    """

    def __init__(self, root: str | os.PathLike, rows: pd.DataFrame) -> None:
        self.root = Path(root)
        self.index = rows.reset_index(drop=True)

    def add(
        self, rows: Iterable[dict], tensors: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> list[dict]:
        """Write the checkpoints of ``rows`` (states in ``tensors``), then the index.

        Returns the rows with their ``sha256`` filled in.
        """
        out = write_checkpoints(self.root, rows, tensors)
        if out:
            new = pd.DataFrame(out, columns=INDEX_COLUMNS)
            keep = self.index[~self.index["model_id"].isin(new["model_id"])]
            self.index = pd.concat([keep, new], ignore_index=True) if len(keep) else new
            _write_index(self.root, self.index)
        return out

    def write_index(self, index: pd.DataFrame) -> None:
        """Write the final index (the current grid's rows)."""
        self.index = index
        _write_index(self.root, index)
