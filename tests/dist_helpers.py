"""Run a function on several gloo processes (CPU) and collect what each rank returns."""

from __future__ import annotations

import datetime
import io
import os
import queue as queue_mod
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from weightspace.distributed import World


def free_port() -> int:
    """A TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue: Any) -> None:
    torch.set_num_threads(1)
    os.environ["WEIGHTSPACE_DIST_TIMEOUT"] = "30"
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=30),
        )  # fmt: skip
        world = World(rank=rank, world_size=world_size, local_rank=rank,
                      local_world_size=world_size, backend="gloo")  # fmt: skip
        result = fn(world, *args)
        buf = io.BytesIO()  # tensors as bytes: a shared-memory tensor dies with its process
        torch.save(result, buf)
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException as exc:  # reported to the test
        queue.put((rank, "error", (type(exc).__name__, str(exc), traceback.format_exc())))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120) -> list:
    """``fn(world, *args)`` on ``world_size`` spawned gloo processes; each rank's
    ``("ok", result)`` or ``("error", (type name, message, traceback))``, in rank order.

    ``fn`` must be importable (module level) and its result picklable.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(r, world_size, port, fn, args, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, tuple] = {}
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    try:
        while len(out) < world_size:
            left = (deadline - datetime.datetime.now()).total_seconds()
            if left <= 0:
                raise TimeoutError(f"ranks {sorted(set(range(world_size)) - set(out))} hung")
            try:
                rank, status, value = queue.get(timeout=min(left, 5))
            except queue_mod.Empty:
                if all(not p.is_alive() for p in procs) and queue.empty():
                    break  # a rank died without reporting
                continue
            if status == "ok":
                value = torch.load(io.BytesIO(value), weights_only=True)
            out[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out.get(r, ("died", None)) for r in range(world_size)]
