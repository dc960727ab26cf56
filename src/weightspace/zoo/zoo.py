"""A zoo: an index (one row per checkpoint) plus the checkpoints' tensors.

Tensors live either in memory (just trained, not yet saved) or in safetensors files under
``root/checkpoints/`` (read lazily, verified against the sha256 in the index). Saving
writes only what is new, atomically, then the index; loading never trusts a file whose
hash differs from the index or that holds NaN/inf. Checkpoint files the index does not
list are kept unless a save asks to ``prune`` them (see :func:`prune_outside`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from weightspace.atomic import atomic_path
from weightspace.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    EmptyZooError,
    NonFiniteWeightsError,
)
from weightspace.nets.registry import ArchSpec
from weightspace.zoo import checkpoint

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"
CHECKPOINT_DIR = "checkpoints"
INDEX_COLUMNS = [
    "model_id", "member_id", "arch", "arch_config", "arch_key", "input_shape", "n_classes",
    "dataset", "task", "task_spec", "seed", "data_seed", "hparams", "lr", "weight_decay",
    "init_scale",
    "epoch", "epochs", "is_final", "n_params",
    "train_accuracy", "val_accuracy", "test_accuracy", "train_nll", "val_nll", "test_nll",
    "train_ece", "val_ece", "test_ece", "path", "sha256", "library_version",
    "stack_id", "stack_seconds",
]  # fmt: skip


def checkpoint_relpath(model_id: str) -> str:
    """Where a model's file lives, relative to the zoo root."""
    return f"{CHECKPOINT_DIR}/{model_id}.safetensors"


class Zoo:
    """Index + checkpoints of trained models.

    Parameters
    ----------
    index : DataFrame
        One row per checkpoint with :data:`INDEX_COLUMNS`.
    root : path, optional
        Folder of saved checkpoints (``None`` for a zoo only in memory).
    tensors : mapping model_id -> state dict, optional
        Checkpoints held in memory (not yet saved).
    """

    def __init__(
        self,
        index: pd.DataFrame,
        root: str | os.PathLike | None = None,
        tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        missing = [c for c in INDEX_COLUMNS if c not in index.columns]
        if missing:
            raise CorruptCheckpointError(
                f"zoo index lacks columns {missing}; it was written by another version. "
                "Delete the zoo folder and re-run the zoo pipeline"
            )
        self.index = index.reset_index(drop=True)
        self._positions: dict[str, int] = {}
        self._positions_of: pd.DataFrame | None = None
        self.root = Path(root) if root is not None else None
        self._tensors: dict[str, dict[str, torch.Tensor]] = {
            k: dict(v) for k, v in (tensors or {}).items()
        }

    # ---- construction -------------------------------------------------------------
    @classmethod
    def empty(cls, root: str | os.PathLike | None = None) -> Zoo:
        """A zoo with no models."""
        return cls(pd.DataFrame({c: [] for c in INDEX_COLUMNS}), root=root)

    @classmethod
    def load(cls, root: str | os.PathLike) -> Zoo:
        """Open a saved zoo (checkpoints are read lazily)."""
        root = Path(root)
        path = root / INDEX_FILE
        if not path.exists():
            raise EmptyZooError(
                f"no zoo at {os.fspath(root)!r} (missing {INDEX_FILE}); run "
                "`kedro run --pipelines=zoo` first"
            )
        return cls(pd.read_parquet(path), root=root)

    # ---- access ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def model_ids(self) -> list[str]:
        """All checkpoint ids, in index order."""
        return self.index["model_id"].tolist()

    def row(self, model_id: str) -> pd.Series:
        """The index row of ``model_id`` (the first, should an id repeat)."""
        return self.index.iloc[self._position(model_id)]

    def _position(self, model_id: str) -> int:
        """Row position of ``model_id`` in :attr:`index`, in O(1).

        A map ``model_id -> position`` is built once per index and checked on every use
        (the row at that position must still hold that id), so an index replaced or
        reordered in place is re-mapped, never misread. Lookups of a 10,000-model zoo were
        a boolean mask over the whole index each (O(N) per model, O(N^2) per stack).
        """
        ids = self.index["model_id"]
        pos = self._positions.get(model_id) if self._positions_of is self.index else None
        if pos is None or pos >= len(ids) or ids.iat[pos] != model_id:
            self._positions = {}
            for i, m in enumerate(ids.tolist()):
                self._positions.setdefault(m, i)
            self._positions_of = self.index
            pos = self._positions.get(model_id)
        if pos is None:
            raise KeyError(f"model {model_id!r} is not in this zoo")
        return pos

    def _value(self, model_id: str, column: str) -> Any:
        """One cell of ``model_id``'s index row (without building the row's Series)."""
        return self.index[column].iat[self._position(model_id)]

    def has_tensors_in_memory(self, model_id: str) -> bool:
        """True if the checkpoint has not been read from / written to disk yet."""
        return model_id in self._tensors

    def file_path(self, model_id: str) -> Path:
        """Absolute path of a saved checkpoint."""
        if self.root is None:
            raise EmptyZooError("this zoo has no root folder; save it first")
        return self.root / str(self._value(model_id, "path"))

    def state(self, model_id: str, verify: bool = True) -> dict[str, torch.Tensor]:
        """State dict of one model (from memory, or read and hash-verified from disk)."""
        if model_id in self._tensors:
            return self._tensors[model_id]
        sha = self._value(model_id, "sha256")
        expected = str(sha) if verify and sha else None
        return checkpoint.read(self.file_path(model_id), expected_sha256=expected).state

    def arch_spec(self, model_id: str) -> ArchSpec:
        """Architecture of one model."""
        return ArchSpec.from_dict(json.loads(self._value(model_id, "arch_key")))

    def module(self, model_id: str) -> nn.Module:
        """The trained module (eval mode)."""
        module = self.arch_spec(model_id).build()
        checkpoint.load_state_strict(module, self.state(model_id), source=f"model {model_id}")
        return module.eval()

    def final_modules(self, task: str, arch: str, config: Mapping[str, object]) -> list[nn.Module]:
        """Final checkpoints of one architecture (name and config) on ``task``, by seed.

        Returns ``[]`` when the zoo has none; the caller says which grid entry is missing.
        """
        index = self.index[self.index["is_final"].astype(bool)]
        want = json.dumps(dict(config), sort_keys=True, separators=(",", ":"))
        same = index["arch_config"].map(
            lambda c: json.dumps(json.loads(c), sort_keys=True, separators=(",", ":")) == want
        )
        rows = index[(index["task"] == task) & (index["arch"] == arch) & same]
        return [self.module(m) for m in rows.sort_values("seed")["model_id"]]

    def stack(self, model_ids: Iterable[str]) -> dict[str, torch.Tensor]:
        """Stacked float tensors ``(B, *shape)`` of same-architecture models."""
        ids = list(model_ids)
        if not ids:
            raise EmptyZooError("cannot stack an empty selection of models")
        keys = {self._value(m, "arch_key") for m in ids}
        if len(keys) != 1:
            raise CheckpointMismatchError(
                f"models to stack must share one architecture, got {len(keys)}; select by "
                "zoo.index['arch_key'] first"
            )
        states = [self.state(m) for m in ids]
        names = [k for k, v in states[0].items() if v.is_floating_point()]
        return {k: torch.stack([s[k] for s in states]) for k in names}

    def select(self, mask: pd.Series) -> Zoo:
        """Sub-zoo of the rows where ``mask`` is True."""
        index = self.index[mask.to_numpy()]
        keep = set(index["model_id"])
        return Zoo(index, self.root, {k: v for k, v in self._tensors.items() if k in keep})

    def problems(self) -> dict[str, str]:
        """Check every saved checkpoint: ``{model_id: what is wrong}`` for the bad ones.

        The reason starts with ``missing``, ``corrupt`` (sha256 mismatch, unparseable) or
        ``non-finite`` (NaN/inf weights).
        """
        out: dict[str, str] = {}
        for model_id in self.model_ids:
            if model_id in self._tensors:
                continue
            try:
                self.state(model_id)
            except FileNotFoundError:
                out[model_id] = "missing"
            except NonFiniteWeightsError as exc:  # first: may also be a CorruptCheckpointError
                out[model_id] = f"non-finite: {exc}"
            except CorruptCheckpointError as exc:
                out[model_id] = f"corrupt: {exc}"
        return out

    def verify(self) -> tuple[list[str], list[str]]:
        """Check every saved checkpoint: returns (missing ids, corrupt ids).

        Checkpoints holding NaN/inf weights count as corrupt.
        """
        problems = self.problems()
        missing = [m for m, why in problems.items() if why == "missing"]
        return missing, [m for m, why in problems.items() if why != "missing"]

    def is_saved_at(self, root: str | os.PathLike) -> bool:
        """True if ``root`` already holds exactly this zoo (nothing in memory, same index)."""
        root = Path(root)
        if self._tensors or self.root is None or self.root.resolve() != root.resolve():
            return False
        try:
            on_disk = pd.read_parquet(root / INDEX_FILE)
        except Exception:  # missing or unreadable: not saved
            return False
        cols = ["model_id", "sha256", "path"]
        return on_disk[cols].reset_index(drop=True).equals(self.index[cols])

    # ---- saving ---------------------------------------------------------------------
    def save(self, root: str | os.PathLike, prune: bool = False) -> None:
        """Write new checkpoints and the index under ``root`` (atomically).

        Checkpoints already saved under another root are copied (re-verified). Files in
        ``root/checkpoints`` that the index does not list are kept (a later zoo whose
        grid includes them reuses them) unless ``prune``, which deletes them with a
        WARNING naming each.
        """
        root = Path(root)
        (root / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        index = self.index.copy()
        same_root = self.root is not None and self.root.resolve() == root.resolve()
        for i, model_id in enumerate(index["model_id"]):
            rel = checkpoint_relpath(model_id)
            if model_id in self._tensors or not same_root:
                state = self.state(model_id)
                row = index.iloc[i]
                meta = {
                    "model_id": model_id,
                    "member": _member_json(row),
                    "epoch": int(row["epoch"]),
                }
                index.loc[index.index[i], "sha256"] = checkpoint.write(
                    root / rel, state, ArchSpec.from_dict(json.loads(row["arch_key"])), meta
                )
                index.loc[index.index[i], "path"] = rel
        with atomic_path(root / INDEX_FILE) as tmp:
            index.to_parquet(tmp, index=False)
        prune_outside(root, index["model_id"].tolist(), prune)
        self.index = index
        self.root = root
        self._tensors.clear()


def prune_outside(root: str | os.PathLike, keep: Collection[str], prune: bool) -> list[str]:
    """Checkpoint files of ``root`` not named in ``keep``.

    Deleted with a WARNING naming each when ``prune``; else kept and reported at INFO.
    Returns their file names.
    """
    root = Path(root)
    keep_names = {f"{m}.safetensors" for m in keep}
    outside = sorted(
        f.name for f in (root / CHECKPOINT_DIR).glob("*.safetensors") if f.name not in keep_names
    )
    if not outside:
        return []
    if prune:
        log.warning(
            "prune: deleting %d checkpoint(s) outside the current zoo grid from %s: %s",
            len(outside),
            root / CHECKPOINT_DIR,
            outside,
        )
        for name in outside:
            (root / CHECKPOINT_DIR / name).unlink(missing_ok=True)
    else:
        log.info(
            "kept %d checkpoint(s) outside the current zoo grid in %s (a later run whose grid "
            "includes them reuses them; set zoo.run.prune: true to delete them)",
            len(outside),
            root / CHECKPOINT_DIR,
        )
    return outside


def _member_json(row: pd.Series | Mapping[str, Any]) -> str:
    """The member description stored in a checkpoint's metadata."""
    return json.dumps(
        {
            "arch": row["arch"],
            "arch_config": json.loads(row["arch_config"]),
            "task": json.loads(row["task_spec"]),
            "seed": int(row["seed"]),
            "train": json.loads(row["hparams"]),
            "data_seed": int(row["data_seed"]),
        }
    )
