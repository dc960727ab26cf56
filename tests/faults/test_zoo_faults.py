"""Fault injection on the zoo: lost index, damaged checkpoints, kills, locks, permissions.

A small write-through zoo (2 digits tasks x 4 seeds, MLP [8], stacks of 2 = 4 stacks) is
trained once per module; each test works on its own copy. Kill tests run the zoo in a
subprocess (a driver script written to ``tmp_path``) whose stacks are slowed down so that
the kill lands mid-run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from weightspace.atomic import sha256_file
from weightspace.data import load_dataset
from weightspace.errors import CorruptCheckpointError
from weightspace.zoo import ZooRunOptions, checkpoint, expand_grid, train_zoo
from weightspace.zoo.folder import LOCK_FILE, ZooFolderNotWritableError, ZooLockedError
from weightspace.zoo.zoo import INDEX_FILE, Zoo

pytestmark = pytest.mark.usefixtures("one_thread")

STACK = 2
GRID = {
    "tasks": [{"dataset": "digits"}, {"dataset": "digits", "classes": [0, 1, 2]}],
    "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
    "seeds": 4,
    "train": {"epochs": 2, "lr": 0.03},
}
CPU = ZooRunOptions(device="cpu", progress=False, max_stack=STACK)
METRICS = ["train_accuracy", "val_accuracy", "test_accuracy", "test_nll", "test_ece"]

DRIVER = textwrap.dedent(
    """
    import json, logging, sys, time
    import torch
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from weightspace.data import load_dataset
    from weightspace.zoo import ZooRunOptions, build, expand_grid, train_zoo

    root, cfg = sys.argv[1], json.loads(sys.argv[2])
    if cfg.get("slow"):
        original = build._train_one_stack

        def slow(*args, **kwargs):
            time.sleep(cfg["slow"])
            return original(*args, **kwargs)

        build._train_one_stack = slow
    members = expand_grid(cfg["grid"], {"digits": 10})
    options = ZooRunOptions(device="cpu", progress=False, max_stack=cfg["max_stack"])
    try:
        _, rep = train_zoo(members, {"digits": load_dataset("digits")}, options=options,
                           root=root)
    except BaseException as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        sys.exit(3)
    print(json.dumps({"n_trained": rep.n_trained, "n_reused": rep.n_reused}), flush=True)
    """
)


# ---- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return {"digits": load_dataset("digits")}


@pytest.fixture(scope="module")
def members():
    return expand_grid(GRID, {"digits": 10})


@pytest.fixture(scope="module")
def saved(digits, members, tmp_path_factory):
    """(folder of the fully trained zoo, its index)."""
    root = tmp_path_factory.mktemp("zoo")
    zoo, report = train_zoo(members, digits, options=CPU, root=root)
    assert report.n_trained == len(members) == 8
    assert not any(zoo.has_tensors_in_memory(m) for m in zoo.model_ids)
    return root, pd.read_parquet(root / INDEX_FILE)


@pytest.fixture
def root(saved, tmp_path):
    dst = tmp_path / "zoo"
    shutil.copytree(saved[0], dst)
    return dst


def _hashes(root: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((root / "checkpoints").glob("*.safetensors"))}


def _ckpt(root: Path, member_id: str) -> Path:
    return root / "checkpoints" / f"{member_id}.safetensors"


def _assert_complete(root: Path, members, original: pd.DataFrame | None = None) -> None:
    """The folder holds a verified zoo of every member (with the original metrics)."""
    zoo = Zoo.load(root)
    assert sorted(zoo.model_ids) == sorted(m.member_id for m in members)
    assert zoo.verify() == ([], [])
    assert not list(root.glob(".*.tmp")) and not list((root / "checkpoints").glob(".*.tmp"))
    if original is not None:
        a = zoo.index.set_index("model_id").sort_index()[METRICS]
        b = original.set_index("model_id").sort_index()[METRICS]
        pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=0)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _driver(tmp_path: Path, root: Path, slow: float = 0.0, grid: dict | None = None) -> list:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cfg = {"grid": grid or GRID, "max_stack": STACK, "slow": slow}
    return [sys.executable, str(script), str(root), json.dumps(cfg)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the driver")
        time.sleep(0.01)


def _n_files(root: Path) -> int:
    return len(list((root / "checkpoints").glob("*.safetensors")))


# ---- grids that change ----------------------------------------------------------------------


def test_smaller_grid_keeps_the_other_checkpoints(root, saved, members, digits):
    before = _hashes(root)
    small = members[:2] + members[4:6]  # seeds 0-1 of each task
    zoo, report = train_zoo(small, digits, options=CPU, root=root)
    assert (report.n_trained, report.n_reused) == (0, 4)
    assert sorted(zoo.model_ids) == sorted(m.member_id for m in small)
    assert _hashes(root) == before  # nothing deleted or rewritten
    # The whole grid again: the four outside the small grid are reused, not retrained.
    zoo, report = train_zoo(members, digits, options=CPU, root=root)
    assert (report.n_trained, report.n_reused) == (0, 8)
    assert _hashes(root) == before
    _assert_complete(root, members, saved[1])


def test_prune_true_removes_the_others_with_a_warning(root, members, digits, caplog):
    small = members[:2]
    gone = sorted(f"{m.member_id}.safetensors" for m in members[2:])
    options = dataclasses.replace(CPU, prune=True)
    with caplog.at_level(logging.WARNING):
        _, report = train_zoo(small, digits, options=options, root=root)
    assert (report.n_trained, report.n_reused) == (0, 2)
    assert sorted(_hashes(root)) == sorted(f"{m.member_id}.safetensors" for m in small)
    assert any("prune" in w and all(g in w for g in gone) for w in _warnings(caplog))
    _assert_complete(root, small)


# ---- lost index ---------------------------------------------------------------------------


def test_deleted_index_is_rebuilt_from_the_checkpoints(root, saved, members, digits, caplog):
    before = _hashes(root)
    (root / INDEX_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        _, report = train_zoo(members, digits, options=CPU, root=root)
    assert (report.n_trained, report.n_reused) == (0, 8)  # nothing retrained
    assert any(INDEX_FILE in w and "missing" in w for w in _warnings(caplog))
    assert _hashes(root) == before
    _assert_complete(root, members, saved[1])  # metrics re-scored to the same values


# ---- damaged checkpoints --------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 100] ^= 0x01
    path.write_bytes(bytes(data))


def _nan(path: Path) -> None:
    """NaN weights, with the index's sha256 updated to match (a NaN that was saved)."""
    ckpt = checkpoint.read(path)
    state = {k: v.clone() for k, v in ckpt.state.items()}
    state["3.bias"][0] = float("nan")
    meta = {k: ckpt.metadata[k] for k in ("model_id", "member", "epoch")}
    sha = checkpoint.write(path, state, ckpt.arch, meta)
    index_path = path.parents[1] / INDEX_FILE
    index = pd.read_parquet(index_path)
    index.loc[index["model_id"] == path.stem, "sha256"] = sha
    index.to_parquet(index_path, index=False)


@pytest.mark.parametrize(
    ("damage", "why"), [(_truncate, "corrupt"), (_flip, "corrupt"), (_nan, "non-finite")]
)
def test_damaged_checkpoint_errors_then_retrain_replaces_only_it(
    root, saved, members, digits, damage, why
):
    victim = members[5].member_id
    path = _ckpt(root, victim)
    damage(path)
    others = {k: v for k, v in _hashes(root).items() if k != path.name}
    with pytest.raises(CorruptCheckpointError) as info:
        train_zoo(members, digits, options=CPU, root=root)
    message = str(info.value)
    assert str(path) in message and why in message
    assert "delete" in message and "zoo.run.on_corrupt: retrain" in message
    if why == "non-finite":
        assert "NaN" in message
    assert {k: v for k, v in _hashes(root).items() if k != path.name} == others  # untouched
    retrain = dataclasses.replace(CPU, on_corrupt="retrain")
    _, report = train_zoo(members, digits, options=retrain, root=root)
    assert (report.n_trained, report.n_reused) == (1, 7)
    assert {k: v for k, v in _hashes(root).items() if k != path.name} == others
    _assert_complete(root, members, saved[1])


@pytest.mark.parametrize("with_index", [True, False])
def test_foreign_checkpoint_under_another_name_is_not_reused(
    root, saved, members, digits, with_index
):
    # A 3-class member's file put in place of a 10-class member's.
    victim, foreign = members[0].member_id, members[4].member_id
    shutil.copyfile(_ckpt(root, foreign), _ckpt(root, victim))
    if with_index:
        with pytest.raises(CorruptCheckpointError, match=str(_ckpt(root, victim))):
            train_zoo(members, digits, options=CPU, root=root)
        options = dataclasses.replace(CPU, on_corrupt="retrain")
    else:  # no hash to compare: the metadata names another model, so it is not adopted
        (root / INDEX_FILE).unlink()
        options = CPU
    _, report = train_zoo(members, digits, options=options, root=root)
    assert (report.n_trained, report.n_reused) == (1, 7)
    assert checkpoint.read(_ckpt(root, victim)).metadata["model_id"] == victim
    _assert_complete(root, members, saved[1])


# ---- kills -------------------------------------------------------------------------------


def test_sigkill_during_training_loses_at_most_the_stack_in_flight(tmp_path, members, digits):
    root = tmp_path / "zoo"
    proc = subprocess.Popen(
        _driver(tmp_path, root, slow=1.0), env=_env(), stdout=subprocess.PIPE, text=True
    )
    _wait_for(lambda: _n_files(root) >= STACK, proc)
    time.sleep(0.2)  # inside the next stack
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    finished = _hashes(root)
    assert len(finished) % STACK == 0 and STACK <= len(finished) < len(members)
    assert Zoo.load(root).verify() == ([], [])  # the index lists exactly what is on disk
    _, report = train_zoo(members, digits, options=CPU, root=root)
    assert report.n_reused == len(finished)  # every finished stack reused
    assert report.n_trained == len(members) - len(finished)
    assert {k: v for k, v in _hashes(root).items() if k in finished} == finished
    _assert_complete(root, members)


def test_sigint_stops_cleanly_after_the_current_stack(tmp_path, members, digits):
    root = tmp_path / "zoo"
    proc = subprocess.Popen(
        _driver(tmp_path, root, slow=1.0), env=_env(), stdout=subprocess.PIPE, text=True
    )
    _wait_for(lambda: _n_files(root) >= STACK, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["error"] == "KeyboardInterrupt" and "interrupted after stack" in result["message"]
    finished = _hashes(root)
    assert len(finished) in (STACK, 2 * STACK)  # the stack in flight was finished and written
    zoo = Zoo.load(root)
    assert sorted(f"{m}.safetensors" for m in zoo.model_ids) == sorted(finished)
    assert zoo.verify() == ([], [])
    assert not list(root.glob(".*.tmp")) and not list((root / "checkpoints").glob(".*.tmp"))
    _, report = train_zoo(members, digits, options=CPU, root=root)
    assert (report.n_reused, report.n_trained) == (len(finished), len(members) - len(finished))
    _assert_complete(root, members)


def test_kill_during_saving_leftovers_are_cleaned_and_the_rerun_completes(
    root, saved, members, digits, caplog
):
    # What a kill between the checkpoint writes and the index write leaves behind: a
    # temporary checkpoint, a temporary index, an index that does not list the last
    # stack, and (worst case, non-atomic copies) a half-written index.
    before = _hashes(root)
    (root / "checkpoints" / f".{members[7].member_id}.safetensors.x1y2.tmp").write_bytes(b"x" * 99)
    (root / f".{INDEX_FILE}.a1b2.tmp").write_bytes(b"PAR1")
    data = (root / INDEX_FILE).read_bytes()
    (root / INDEX_FILE).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        _, report = train_zoo(members, digits, options=CPU, root=root)
    assert (report.n_trained, report.n_reused) == (0, 8)
    warned = _warnings(caplog)
    assert any("unreadable" in w for w in warned)
    assert _hashes(root) == before
    _assert_complete(root, members, saved[1])


def test_stale_tmp_files_are_cleaned_at_the_start_and_logged(root, members, digits, caplog):
    stale = [
        root / f".{INDEX_FILE}.abcd.tmp",
        root / "checkpoints" / f".{members[0].member_id}.safetensors.efgh.tmp",
    ]
    for f in stale:
        f.write_bytes(b"partial")
    with caplog.at_level(logging.WARNING):
        _, report = train_zoo(members, digits, options=CPU, root=root)
    assert report.n_trained == 0
    assert not any(f.exists() for f in stale)
    assert any("stale" in w and all(f.name in w for f in stale) for w in _warnings(caplog))
    _assert_complete(root, members)


# ---- concurrency and permissions -------------------------------------------------------


def test_second_concurrent_run_fails_fast_with_the_lock_holder(tmp_path, members, digits):
    root = tmp_path / "zoo"
    proc = subprocess.Popen(
        _driver(tmp_path, root, slow=0.5), env=_env(), stdout=subprocess.PIPE, text=True
    )
    _wait_for(
        lambda: (root / LOCK_FILE).exists() and b"pid" in (root / LOCK_FILE).read_bytes(), proc
    )
    start = time.monotonic()
    with pytest.raises(ZooLockedError) as info:
        train_zoo(members, digits, options=CPU, root=root)
    assert time.monotonic() - start < 2.0
    assert str(root) in str(info.value) and f"pid {proc.pid}" in str(info.value)
    proc.kill()  # a SIGKILL leaves the lock file behind, but the OS released the flock
    proc.wait(timeout=10)
    _, report = train_zoo(members, digits, options=CPU, root=root)
    assert report.n_reused + report.n_trained == 8 and report.n_reused % STACK == 0
    _assert_complete(root, members)


def test_stale_lock_of_a_killed_run_does_not_block(root, members, digits):
    (root / LOCK_FILE).write_text("pid 999999 on elsewhere since long ago\n")
    _, report = train_zoo(members, digits, options=CPU, root=root)
    assert report.n_reused == 8


def _can_drop_privileges(base: Path) -> str | None:
    """None when user ``nobody`` can run this interpreter and import the project from
    here (a fresh clone under a 0700 temporary folder cannot), else the reason."""
    if os.geteuid() != 0:
        return "not root: cannot run the driver as user nobody"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    probe = subprocess.run(
        [*_AS_NOBODY, sys.executable, "-c", "import weightspace.zoo"],
        env={**_env(), "HOME": str(base)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return None if probe.returncode == 0 else f"nobody cannot import the project: {probe.stderr}"


_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_read_only_folder_gives_a_clear_error(saved, tmp_path, members, monkeypatch):
    """As user ``nobody`` where that user can run the project; otherwise (root, whom chmod
    does not stop, in a folder nobody may not enter) with the probe write failing EACCES."""
    base = Path(tempfile.mkdtemp(prefix="zoo-ro-"))
    try:
        base.chmod(0o755)
        root = base / "zoo"
        shutil.copytree(saved[0], root)
        (root / LOCK_FILE).unlink(missing_ok=True)
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)  # readable by nobody, writable by root
        before = _hashes(root)
        if _can_drop_privileges(base) is None:
            cmd = [*_AS_NOBODY, *_driver(base, root)]
            env = {**_env(), "HOME": str(base)}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 3, done.stderr
            result = json.loads(done.stdout.strip().splitlines()[-1])
            assert result["error"] == ZooFolderNotWritableError.__name__
            message = result["message"]
        else:
            from weightspace.zoo import folder

            def denied(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            with monkeypatch.context() as mp:
                mp.setattr(folder.tempfile, "mkstemp", denied)
                with pytest.raises(ZooFolderNotWritableError) as err:
                    train_zoo(members, {"digits": load_dataset("digits")}, options=CPU, root=root)
            message = str(err.value)
        assert str(root) in message and "not writable" in message
        assert _hashes(root) == before  # nothing lost
        _, report = train_zoo(members, {"digits": load_dataset("digits")}, options=CPU, root=root)
        assert report.n_reused == 8  # as a user who may write, it completes
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_states_survive_write_through_bit_for_bit(root, members, digits):
    """Write-through gives the same checkpoints as training in memory and saving."""
    zoo, _ = train_zoo(members, digits, options=CPU)
    for m in members:
        ours = checkpoint.read(_ckpt(root, m.member_id)).state
        for k, v in zoo.state(m.member_id).items():
            assert torch.equal(ours[k], v)
