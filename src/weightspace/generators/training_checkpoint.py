"""Periodic, atomic checkpoints of a generator's training loop, and resumption from them.

A long training stage (the D2NWG chunk VAE, latent diffusion) writes its whole state
(model, EMA, optimizer, step, losses so far, every random generator's state) every
``every`` steps, so a run that is killed, or stopped with Ctrl-C, resumes where it was and
ends with the same weights as an uninterrupted run.

* **Keyed by a fingerprint.** A stage's checkpoints live in
  ``<directory>/<stage>-<fingerprint>/``; the fingerprint hashes the stage's settings,
  its training data and initial weights (:func:`training_fingerprint`), so a changed
  setting or other data starts afresh and never resumes a stale run.
* **Never half-written.** Each checkpoint is two files written atomically
  (:func:`~weightspace.atomic.atomic_write_bytes`): ``step-<n>.pt`` (``torch.save``,
  read back with ``weights_only=True``) and then ``step-<n>.json``, which records the
  sha256 of the ``.pt`` file and is the commit marker. A checkpoint whose JSON is
  missing, unreadable, of another fingerprint, or whose ``.pt`` does not match its sha256
  is skipped with a warning; the previous one (the last ``keep`` are kept) or none is
  used instead.
* **Ctrl-C.** :func:`stop_on_sigint` turns SIGINT into a request the loop honours after
  the current step, having written a checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightspace.atomic import atomic_write_bytes, sha256_bytes
from weightspace.errors import InvalidParameterError
from weightspace.fingerprint import fingerprint

__all__ = [
    "CheckpointPolicy",
    "StopRequest",
    "TrainingCheckpoints",
    "get_rng_states",
    "interrupted",
    "losses_list",
    "losses_tensor",
    "set_rng_states",
    "stop_on_sigint",
    "training_fingerprint",
]

logger = logging.getLogger(__name__)

_FORMAT = 1


def training_fingerprint(settings: Mapping[str, Any], *tensors: torch.Tensor) -> str:
    """16 hex digits over JSON-able ``settings``, ``tensors`` (dtype, shape, bytes) and the
    generator package's source (:func:`weightspace.fingerprint.fingerprint`): what a
    training stage's result depends on. Edits elsewhere in the library, which do not
    change how a generator trains, keep the checkpoints valid."""
    return fingerprint(settings, *tensors, source=Path(__file__).resolve().parent)


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often a training stage writes checkpoints.

    Attributes
    ----------
    directory : str or None
        Root folder of the checkpoints; ``None`` disables checkpointing.
    every : int
        Write a checkpoint every ``every`` optimizer steps (the VAE at the end of the
        epoch in which a multiple of ``every`` is reached), and always at the end.
    keep : int
        Checkpoints kept per stage (older ones are deleted); >= 2 keeps a fallback.
    """

    directory: str | None = None
    every: int = 500
    keep: int = 2

    def __post_init__(self) -> None:
        if self.directory is not None and (
            not isinstance(self.directory, str) or not self.directory.strip()
        ):
            raise InvalidParameterError(
                f"checkpoint_dir must be a folder path or null, got {self.directory!r}"
            )
        for name in ("every", "keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                hint = (
                    "; use checkpoint_dir: null to turn checkpoints off" if name == "every" else ""
                )
                raise InvalidParameterError(
                    f"checkpoint_{name} must be an integer >= 1, got {v!r}{hint}"
                )

    def open(
        self, stage: str, settings: Mapping[str, Any], *tensors: torch.Tensor
    ) -> TrainingCheckpoints | None:
        """The checkpoints of ``stage`` for these settings and tensors (``None``: disabled)."""
        if self.directory is None:
            return None
        fp = training_fingerprint({"stage": stage, **settings}, *tensors)
        return TrainingCheckpoints(self.directory, stage, fp, self.every, self.keep)


class TrainingCheckpoints:
    """The checkpoints of one training stage under one fingerprint.

    Parameters
    ----------
    directory : str or PathLike
        Root folder; this stage's files go to ``<directory>/<stage>-<fingerprint>/``.
    stage : str
    fingerprint : str
        See :func:`training_fingerprint`.
    every, keep : int
        See :class:`CheckpointPolicy`.
    """

    def __init__(
        self, directory: str | Path, stage: str, fingerprint: str, every: int = 500, keep: int = 2
    ) -> None:
        self.stage, self.fingerprint = stage, fingerprint
        self.every, self.keep = int(every), int(keep)
        self.folder = Path(directory) / f"{stage}-{fingerprint}"

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after optimizer step ``step`` (1-based)."""
        return step % self.every == 0

    def _meta_files(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.folder.glob("step-*.json"):
            try:
                out.append((int(p.stem.split("-", 1)[1]), p))
            except ValueError:
                continue
        return sorted(out, reverse=True)

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write ``state`` (tensors, numbers, lists, dicts) as checkpoint ``step`` atomically."""
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        data = buf.getvalue()
        name = f"step-{int(step):09d}"
        atomic_write_bytes(self.folder / f"{name}.pt", data)
        meta = {
            "format": _FORMAT,
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "step": int(step),
            "file": f"{name}.pt",
            "sha256": sha256_bytes(data),
        }
        atomic_write_bytes(self.folder / f"{name}.json", json.dumps(meta, indent=1).encode())
        for _, old in self._meta_files()[self.keep :]:
            old.unlink(missing_ok=True)
            old.with_suffix(".pt").unlink(missing_ok=True)
        logger.debug("%s: checkpoint at step %d in %s", self.stage, step, self.folder)
        return self.folder / f"{name}.pt"

    def load_latest(self) -> tuple[int, dict[str, Any]] | None:
        """``(step, state)`` of the newest valid checkpoint, or ``None``.

        A checkpoint that cannot be read, whose sha256 or fingerprint does not match, is
        skipped with a warning (the previous one is tried).
        """
        for step, meta_path in self._meta_files():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("fingerprint") != self.fingerprint or meta.get("stage") != self.stage:
                    raise ValueError("it belongs to other settings (fingerprint differs)")
                if int(meta.get("step", -1)) != step or meta.get("format") != _FORMAT:
                    raise ValueError("its metadata is inconsistent")
                data = (self.folder / meta["file"]).read_bytes()
                if sha256_bytes(data) != meta.get("sha256"):
                    raise ValueError("its content does not match the recorded sha256")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                if not isinstance(state, dict):
                    raise ValueError("it does not hold a state mapping")
            except Exception as exc:  # any unreadable checkpoint is skipped
                logger.warning(
                    "%s: ignoring corrupt checkpoint %s (%s); trying an earlier one",
                    self.stage, meta_path, exc,
                )  # fmt: skip
                continue
            return step, state
        return None


# ---------------------------------------------------------------------- random state
def get_rng_states(*generators: torch.Generator, device: torch.device | None = None) -> dict:
    """States of ``generators``, the global CPU RNG and (on CUDA) the device's RNG."""
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    out["generators"] = [g.get_state() for g in generators]
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_states(
    states: Mapping[str, Any], *generators: torch.Generator, device: torch.device | None = None
) -> None:
    """Inverse of :func:`get_rng_states` (same generators, same order)."""
    torch.set_rng_state(states["torch"])
    saved = list(states["generators"])
    if len(saved) != len(generators):
        raise InvalidParameterError(
            f"checkpoint holds {len(saved)} generator states, the loop has {len(generators)}"
        )
    for g, s in zip(generators, saved, strict=True):
        g.set_state(s)
    if device is not None and device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def losses_tensor(losses: list[float]) -> torch.Tensor:
    """Losses as a float64 tensor (exact round trip of Python floats)."""
    return torch.tensor(losses, dtype=torch.float64)


def losses_list(t: torch.Tensor) -> list[float]:
    """Inverse of :func:`losses_tensor`."""
    return [float(v) for v in t.tolist()]


# ---------------------------------------------------------------------- Ctrl-C
class StopRequest:
    """Set by SIGINT inside :func:`stop_on_sigint`; the loop stops after the step."""

    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[StopRequest]:
    """While active, the first SIGINT only sets ``request.requested`` (the loop then
    writes a checkpoint and raises :class:`KeyboardInterrupt` after its current step);
    a second SIGINT interrupts at once. Outside the main thread it is a no-op flag."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        logger.warning("SIGINT: stopping after the current step (Ctrl-C again to abort now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted(
    stage: str, step: int, checkpoints: TrainingCheckpoints | None
) -> KeyboardInterrupt:
    """The :class:`KeyboardInterrupt` a loop raises after honouring a stop request."""
    where = (
        f"checkpoint written at step {step} in {checkpoints.folder}; rerun to resume"
        if checkpoints is not None
        else f"stopped at step {step} (checkpoints are off: a rerun starts again)"
    )
    return KeyboardInterrupt(f"{stage} training interrupted: {where}")
