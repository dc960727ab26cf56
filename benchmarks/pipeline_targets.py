"""Shared by the ``*_targets.py`` benchmarks: run a pipeline, read its metrics, print rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Row = tuple[str, float, str, bool]


def pipeline_metrics(pipeline: str, env: str = "base", run: bool = True) -> dict:
    """``kedro run --pipelines=<pipeline> [--env=<env>]`` (unless ``run`` is False), then its
    ``data/08_reporting/<pipeline>/metrics.json``."""
    if run:
        cmd = [sys.executable, "-m", "kedro", "run", f"--pipelines={pipeline}"]
        if env != "base":
            cmd.append(f"--env={env}")
        environ = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
        subprocess.run(cmd, cwd=ROOT, env=environ, check=True)
    return json.loads((data_root(env) / f"08_reporting/{pipeline}/metrics.json").read_text())


def data_root(env: str = "base") -> Path:
    """Where ``--env <env>`` writes (``conf/<env>/globals.yml``: data, data/test, data/gpu)."""
    return ROOT / "data" if env == "base" else ROOT / "data" / env


def print_targets(rows: list[Row]) -> None:
    """One line per target: name, measured figure, goal, met or MISSED."""
    width = max(len(r[0]) for r in rows)
    print(f"{'target':<{width}}  {'measured':>10}  {'goal':<22} status")
    for name, value, goal, met in rows:
        print(f"{name:<{width}}  {value:>10.4f}  {goal:<22} {'met' if met else 'MISSED'}")


CODE_PATHS = ("src", "conf", "dvc.yaml", "params.yaml", "pyproject.toml", "requirements.lock")
"""What decides a pipeline's outputs (README, benchmarks/ and tests do not)."""


def code_version() -> dict:
    """The commit the results come from: ``{"commit": sha, "dirty": bool}`` (tracked code,
    :data:`CODE_PATHS` and the benchmark scripts, changed since that commit); outside a git
    checkout (the GPU box gets a copy without ``.git``) the environment's
    ``WEIGHTSPACE_COMMIT`` names a clean commit, else ``{"commit": None}``."""
    if os.environ.get("WEIGHTSPACE_COMMIT"):
        return {"commit": os.environ["WEIGHTSPACE_COMMIT"], "dirty": False}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        scripts = ("benchmarks/*.py", "benchmarks/*.sh")  # the scripts, not their results
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS, *scripts)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    return {"commit": sha, "dirty": bool(dirty)}


def run_version(pipeline: str, env: str) -> dict:
    """The commit of the code that wrote the pipeline's outputs, from its
    ``provenance.json`` (written by the project hook at the end of the run), else
    :func:`code_version`. The hook calls a run dirty when any tracked file differed from
    the commit; when the code (:data:`CODE_PATHS`) in the work tree still equals that
    commit's, only other files (README, benchmarks) differed and the run counts as clean."""
    if os.environ.get("WEIGHTSPACE_COMMIT"):  # the GPU box: its copy's .git is not the run's
        return code_version()
    path = data_root(env) / "08_reporting" / pipeline / "provenance.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    commit = record.get("git_commit")
    if not commit:
        return code_version()
    dirty = bool(record.get("git_dirty"))
    if dirty:
        same = subprocess.run(["git", "diff", "--quiet", commit, "--", *CODE_PATHS], cwd=ROOT)
        dirty = same.returncode != 0
    return {"commit": commit, "dirty": dirty}


def write_results(
    pipeline: str,
    env: str,
    tag: str,
    rows: list[Row],
    metrics: dict,
    copies: Sequence[str],
    extra: dict | None = None,
) -> Path:
    """``benchmarks/results/<pipeline>_<env><tag>.json`` (device, the commit of the code
    that wrote the outputs (:func:`run_version`), targets, metrics, ``extra`` blocks such
    as timings) and copies of the report files
    ``copies`` (names under ``data/08_reporting/<pipeline>``) as
    ``<pipeline>_<env><tag>_<name>``; returns the JSON path."""
    import torch

    name = f"{pipeline}_{env}{tag}"
    out = ROOT / "benchmarks/results" / f"{name}.json"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {
        "device": device,
        **run_version(pipeline, env),
        **(extra or {}),
        "targets": [{"name": n, "measured": v, "goal": g, "met": bool(ok)} for n, v, g, ok in rows],
        "metrics": metrics,
    }
    out.write_text(json.dumps(result, indent=2))
    report = data_root(env) / "08_reporting" / pipeline
    for copy in copies:
        shutil.copy(report / copy, out.with_name(f"{name}_{copy}"))
    print(f"wrote {out.relative_to(ROOT)}")
    return out


def main(pipeline: str, doc: str, targets: Callable[[dict], list[Row]], copies: Sequence[str]):
    """The command line of a ``<pipeline>_targets.py`` benchmark: ``--env``, ``--no-run``,
    ``--tag``; runs the pipeline (unless ``--no-run``), prints the targets, writes results."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. _h200")
    args = parser.parse_args()
    metrics = pipeline_metrics(pipeline, args.env, run=not args.no_run)
    rows = targets(metrics)
    print_targets(rows)
    write_results(pipeline, args.env, args.tag, rows, metrics, copies)
