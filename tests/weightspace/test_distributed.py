"""The world of a torchrun launch: environment checks, clear setup errors, sharding."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch

from dist_helpers import free_port, run_ranks
from weightspace import distributed
from weightspace.distributed import (
    SINGLE,
    DistributedSetupError,
    World,
    ranks_of,
    shard_slice,
    world_from_env,
)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("n", [0, 1, 5, 7, 16])
@pytest.mark.parametrize("w", [1, 2, 3, 4])
def test_shard_slices_cover_range_once_and_balance(n, w):
    slices = ranks_of(n, w)
    items = [i for s in slices for i in range(n)[s]]
    assert items == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1
    assert shard_slice(n, World(rank=w - 1, world_size=w)) == slices[-1]


def test_plain_run_is_the_single_world(clean_env):
    world = world_from_env("cpu")
    assert world == SINGLE and not world.active and world.is_main
    assert world.gather(3) == [3] and world.broadcast("x") == "x" and world.any(True)
    with pytest.raises(ValueError, match="boom"):
        world.check(ValueError("boom"), "step")


def test_missing_rank_variable_names_torchrun(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match=r"RANK is not set.*torchrun"):
        world_from_env("cpu")


def test_inconsistent_variables_are_named(clean_env):
    for k, v in {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}.items():
        clean_env.setenv(k, v)
    with pytest.raises(DistributedSetupError, match="RANK=2, WORLD_SIZE=2"):
        world_from_env("cpu")


def test_more_processes_than_gpus_is_refused(clean_env):
    """--nproc_per_node=4 on a host with 2 GPUs: a clear error before any rendezvous."""
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}
    for k, v in env.items():
        clean_env.setenv(k, v)
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "device_count", lambda: 2)
    expected = r"--nproc_per_node=4.*only 2 GPU.*--nproc_per_node=2"
    with pytest.raises(DistributedSetupError, match=expected):
        world_from_env("cuda")
    with pytest.raises(DistributedSetupError, match="cuda:<LOCAL_RANK>"):
        world_from_env("cuda:1")


def test_unreachable_rendezvous_fails_with_the_address():
    """A rank whose MASTER_ADDR:MASTER_PORT nobody serves fails within the timeout,
    naming the address and the fix (run in a subprocess: it joins a process group)."""
    port = free_port()
    code = textwrap.dedent("""
        from weightspace.distributed import world_from_env, DistributedSetupError
        try:
            world_from_env("cpu")
        except DistributedSetupError as exc:
            print("SETUP-ERROR", exc)
    """)
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WEIGHTSPACE_DIST_TIMEOUT": "3", "PYTHONPATH": "src",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert "SETUP-ERROR" in out.stdout, out.stderr[-2000:]
    assert f"127.0.0.1:{port}" in out.stdout and "rdzv_endpoint" in out.stdout
    assert time.perf_counter() - start < 60


def test_bad_timeout_is_rejected(clean_env):
    clean_env.setenv("WEIGHTSPACE_DIST_TIMEOUT", "soon")
    with pytest.raises(DistributedSetupError, match="WEIGHTSPACE_DIST_TIMEOUT"):
        distributed._timeout_s()


def _one_rank_fails(world: World) -> str:
    with world.collective("the toy stage"):
        if world.rank == 1:
            raise ValueError("bad input on rank 1")
    return "passed"


def test_an_error_on_one_rank_is_raised_on_every_rank():
    ranks = run_ranks(_one_rank_fails, 2)
    assert ranks[1][0] == "error" and ranks[1][1][0] == "ValueError"
    assert ranks[0][0] == "error" and ranks[0][1][0] == "DistributedRunError"
    assert "rank 1 of 2 failed (ValueError: bad input on rank 1)" in ranks[0][1][1]


def _collectives(world: World) -> tuple:
    return (
        world.gather(world.rank * 10),
        world.broadcast(f"from {world.rank}"),
        world.any(world.rank == 1),
    )


def test_collectives():
    ranks = run_ranks(_collectives, 2)
    for status, value in ranks:
        assert status == "ok"
        assert value == ([0, 10], "from 0", True)


def test_gloo_ranks_may_share_a_gpu_only_when_asked(clean_env):
    """WEIGHTSPACE_DIST_BACKEND=gloo lets 2 ranks share 1 GPU (a functional check of the
    GPU code on a one-GPU box); without it the launch is refused."""
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "device_count", lambda: 1)
    clean_env.setattr(torch.cuda, "set_device", lambda i: None)
    with pytest.raises(DistributedSetupError, match="only 1 GPU"):
        distributed._pick_device("cuda", 1, 2)
    clean_env.setenv("WEIGHTSPACE_DIST_BACKEND", "gloo")
    assert distributed._pick_device("cuda", 1, 2) == torch.device("cuda", 0)
    clean_env.setenv("WEIGHTSPACE_DIST_BACKEND", "mpi")
    with pytest.raises(DistributedSetupError, match="use gloo or nccl"):
        distributed._pick_device("cuda", 1, 2)
