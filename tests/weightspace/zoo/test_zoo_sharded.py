"""Sharded zoo training (``train_zoo(..., world=...)``) on 2 CPU processes (gloo).

One tiny zoo (3 digits tasks, one with 10 classes and two with 3, x 3 seeds, MLP [8], one
SGD epoch, stacks of 2: every rank trains 3 stacks) is trained once in this process (the
reference) and by 2 spawned ranks in several scenarios. Spawning costs seconds, so each
scenario set runs in one spawn: the ``killed`` fixture (rank 1 dies after its first stack)
and the ``runs`` fixture (a fresh zoo, a locked folder, a folder with leftover part
files, the 2-rank resume of the killed run), in that order.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_mod
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from weightspace.atomic import sha256_file
from weightspace.data import TaskSpec, load_dataset
from weightspace.distributed import DistributedSetupError, World
from weightspace.errors import InvalidParameterError
from weightspace.zoo import MemberSpec, TrainConfig, ZooRunOptions, expand_grid, sharded, train_zoo
from weightspace.zoo.folder import (
    LOCK_FILE,
    PARTS_DIR,
    WORLD_TOKEN_PREFIX,
    clean_stale_tmp,
    recover_zoo,
    zoo_lock,
)
from weightspace.zoo.plan import TaskShape, _group_stacks, task_shapes
from weightspace.zoo.sharded import shard_members
from weightspace.zoo.zoo import INDEX_COLUMNS, INDEX_FILE, Zoo

pytestmark = pytest.mark.slow

GRID = {
    "tasks": [
        {"dataset": "digits"},
        {"dataset": "digits", "classes": [0, 1, 2]},
        {"dataset": "digits", "classes": [3, 4, 5]},
    ],
    "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
    "seeds": 3,
    "train": {"epochs": 1, "lr": 0.03, "optimizer": "sgd"},
}
OPTIONS = ZooRunOptions(device="cpu", progress=False, max_stack=2)
METRICS = [c for c in INDEX_COLUMNS if c.endswith(("_accuracy", "_nll", "_ece"))]
# Columns that describe how a run went, not the model.
RUN_COLUMNS = ["stack_id", "stack_seconds"]
SPAWN_TIMEOUT_S = 150
# Two members in one group: rank 0 trains the first, rank 1 the second, which diverges.
DIVERGING_GRID = {
    "tasks": [{"dataset": "digits", "classes": [0, 1]}],
    "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
    "seeds": 1,
    "train": {"epochs": 1, "lr": [0.03, 1e20], "optimizer": "sgd"},
}


# ---- the 2-rank worker --------------------------------------------------------------------


def _kill_rank_1(world: World, rows: list[dict]) -> None:
    if world.rank == 1:
        os._exit(1)  # a killed rank: no cleanup, no collective


def _worker(rank: int, port: int, jobs: list[dict], results) -> None:
    """Join a 2-rank gloo group and run ``train_zoo`` for each job, reporting per rank."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=30),
    )
    world = World(rank=rank, world_size=2, backend="gloo")
    digits = {"digits": load_dataset("digits")}
    for job in jobs:
        sharded._after_stack_hook = _kill_rank_1 if job.get("kill") else None
        members = expand_grid(job.get("grid", GRID), {"digits": 10})
        try:
            zoo, report = train_zoo(members, digits, options=OPTIONS, root=job["root"], world=world)
            results.put((job["name"], rank, "ok", dataclasses.asdict(report), zoo.index))
        except Exception as exc:  # reported to the test
            results.put((job["name"], rank, type(exc).__name__, str(exc), None))
    results.close()
    results.join_thread()
    os._exit(0)  # skip the process group's teardown (a peer may be gone)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(jobs: list[dict]) -> dict[tuple[str, int], tuple]:
    """Run the jobs on 2 spawned ranks: ``{(job name, rank): (status, report|message, index)}``."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, jobs, results)) for r in range(2)]
    for p in procs:
        p.start()
    out: dict[tuple[str, int], tuple] = {}
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            name, rank, *rest = results.get(timeout=0.5)
            out[(name, rank)] = tuple(rest)
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs):
                break
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    assert time.monotonic() < deadline, f"2-rank run timed out; got {sorted(out)}"
    return out


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return {"digits": load_dataset("digits")}


@pytest.fixture(scope="module")
def members():
    return expand_grid(GRID, {"digits": 10})


def _files(root: Path) -> dict[str, tuple[int, str]]:
    """``{checkpoint name: (mtime_ns, sha256)}``."""
    return {
        p.name: (p.stat().st_mtime_ns, sha256_file(p))
        for p in sorted((root / "checkpoints").glob("*.safetensors"))
    }


@pytest.fixture(scope="module")
def reference(one_thread, digits, members, tmp_path_factory):
    """The single-process zoo: (root, index, every checkpoint's state)."""
    root = tmp_path_factory.mktemp("reference") / "zoo"
    zoo, report = train_zoo(members, digits, options=OPTIONS, root=root)
    assert report.n_trained == len(members) == 9
    states = {mid: Zoo.load(root).state(mid) for mid in zoo.model_ids}
    return root, zoo.index.copy(), states


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A 2-rank run whose rank 1 dies right after writing its first stack:
    (folder, results, checkpoint files after the kill)."""
    root = tmp_path_factory.mktemp("killed") / "zoo"
    out = _spawn([{"name": "kill", "root": str(root), "kill": True}])
    return root, out, _files(root)


def _seed_parts(src: Path, dst: Path, members: list[MemberSpec]) -> dict[str, str]:
    """A copy of the reference zoo whose index lost the last 3 members, with leftover part
    files: a good one (2 of them, plus a duplicate of a row the index has) and a stale one
    (a wrong sha256 for the third and for one of the others). Returns model id -> role."""
    shutil.copytree(src, dst)
    index = pd.read_parquet(dst / INDEX_FILE)
    lost = [m.member_id for m in members[-3:]]
    kept = index[~index["model_id"].isin(lost)]
    kept.to_parquet(dst / INDEX_FILE, index=False)
    rows = index.set_index("model_id", drop=False)
    (dst / PARTS_DIR).mkdir()
    good = rows.loc[[lost[0], lost[1], kept["model_id"].iloc[0]]]
    good.to_parquet(dst / PARTS_DIR / "aaaaaaaaaaaa.parquet", index=False)
    stale = rows.loc[[lost[2], lost[0]]].copy()
    stale["sha256"] = "0" * 64
    stale["test_accuracy"] = -1.0
    stale.to_parquet(dst / PARTS_DIR / "bbbbbbbbbbbb.parquet", index=False)
    (dst / PARTS_DIR / "cccccccccccc.parquet").write_bytes(b"not parquet")
    return {lost[0]: "part", lost[1]: "part", lost[2]: "checkpoint"}


@pytest.fixture(scope="module")
def runs(reference, killed, members, tmp_path_factory):
    """One 2-rank spawn running, in order: a fresh zoo; a folder another run holds locked;
    a folder with leftover part files; the resume of the killed run; a zoo with a member
    that diverges on rank 1."""
    base = tmp_path_factory.mktemp("runs")
    fresh, locked, seeded, resume = (base / n for n in ("fresh", "locked", "seeded", "resume"))
    diverge = base / "diverge"
    shutil.copytree(reference[0], locked)
    roles = _seed_parts(reference[0], seeded, members)
    shutil.copytree(killed[0], resume)
    index_bytes = (locked / INDEX_FILE).read_bytes()
    jobs = [{"name": n.name, "root": str(n)} for n in (fresh, locked, seeded, resume)]
    jobs.append({"name": "diverge", "root": str(diverge), "grid": DIVERGING_GRID})
    with zoo_lock(locked):  # "another run" writes this folder during the spawn
        out = _spawn(jobs)
    roots = {"fresh": fresh, "locked": locked, "seeded": seeded, "resume": resume}
    return {**roots, "diverge": diverge}, out, {"locked_index": index_bytes, "roles": roles}


def _assert_same_zoo(root: Path, index: pd.DataFrame, reference) -> None:
    """``index`` (and the zoo in ``root``) equals the reference zoo, bit for bit."""
    _, ref_index, ref_states = reference
    assert index["model_id"].tolist() == ref_index["model_id"].tolist()  # grid order
    assert index["sha256"].tolist() == ref_index["sha256"].tolist()  # identical files
    same = [c for c in INDEX_COLUMNS if c not in METRICS + RUN_COLUMNS]
    pd.testing.assert_frame_equal(index[same], ref_index[same], check_dtype=False)
    for col in METRICS:
        assert index[col].to_numpy() == pytest.approx(ref_index[col].to_numpy(), abs=1e-6), col
    on_disk = Zoo.load(root)
    pd.testing.assert_frame_equal(on_disk.index, index.reset_index(drop=True), check_dtype=False)
    for mid, ref in ref_states.items():
        state = on_disk.state(mid)
        assert list(state) == list(ref)
        assert all(torch.equal(state[k], ref[k]) for k in ref), mid


def _assert_clean(root: Path) -> None:
    """No part files, tokens or temporary files left, and the lock is free."""
    assert not (root / PARTS_DIR).exists() or not list((root / PARTS_DIR).iterdir())
    assert not list(root.glob(f"{WORLD_TOKEN_PREFIX}*"))
    assert not list(root.rglob("*.tmp"))
    assert (root / LOCK_FILE).read_text() == ""  # the holder's line is cleared on release
    with zoo_lock(root):
        pass


# ---- sharding -----------------------------------------------------------------------------


def test_shard_members_is_complete_disjoint_balanced_and_deterministic():
    archs = [("mlp", {"hidden": [8]}), ("mlp", {"hidden": [4]}), ("cnn", {"channels": [4]})]
    tasks = [TaskSpec("digits"), TaskSpec("digits", classes=(0, 1)), TaskSpec("digits", (2, 3))]
    shapes = {
        tasks[0]: TaskShape((1, 8, 8), 10),
        tasks[1]: TaskShape((1, 8, 8), 2),
        tasks[2]: TaskShape((1, 8, 8), 2),
    }
    todo = [
        MemberSpec(arch, task, seed, TrainConfig(optimizer=opt), arch_config=config)
        for seed in range(4)
        for task in tasks
        for arch, config in archs
        for opt in ("sgd", "adam")
    ][:-5]  # uneven group sizes
    groups: dict[tuple, list[str]] = {}
    for m in todo:
        key = (m.arch, str(m.arch_config), shapes[m.task].n_classes, m.stack_key())
        groups.setdefault(key, []).append(m.member_id)
    for w in range(1, 6):
        shares = [shard_members(todo, shapes, World(rank=r, world_size=w)) for r in range(w)]
        again = [shard_members(todo, shapes, World(rank=r, world_size=w)) for r in range(w)]
        assert shares == again
        ids = [m.member_id for share in shares for m in share]
        assert sorted(ids) == sorted(m.member_id for m in todo)  # complete and disjoint
        assert len(set(ids)) == len(ids)
        for group in groups.values():
            per_rank = [[m.member_id for m in s if m.member_id in group] for s in shares]
            assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1
            assert [i for part in per_rank for i in part] == group  # contiguous, grid order
    # One rank: everything, grouped as stacks are.
    (alone,) = [shard_members(todo, shapes, World())]
    assert sorted(m.member_id for m in alone) == sorted(m.member_id for m in todo)


def test_stack_composition_per_rank(digits, members):
    """Each rank gets 3 members of the 3-class group and 1-2 of the 10-class one: with
    stacks of 2, each trains 3 stacks (the kill scenario relies on it)."""
    shapes = task_shapes(members, digits)
    for r in range(2):
        share = shard_members(members, shapes, World(rank=r, world_size=2))
        assert len(_group_stacks(share, shapes, OPTIONS.max_stack)) == 3


# ---- bad input ----------------------------------------------------------------------------


def test_an_active_world_needs_a_zoo_folder(digits, members):
    with pytest.raises(InvalidParameterError, match="root"):
        train_zoo(members, digits, options=OPTIONS, world=World(rank=0, world_size=2))


def test_a_rank_that_does_not_see_the_folder_says_so(tmp_path):
    (tmp_path / ".world-present").write_bytes(b"x")
    sharded._check_shared(tmp_path, ".world-present", World(rank=1, world_size=2))
    with pytest.raises(DistributedSetupError, match="filesystem every rank"):
        sharded._check_shared(tmp_path, ".world-absent", World(rank=1, world_size=2))


def test_clean_stale_tmp_removes_part_temporaries_and_tokens(tmp_path):
    (tmp_path / PARTS_DIR).mkdir()
    stale = [tmp_path / PARTS_DIR / ".abc.parquet.x1.tmp", tmp_path / ".world-0123"]
    keep = tmp_path / PARTS_DIR / "abc.parquet"
    for f in [*stale, keep]:
        f.write_bytes(b"x")
    assert sorted(clean_stale_tmp(tmp_path)) == sorted(stale)
    assert keep.exists() and not any(f.exists() for f in stale)


# ---- part files ---------------------------------------------------------------------------


def test_recover_zoo_adopts_matching_part_rows_with_metrics(reference, members, tmp_path):
    ref_root, ref_index, _ = reference
    root = tmp_path / "zoo"
    roles = _seed_parts(ref_root, root, members)
    zoo = recover_zoo(root)
    ids = zoo.index["model_id"].tolist()
    assert sorted(ids) == sorted(ref_index["model_id"]) and len(set(ids)) == len(ids)
    ref = ref_index.set_index("model_id")
    for mid, role in roles.items():
        row = zoo.row(mid)
        assert row["sha256"] == ref.loc[mid, "sha256"]
        if role == "part":  # adopted with its metrics (the stale row's -1 is ignored)
            assert row["test_accuracy"] == ref.loc[mid, "test_accuracy"]
            assert row["stack_id"] == ref.loc[mid, "stack_id"]
        else:  # the part row's sha256 is wrong: adopted from the checkpoint, unscored
            assert pd.isna(row["test_accuracy"]) and row["stack_id"] == ""
    assert zoo.verify() == ([], [])
    assert len(list((root / PARTS_DIR).glob("*.parquet"))) == 3  # only read


def test_single_process_run_merges_leftover_parts(reference, members, digits, tmp_path):
    root = tmp_path / "zoo"
    _seed_parts(reference[0], root, members)
    before = _files(root)
    zoo, report = train_zoo(members, digits, options=OPTIONS, root=root)
    assert (report.n_trained, report.n_reused) == (0, 9)
    _assert_same_zoo(root, zoo.index, reference)
    assert _files(root) == before
    assert not list((root / PARTS_DIR).glob("*.parquet"))


# ---- two ranks ------------------------------------------------------------------------------


def test_sharded_zoo_equals_the_single_process_zoo(runs, reference):
    roots, out, _ = runs
    (status0, report0, index0), (status1, report1, index1) = out["fresh", 0], out["fresh", 1]
    assert (status0, status1) == ("ok", "ok"), (report0, report1)
    assert report0 == report1
    assert (report0["n_trained"], report0["n_reused"], report0["n_dropped"]) == (9, 0, 0)
    pd.testing.assert_frame_equal(index0, index1)
    _assert_same_zoo(roots["fresh"], index0, reference)
    assert len(set(index0["stack_id"])) == 6  # 3 stacks per rank
    _assert_clean(roots["fresh"])


def test_a_folder_written_by_another_run_fails_on_every_rank(runs):
    roots, out, extra = runs
    status0, message0, _ = out["locked", 0]
    status1, message1, _ = out["locked", 1]
    assert status0 == "ZooLockedError" and "another run" in message0
    assert (
        status1 == "DistributedRunError" and "rank 0" in message1 and "ZooLockedError" in message1
    )
    assert (roots["locked"] / INDEX_FILE).read_bytes() == extra["locked_index"]
    assert not list(roots["locked"].glob(f"{WORLD_TOKEN_PREFIX}*"))


def test_leftover_parts_are_merged_once_each(runs, reference):
    roots, out, extra = runs
    status, report, index = out["seeded", 0]
    assert status == "ok" and out["seeded", 1][0] == "ok", report
    assert (report["n_trained"], report["n_reused"]) == (0, 9)
    assert index["model_id"].is_unique
    _assert_same_zoo(roots["seeded"], index, reference)
    ref = reference[1].set_index("model_id")
    for mid, role in extra["roles"].items():  # the part rows kept their run's stack id
        expected = ref.loc[mid, "stack_id"] if role == "part" else ""
        assert index.set_index("model_id").loc[mid, "stack_id"] == expected
    _assert_clean(roots["seeded"])


def _finished(root: Path, files: dict) -> dict[str, str]:
    """``{model id: stack id}`` of the part files a killed run left."""
    parts = [pd.read_parquet(f) for f in sorted((root / PARTS_DIR).glob("*.parquet"))]
    rows = pd.concat(parts) if parts else pd.DataFrame(columns=INDEX_COLUMNS)
    assert all(f"{i}.safetensors" in files for i in rows["model_id"])
    return dict(zip(rows["model_id"], rows["stack_id"], strict=True))


def _assert_adopted(index: pd.DataFrame, finished: dict[str, str]) -> None:
    """The finished members' rows come from their part files (not re-scored)."""
    got = index.set_index("model_id")["stack_id"]
    assert {mid: got[mid] for mid in finished} == finished


def test_a_killed_rank_stops_the_others_with_a_clear_error(killed, digits, members):
    root, out, files = killed
    assert set(out) == {("kill", 0)}  # rank 1 died without reporting
    status, message, _ = out["kill", 0]
    assert status == "DistributedRunError" and "rerun the same command" in message
    shapes = task_shapes(members, digits)
    share0 = shard_members(members, shapes, World(rank=0, world_size=2))
    share1 = shard_members(members, shapes, World(rank=1, world_size=2))
    first1 = _group_stacks(share1, shapes, OPTIONS.max_stack)[0][1]
    expected = {m.member_id for m in [*share0, *first1]}
    assert set(_finished(root, files)) == expected  # all of rank 0's stacks, rank 1's first
    assert set(files) == {f"{i}.safetensors" for i in expected}
    assert len(pd.read_parquet(root / INDEX_FILE)) == 0  # nothing reused; ranks never index
    assert (root / LOCK_FILE).read_text() == ""


def test_killed_run_resumes_in_one_process(killed, reference, members, digits, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(killed[0], root)
    finished = _finished(root, killed[2])
    zoo, report = train_zoo(members, digits, options=OPTIONS, root=root)
    assert (report.n_reused, report.n_trained) == (len(finished), 9 - len(finished))
    after = _files(root)
    assert {f: after[f] for f in killed[2]} == killed[2]  # finished files untouched
    _assert_adopted(zoo.index, finished)
    _assert_same_zoo(root, zoo.index, reference)
    _assert_clean(root)


def test_killed_run_resumes_on_two_ranks(runs, killed, reference):
    roots, out, _ = runs
    status, report, index = out["resume", 0]
    assert status == "ok" and out["resume", 1][0] == "ok", report
    finished = _finished(killed[0], killed[2])
    assert (report["n_reused"], report["n_trained"]) == (len(finished), 9 - len(finished))
    after = _files(roots["resume"])
    assert {f: after[f] for f in killed[2]} == killed[2]
    _assert_adopted(index, finished)
    _assert_same_zoo(roots["resume"], index, reference)
    _assert_clean(roots["resume"])


def test_an_error_on_one_rank_is_raised_on_every_rank(runs):
    roots, out, _ = runs
    good, bad = expand_grid(DIVERGING_GRID, {"digits": 10})
    status1, message1, _ = out["diverge", 1]
    assert status1 == "NonFiniteWeightsError" and bad.member_id in message1
    status0, message0, _ = out["diverge", 0]
    assert status0 == "DistributedRunError" and "rank 1" in message0
    assert "NonFiniteWeightsError" in message0
    # Rank 0's finished stack is kept for the next run; no index lists it yet.
    (part,) = (roots["diverge"] / PARTS_DIR).glob("*.parquet")
    assert pd.read_parquet(part)["model_id"].tolist() == [good.member_id]
    assert len(pd.read_parquet(roots["diverge"] / INDEX_FILE)) == 0
