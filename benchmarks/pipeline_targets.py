"""Shared by the ``*_targets.py`` benchmarks: run a pipeline, read its metrics, print rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Row = tuple[str, float, str, bool]


def pipeline_metrics(pipeline: str, env: str = "base", run: bool = True) -> dict:
    """``kedro run --pipeline=<pipeline> [--env=<env>]`` (unless ``run`` is False), then its
    ``data/08_reporting/<pipeline>/metrics.json``."""
    if run:
        cmd = [sys.executable, "-m", "kedro", "run", f"--pipeline={pipeline}"]
        if env != "base":
            cmd.append(f"--env={env}")
        environ = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
        subprocess.run(cmd, cwd=ROOT, env=environ, check=True)
    return json.loads((ROOT / f"data/08_reporting/{pipeline}/metrics.json").read_text())


def print_targets(rows: list[Row]) -> None:
    """One line per target: name, measured figure, goal, met or MISSED."""
    width = max(len(r[0]) for r in rows)
    print(f"{'target':<{width}}  {'measured':>10}  {'goal':<22} status")
    for name, value, goal, met in rows:
        print(f"{name:<{width}}  {value:>10.4f}  {goal:<22} {'met' if met else 'MISSED'}")
