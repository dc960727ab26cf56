"""One process per device under ``torchrun``: the world a run belongs to, and its checks.

Weightspace scales out on ``torch.distributed`` as PyTorch users already run it:
``torchrun --nproc_per_node=N ...`` starts ``N`` processes per host, each with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in its environment. :func:`current_world` reads them once per process,
checks them, joins the process group (NCCL on GPUs, gloo on CPUs) and returns a
:class:`World`; without those variables it returns the single-process world, so every
library function that takes a ``world`` behaves exactly as before when run plainly.

Failures are collective: :meth:`World.check` turns an exception on any rank into the same
:class:`DistributedRunError` on every rank (naming the rank and its message), so a rank
that hits bad input never leaves the others waiting in a collective until a timeout.

NVLink multicast stays off (``NCCL_NVLS_ENABLE=0`` unless the user set it): on shared
multi-GPU hosts it can take the GPUs out of service.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from weightspace.device import resolve_device
from weightspace.errors import WeightspaceError

__all__ = [
    "SINGLE",
    "DistributedRunError",
    "DistributedSetupError",
    "World",
    "current_world",
    "shard_slice",
    "world_from_env",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a collective (and the rendezvous) may wait before failing with a clear error.
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "WEIGHTSPACE_DIST_TIMEOUT"
BACKEND_ENV = "WEIGHTSPACE_DIST_BACKEND"


class DistributedSetupError(WeightspaceError, RuntimeError):
    """The process group cannot be formed (bad launch, unreachable rendezvous, too many
    processes for the devices)."""


class DistributedRunError(WeightspaceError, RuntimeError):
    """A rank of a distributed run failed (or was lost); raised on every surviving rank."""


@dataclass(frozen=True)
class World:
    """The processes of one run and this process's place among them.

    Attributes
    ----------
    rank, world_size : int
        Global rank of this process and number of processes (1: a plain run).
    local_rank, local_world_size : int
        Rank on this host and processes on this host.
    device : torch.device
        This rank's device (``cuda:<local_rank>`` on GPUs).
    backend : str or None
        ``"nccl"`` or ``"gloo"``; None for a plain run.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes shared outputs)."""
        return self.rank == 0

    # ---- collectives (no-ops in a plain run) ----------------------------------------------
    def barrier(self) -> None:
        """Wait for every rank (raises :class:`DistributedRunError` if one is lost)."""
        if self.active:
            self._call("barrier", dist.barrier)

    def broadcast(self, obj: T, src: int = 0) -> T:
        """``obj`` of rank ``src`` on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        self._call("broadcast", dist.broadcast_object_list, box, src=src)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._call("all_gather", dist.all_gather_object, out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        return any(self.gather(bool(flag))) if self.active else bool(flag)

    def check(self, error: BaseException | None, what: str) -> None:
        """Collective error check: every rank calls it; if any rank passes an exception,
        every rank raises it (the failing rank re-raises its own, the others a
        :class:`DistributedRunError` naming it)."""
        if not self.active:
            if error is not None:
                raise error
            return
        mine = None if error is None else f"{type(error).__name__}: {error}"
        failed = [(r, m) for r, m in enumerate(self.gather(mine)) if m is not None]
        if not failed:
            return
        if error is not None:
            raise error
        r, msg = failed[0]
        raise DistributedRunError(f"{what}: rank {r} of {self.world_size} failed ({msg})")

    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Run a block on every rank; an exception on any rank is raised on all of them.

        The block's exception (if any) is caught, shared through :meth:`check` and raised
        on every rank, so no rank is left waiting in the next collective.
        """
        error: BaseException | None = None
        try:
            yield
        except Exception as exc:  # shared with the other ranks, then re-raised
            error = exc
            log.debug("rank %d failed in %s:\n%s", self.rank, what, traceback.format_exc())
        self.check(error, what)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as exc:
            raise DistributedRunError(
                f"{what} across {self.world_size} ranks failed on rank {self.rank} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                "another rank stopped or was killed. Work each rank finished is saved; "
                "rerun the same command to resume"
            ) from exc


SINGLE = World()


def shard_slice(n: int, world: World) -> slice:
    """Rank ``world.rank``'s contiguous share of ``n`` items (sizes differ by at most 1).

    Ranks ``0 .. n % W - 1`` get one item more; concatenating every rank's slice in rank
    order gives ``range(n)``.
    """
    base, extra = divmod(n, world.world_size)
    lo = world.rank * base + min(world.rank, extra)
    return slice(lo, lo + base + (1 if world.rank < extra else 0))


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise DistributedSetupError(
                f"{name} is not set although WORLD_SIZE is: start the run with torchrun "
                "(torchrun --nproc_per_node=N ...), which sets RANK, WORLD_SIZE, LOCAL_RANK, "
                "MASTER_ADDR and MASTER_PORT for every process"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedSetupError(f"{name}={raw!r} is not an integer") from None


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        raise DistributedSetupError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise DistributedSetupError(f"{TIMEOUT_ENV} must be > 0 seconds, got {value}")
    return value


def _backend_override() -> str | None:
    raw = os.environ.get(BACKEND_ENV)
    if raw not in (None, "", "gloo", "nccl"):
        raise DistributedSetupError(f"{BACKEND_ENV}={raw!r}: use gloo or nccl (or unset it)")
    return raw or None


def _pick_device(device: str, local_rank: int, local_world_size: int) -> torch.device:
    """``cuda:<local_rank>`` (checked against the GPUs present) or ``cpu``.

    With ``WEIGHTSPACE_DIST_BACKEND=gloo``, ranks may share GPUs (rank ``r`` takes
    ``cuda:<r mod GPUs>``): a functional check of the multi-process GPU code on a
    one-GPU machine, not a way to go faster. NCCL needs one GPU per process.
    """
    want_cuda = device == "cuda" or device.startswith("cuda:")
    if device == "auto":
        want_cuda = torch.cuda.is_available()
    if not want_cuda:
        if device not in ("auto", "cpu"):
            raise DistributedSetupError(f"device {device!r}: use 'auto', 'cpu' or 'cuda'")
        return torch.device("cpu")
    if device.startswith("cuda:"):
        raise DistributedSetupError(
            f"device {device!r} names one GPU, but under torchrun each rank takes "
            "cuda:<LOCAL_RANK>; set device: cuda (or auto)"
        )
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus and _backend_override() == "gloo":
        torch.cuda.set_device(local_rank % n_gpus)
        return torch.device("cuda", local_rank % n_gpus)
    if local_world_size > n_gpus:
        raise DistributedSetupError(
            f"torchrun started {local_world_size} processes on {socket.gethostname()} "
            f"(--nproc_per_node={local_world_size}) but only {n_gpus} GPU(s) are visible "
            f"there; use --nproc_per_node={max(n_gpus, 1)} or fewer"
            + ("" if n_gpus else ", or run on CPUs with device: cpu (gloo)")
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def world_from_env(device: str = "auto") -> World:
    """The world described by torchrun's environment variables, process group joined.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        ``auto``: one GPU per rank when GPUs are visible (NCCL), else CPUs (gloo).

    Returns
    -------
    World
        :data:`SINGLE` (on ``device``'s kind) when ``WORLD_SIZE`` is unset or 1.

    Raises
    ------
    DistributedSetupError
        Missing or inconsistent variables, more processes on a host than GPUs, or a
        rendezvous (``MASTER_ADDR:MASTER_PORT``) not reachable within
        ``WEIGHTSPACE_DIST_TIMEOUT`` seconds.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return World(device=resolve_device(device))
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        raise DistributedSetupError(
            f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world_size}"
        )
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    dev = _pick_device(device, local_rank, local_world_size)
    backend = _backend_override() or ("nccl" if dev.type == "cuda" else "gloo")
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    timeout = _timeout_s()
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout),
                device_id=dev if backend == "nccl" else None,
            )
        except (RuntimeError, ValueError, dist.DistError) as exc:
            raise DistributedSetupError(
                f"rank {rank} of {world_size} on {socket.gethostname()} could not join the "
                f"process group at {where} within {timeout:g} s ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Check that every host "
                "runs torchrun with the same --rdzv_endpoint (or --master_addr/--master_port) "
                "and --nnodes, that the address is reachable from this host and the port is "
                f"open, or raise {TIMEOUT_ENV}"
            ) from exc
    world = World(rank, world_size, local_rank, local_world_size, dev, backend)
    log.info(
        "distributed: rank %d of %d (local %d of %d) on %s, %s, backend %s",
        rank, world_size, local_rank, local_world_size, socket.gethostname(), dev, backend,
    )  # fmt: skip
    return world


_CURRENT: dict[str, World] = {}


def current_world(device: str = "auto") -> World:
    """:func:`world_from_env` once per process (later calls return the same world)."""
    if "world" not in _CURRENT:
        _CURRENT["world"] = world_from_env(device)
    return _CURRENT["world"]


def shutdown() -> None:
    """Leave the process group (end of a distributed run); harmless when not in one."""
    _CURRENT.pop("world", None)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_same(world: World, value: Any, what: str) -> None:
    """Raise on every rank when ranks disagree on ``value`` (e.g. a data fingerprint)."""
    if not world.active:
        return
    values = world.gather(value)
    bad = [r for r, v in enumerate(values) if v != values[0]]
    if bad:
        raise DistributedRunError(
            f"{what} differs between ranks (rank 0: {values[0]!r}; rank {bad[0]}: "
            f"{values[bad[0]]!r}). Every rank must compute the same inputs: run the same "
            "command, commit and configuration on every host"
        )


def ranks_of(n: int, world_size: int) -> Sequence[slice]:
    """The slices :func:`shard_slice` gives each of ``world_size`` ranks."""
    return [shard_slice(n, World(rank=r, world_size=world_size)) for r in range(world_size)]
