"""The zoo folder on disk while a run writes it: lock, stale temp files, recovery, write-through.

A zoo run that is given its folder (``train_zoo(..., root=...)``) holds an exclusive lock
on ``root/.lock`` (:func:`zoo_lock`; the pid of the holder is written into it, and the OS
releases it when the process dies, so a killed run never blocks the next), removes the
temporary files a killed save left behind (:func:`clean_stale_tmp`), reopens the zoo
(:func:`recover_zoo`: a missing or unreadable ``index.parquet`` is rebuilt from the
checkpoints, which carry their member in their metadata; checkpoints written after the
last index write are adopted) and writes every stack as soon as it is trained
(:class:`ZooWriter`). A kill therefore loses at most the stack in flight.
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
    "ZooFolderNotWritableError",
    "ZooLockedError",
    "ZooWriter",
    "clean_stale_tmp",
    "prune_outside",
    "recover_zoo",
    "zoo_lock",
]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
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
    """Remove temporary files (``.*.tmp``) a killed save left in the zoo folder.

    Call only while holding :func:`zoo_lock` (a live writer's files look the same).
    """
    root = Path(root)
    stale = sorted([*root.glob(".*.tmp"), *(root / CHECKPOINT_DIR).glob(".*.tmp")])
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


def recover_zoo(root: str | os.PathLike, wanted: Collection[str] | None = None) -> Zoo:
    """Open the zoo in ``root``, rebuilding what a crash or a deleted index lost.

    The saved index is read when it exists and is readable; checkpoint files it does not
    list (written after the last index write, or all of them when the index is gone) are
    adopted from their metadata when their model id is in ``wanted`` (every file when
    ``None``). Adopted rows have NaN metrics (``train_zoo`` re-scores them). Files that
    cannot be parsed, hold NaN/inf or carry another model's metadata are skipped with a
    warning (they stay on disk; a member needing them is retrained).

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
    listed = set(index["model_id"]) if "model_id" in index.columns else set()
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
            len(rows),
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
    if rows:
        index = pd.concat([index, pd.DataFrame(rows, columns=INDEX_COLUMNS)], ignore_index=True)
    return Zoo(index, root=root)


# ---- writing ------------------------------------------------------------------------------


def _write_index(root: Path, index: pd.DataFrame) -> None:
    with atomic_path(root / INDEX_FILE) as tmp:
        index.to_parquet(tmp, index=False)


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
        out = []
        for row in rows:
            mid = row["model_id"]
            row = {**row, "path": checkpoint_relpath(mid)}
            meta = {"model_id": mid, "member": _member_json(pd.Series(row)), "epoch": row["epoch"]}
            arch = ArchSpec.from_dict(json.loads(row["arch_key"]))
            row["sha256"] = checkpoint.write(self.root / row["path"], tensors[mid], arch, meta)
            out.append(row)
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
