"""Kill the zoo job at many points of a run, rerun it, and measure the work lost.

For each kill point a fresh zoo folder (in a temporary directory: the project's data/ is
never touched) is trained by a child process running :func:`weightspace.zoo.train_zoo`
with write-through; the child is killed (SIGKILL at a time spread over the run, SIGKILL
while an index write is in progress, or SIGINT), then rerun to completion. Per kill point
the table gives the seconds into training, the stacks finished before the kill, the
members retrained by the rerun (trained before the kill but not reused) and the largest
stack; the headline is the worst ``members retrained / stack size`` (target: <= 1, at
most the stack in flight is lost).

Usage::

    python benchmarks/zoo_kill_resume.py                      # the base zoo, 10 kill points
    python benchmarks/zoo_kill_resume.py --env test
    python benchmarks/zoo_kill_resume.py --params zoo.grid.seeds=2,zoo.run.max_stack=16

Writes ``benchmarks/results/zoo_kill_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline_targets import code_version

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "zoo_kill_resume.json"


# ---- parameters -------------------------------------------------------------------------------


def zoo_params(env: str, overrides: str) -> dict[str, Any]:
    """``zoo`` parameters as ``kedro run --env <env> --params <overrides>`` sees them."""
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        conf_source=str(ROOT / "conf"),
        base_env="base",
        default_run_env=env,
        merge_strategy={"parameters": "soft"},
    )
    params = json.loads(json.dumps(loader["parameters"]["zoo"]))
    for item in filter(None, (s.strip() for s in overrides.split(","))):
        key, _, value = item.partition("=")
        path = key.split(".")
        if path[0] == "zoo":
            path = path[1:]
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value)
    params["run"]["progress"] = False
    return params


# ---- child: one (possibly killed) zoo run -----------------------------------------------------


def child(root: str, params: dict[str, Any], progress: str, pause_save_at: int) -> None:
    """Train the zoo into ``root``; log stack starts/ends to ``progress``; print a report."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from weightspace.zoo import ZooRunOptions, build, folder, train_zoo
    from weightspace_kedro.pipelines.zoo.nodes import load_datasets, plan_members

    log = open(progress, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    t0 = time.perf_counter()

    def mark(event: str, n: int = 0) -> None:
        log.write(f"{time.perf_counter() - t0:.3f} {event} {n}\n")
        os.fsync(log.fileno())

    train_one, add, write_index = build._train_one_stack, folder.ZooWriter.add, folder._write_index
    n_written, in_add = [0], [False]

    def train_one_stack(arch, chunk, *args, **kwargs):
        mark("start", len(chunk))
        return train_one(arch, chunk, *args, **kwargs)

    def writer_add(self, rows, tensors):
        in_add[0] = True
        out = add(self, rows, tensors)
        in_add[0] = False
        n_written[0] += 1
        mark("done", len({r["member_id"] for r in out}))
        return out

    def slow_write_index(root_, index):
        if pause_save_at and in_add[0] and n_written[0] + 1 == pause_save_at:
            from weightspace.atomic import atomic_path

            with atomic_path(Path(root_) / "index.parquet") as tmp:
                index.to_parquet(tmp, index=False)
                mark("saving")
                time.sleep(60)  # killed here: checkpoints written, index not yet
        write_index(root_, index)

    build._train_one_stack = train_one_stack
    folder.ZooWriter.add = writer_add
    folder._write_index = slow_write_index
    datasets = load_datasets(params["data"])
    members = plan_members(datasets, params["grid"], params["data"])
    mark("ready", len(members))
    _, report = train_zoo(members, datasets, options=ZooRunOptions(**params["run"]), root=root)
    mark("finished")
    print(json.dumps({"n_trained": report.n_trained, "n_reused": report.n_reused}), flush=True)


# ---- parent -------------------------------------------------------------------------------


def _events(progress: Path) -> list[tuple[float, str, int]]:
    if not progress.exists():
        return []
    out = []
    for line in progress.read_text().splitlines():
        t, event, n = line.split()
        out.append((float(t), event, int(n)))
    return out


def _spawn(root: Path, params: dict, progress: Path, pause_save_at: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", str(root), json.dumps(params), str(progress)]
    cmd += [str(pause_save_at)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(progress.with_suffix(".err"), "a") as err:  # the child's logs and tracebacks
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )


def _wait_event(progress: Path, proc: subprocess.Popen, event: str, timeout: float) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for t, e, _ in _events(progress):
            if e == event:
                return t
        if proc.poll() is not None:
            raise RuntimeError(f"child exited before {event!r}: {proc.communicate()}")
        time.sleep(0.005)
    raise TimeoutError(f"no {event!r} within {timeout} s")


def _complete(root: Path, params: dict, progress: Path) -> dict:
    proc = _spawn(root, params, progress)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rerun failed ({proc.returncode}): {out}")
    return json.loads(out.strip().splitlines()[-1])


def reference(params: dict, tmp: Path) -> dict:
    """An uninterrupted run: training time, stacks and their sizes."""
    progress = tmp / "reference.log"
    _complete(tmp / "reference", params, progress)
    events = _events(progress)
    ready = next(t for t, e, _ in events if e == "ready")
    finished = next(t for t, e, _ in events if e == "finished")
    sizes = [n for _, e, n in events if e == "start"]
    return {"train_seconds": finished - ready, "stack_sizes": sizes, "n_members": events[0][2]}


def kill_point(params: dict, tmp: Path, i: int, how: str, at: float, pause_at: int) -> dict:
    """Run, kill (``how``: sigkill | sigint | saving), rerun; measure the work lost."""
    root, progress = tmp / f"kill{i}", tmp / f"kill{i}.log"
    proc = _spawn(root, params, progress, pause_save_at=pause_at if how == "saving" else 0)
    ready = _wait_event(progress, proc, "ready", 600)
    t_ready = time.monotonic()
    if how == "saving":
        killed_at = _wait_event(progress, proc, "saving", 3600) - ready
        proc.send_signal(signal.SIGKILL)
    else:
        while proc.poll() is None and time.monotonic() - t_ready < at:
            time.sleep(0.002)
        killed_at = time.monotonic() - t_ready
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
    proc.communicate()
    events = _events(progress)
    started = sum(n for _, e, n in events if e == "start")
    done = sum(n for _, e, n in events if e == "done")
    n_done = sum(1 for _, e, _ in events if e == "done")
    leftovers = sorted(p.name for p in [*root.glob(".*.tmp"), *root.glob("checkpoints/.*.tmp")])
    rerun = _complete(root, params, tmp / f"rerun{i}.log")
    return {
        "kill": how,
        "seconds_into_run": round(killed_at, 3),
        "stacks_finished_before_kill": n_done,
        "members_finished_before_kill": done,
        "members_started_before_kill": started,
        "tmp_files_left_by_kill": len(leftovers),
        "rerun_reused": rerun["n_reused"],
        "rerun_trained": rerun["n_trained"],
        "members_retrained": max(0, started - rerun["n_reused"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--env", default="base", help="Kedro environment of the zoo parameters")
    ap.add_argument(
        "--params", default="", help="overrides, e.g. zoo.grid.seeds=2,zoo.run.max_stack=8"
    )
    ap.add_argument("--kill-points", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    params = zoo_params(args.env, args.params)
    with tempfile.TemporaryDirectory(prefix="zoo-kill-") as d:
        tmp = Path(d)
        ref = reference(params, tmp)
        n_stacks, max_stack = len(ref["stack_sizes"]), max(ref["stack_sizes"])
        print(
            f"reference: {ref['n_members']} members, {n_stacks} stacks (max {max_stack}), "
            f"{ref['train_seconds']:.1f} s of training"
        )
        k = args.kill_points
        plan = [("sigkill", ref["train_seconds"] * (j + 0.5) / (k - 2), 0) for j in range(k - 2)]
        plan.append(("saving", 0.0, max(1, n_stacks // 2)))
        plan.append(("sigint", ref["train_seconds"] * 0.5, 0))
        rows = []
        for i, (how, at, pause_at) in enumerate(plan[:k]):
            row = kill_point(params, tmp, i, how, at, pause_at)
            row["max_stack_size"] = max_stack
            row["retrained_per_stack"] = round(row["members_retrained"] / max_stack, 3)
            rows.append(row)
            print(json.dumps(row))
    headline = max(r["retrained_per_stack"] for r in rows)
    cols = [
        ("kill", 8), ("seconds_into_run", 9), ("stacks_finished_before_kill", 9),
        ("members_retrained", 10), ("rerun_reused", 7), ("rerun_trained", 8),
        ("max_stack_size", 6), ("retrained_per_stack", 8),
    ]  # fmt: skip
    names = ["kill", "t [s]", "stacks ok", "retrained", "reused", "trained", "stack", "lost/stk"]
    print("\n" + " ".join(n.rjust(w) for n, (_, w) in zip(names, cols, strict=True)))
    for r in rows:
        print(" ".join(str(r[c]).rjust(w) for c, w in cols))
    ok = headline <= 1.0
    print(f"\nworst case: {headline:.3f} stacks of members retrained ({'OK' if ok else 'FAIL'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "env": args.env,
        "params": args.params,
        "reference": ref,
        "kill_points": rows,
        "headline_members_retrained_per_stack": headline,
        "target": "<= 1 (at most the stack in flight)",
        "ok": ok,
        **code_version(),  # the commit this figure comes from
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        root_, params_, progress_, pause_ = sys.argv[2:6]
        child(root_, json.loads(params_), progress_, int(pause_))
    else:
        sys.exit(main())
