"""End to end: ``torchrun --nproc_per_node=2 -m weightspace_kedro run --pipelines zoo``.

Two gloo processes on the CPU share the test zoo's members; rank 0 merges the index and
alone writes the reports. The zoo equals the one a plain ``kedro run`` trains: the MLP
members bit for bit, the conv members to float noise (a batched convolution's algorithm
depends on how many members share its stack). A second launch reuses every member.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightspace.zoo import Zoo

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path, repo_root) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(repo_root / name, root / name)
    shutil.copytree(repo_root / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    return root


def _run(project: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1", "WEIGHTSPACE_DIST_TIMEOUT": "120"}  # fmt: skip
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_torchrun_zoo_equals_the_single_process_zoo(project, tmp_path):
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                "weightspace_kedro", "run", "--env", "test", "--pipelines", "zoo"]  # fmt: skip
    proc = _run(project, *torchrun)
    log = proc.stdout + proc.stderr
    assert "rank 1 of 2: training" in log and "rank 0 of 2: training" in log
    zoo_dir = project / "data/test/03_primary/zoo"
    metrics = json.loads((project / "data/test/08_reporting/zoo/metrics.json").read_text())
    assert metrics["n_models"] == 16 and metrics["run_n_trained"] == 16
    assert not list(zoo_dir.glob("parts/*")) and not list(zoo_dir.glob(".world-*"))
    sharded = Zoo.load(zoo_dir)
    assert sharded.verify() == ([], [])
    shutil.copytree(zoo_dir, tmp_path / "sharded")

    again = _run(project, *torchrun)
    metrics = json.loads((project / "data/test/08_reporting/zoo/metrics.json").read_text())
    assert metrics["run_n_reused"] == 16 and metrics["run_n_trained"] == 0, again.stderr[-2000:]

    shutil.rmtree(project / "data")
    _run(project, str(BIN / "kedro"), "run", "--env", "test", "--pipelines", "zoo")
    single, sharded = Zoo.load(zoo_dir), Zoo.load(tmp_path / "sharded")
    assert single.model_ids == sharded.model_ids
    for mid in single.model_ids:
        a, b = single.state(mid), sharded.state(mid)
        if single.row(mid)["arch"] == "mlp":
            assert single.row(mid)["sha256"] == sharded.row(mid)["sha256"]
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            for k in a:
                torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    cols = ["model_id", "test_accuracy", "epoch"]
    assert single.index[cols].round(6).equals(sharded.index[cols].round(6))


def test_torchrun_d2nwg_reaches_the_golden_metrics(project):
    """The whole D2NWG pipeline on 2 ranks (zoos sharded, VAE and diffusion data-parallel,
    rank 0 evaluates) gives the single-process golden metrics: the generators follow the
    single-process runs up to float noise, so every metric agrees to 1e-3 (relative)."""
    proc = _run(project, str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                "weightspace_kedro", "run", "--env", "test", "--pipelines", "d2nwg")  # fmt: skip
    assert "rank 1 of 2: 21 shared node(s)" in proc.stdout + proc.stderr
    metrics = json.loads((project / "data/test/08_reporting/d2nwg/metrics.json").read_text())
    golden = json.loads((Path(__file__).parent / "pipelines/d2nwg/golden_metrics_test.json")
                        .read_text())  # fmt: skip
    assert set(golden) <= set(metrics)
    far = {k: (v, metrics[k]) for k, v in golden.items() if isinstance(v, (int, float))
           and abs(metrics[k] - v) > 1e-3 * max(1.0, abs(v))}  # fmt: skip
    assert not far, far


def test_two_hosts_emulated_by_two_torchrun_agents(project):
    """The README's two-host command on one machine: two torchrun agents (one process
    each, ``--nnodes=2``, c10d rendezvous) train one zoo together."""
    from dist_helpers import free_port

    port = free_port()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "torchrun"), "--nnodes=2", "--nproc_per_node=1", "--rdzv_id=zoo-test",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "-m",
           "weightspace_kedro", "run", "--env", "test", "--pipelines", "zoo"]  # fmt: skip
    agents = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    logs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(x[-3000:] for x in logs)
    both = "".join(logs)
    assert "rank 0 of 2: training 8 of 16" in both and "rank 1 of 2: training 8 of 16" in both
    metrics = json.loads((project / "data/test/08_reporting/zoo/metrics.json").read_text())
    assert metrics["n_models"] == 16 and metrics["run_n_trained"] == 16
    assert Zoo.load(project / "data/test/03_primary/zoo").verify() == ([], [])


def test_torchrun_weightformer_shares_the_teacher_sets(project):
    """WeightFormer under torchrun with 2 teacher sets per step: each rank generates one
    set's students (data-parallel); the pipeline completes and rank 0 reports."""
    proc = _run(project, str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                "weightspace_kedro", "run", "--env", "test", "--pipelines", "weightformer",
                "--params", "weightformer.settings.protocol.fit.sets_per_step=2")  # fmt: skip
    assert "WeightFormer: sets_per_step" not in proc.stdout + proc.stderr  # no fallback
    metrics = json.loads((project / "data/test/08_reporting/weightformer/metrics.json")
                         .read_text())  # fmt: skip
    assert 0.0 <= metrics["wf_acc"] <= 1.0
