"""The DVC workflow on the ``test`` environment, in a temporary git copy of the project.

One ``dvc repro`` runs every stage (``kedro run --env test --pipelines=<name>``); a second
does nothing; a parameter edit reruns only the stages that read it (and the report that
reads their outputs); ``dvc metrics show`` / ``dvc plots show`` render; ``dvc push`` to a
folder remote and ``dvc pull`` restore a deleted output byte for byte; a params file
without a key a stage declares, a setting Kedro rejects and an environment switch without
its data root each stop with a message that names what to fix, and nothing is lost.

The tests share one project and run in file order; each leaves it reproduced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
KEEP = ("conf/", "src/", "data/")
KEEP_FILES = {"dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore",
              "pyproject.toml", ".telemetry"}  # fmt: skip
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "KEDRO_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "OMP_NUM_THREADS": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}
FUSION_TEST = "conf/test/parameters_fusion.yml"
FUSION_BASE = "conf/base/parameters_fusion.yml"
FUSION_MODELS = "data/test/06_models/fusion"


def run(root: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``cmd`` in ``root``; stdout and stderr together in ``.stdout``."""
    proc = subprocess.run(
        cmd, cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}"
    return proc


def dvc(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run(root, str(BIN / "dvc"), *args, ok=ok)


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"^Running stage '(\w+)'", proc.stdout, re.M))


def changed(root: Path) -> set[str]:
    """Stages ``dvc status`` reports as changed."""
    return set(json.loads(dvc(root, "status", "--json").stdout))


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def edit(root: Path, rel: str, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` (once) in ``root/rel``; return the original text."""
    path = root / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not once in {rel}"
    path.write_text(text.replace(old, new))
    return text


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git copy of the project (tracked files and the new ones git does not ignore),
    switched to the test environment, its DVC remote a temporary folder."""
    root = tmp_path_factory.mktemp("dvc_project")
    listing = run(ROOT, "git", "ls-files", "--cached", "--others", "--exclude-standard")
    for rel in listing.stdout.splitlines():
        if (rel.startswith(KEEP) or rel in KEEP_FILES) and (ROOT / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, root / rel)
    (root / "params.yaml").write_text("kedro_env: test\ndata_root: data/test\n")
    run(root, "git", "init", "-q")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-q", "-m", "project")
    dvc(root, "remote", "modify", "--local", "local", "url", str(root.parent / "remote"))
    return root


@pytest.fixture(scope="module")
def first_repro(project) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = dvc(project, "repro")
    print(f"dvc repro of every stage on --env test: {time.perf_counter() - start:.0f} s")
    return proc


def test_repro_runs_every_stage(project, first_repro):
    assert ran(first_repro) == set(STAGES)
    assert "kedro run --env test --pipelines=fusion" in first_repro.stdout
    for stage in STAGES:
        assert (project / f"data/test/08_reporting/{stage}/provenance.json").is_file()
        assert json.loads((project / f"data/test/08_reporting/{stage}/metrics.json").read_text())
    outside = [
        p for p in (project / "data").rglob("*")
        if p.is_file() and p.name != ".gitkeep" and "test" not in p.relative_to(project).parts
    ]  # fmt: skip
    assert not outside, f"the test env wrote outside data/test: {outside[:5]}"


def test_second_repro_does_nothing(project, first_repro):
    proc = dvc(project, "repro")
    assert ran(proc) == set() and "Data and pipelines are up to date." in proc.stdout


def test_base_parameter_change_marks_only_fusion(project, first_repro):
    # fusion.settings.ot.recompute_bn_stats is set in conf/base only: the test env reads it
    text = edit(project, FUSION_BASE, "recompute_bn_stats: false", "recompute_bn_stats: true")
    try:
        assert changed(project) == {"fusion"}
        status = dvc(project, "status").stdout
        assert "conf/base/parameters_fusion.yml" in status and "modified:" in status
    finally:
        (project / FUSION_BASE).write_text(text)
    assert changed(project) == set()


def test_env_parameter_change_reruns_only_fusion_and_report(project, first_repro):
    edit(project, FUSION_TEST, "ot: {n_samples: 50}", "ot: {n_samples: 40}")
    assert changed(project) == {"fusion"}
    proc = dvc(project, "repro")
    assert ran(proc) == {"fusion", "report"}, proc.stdout[-3000:]
    assert ran(dvc(project, "repro")) == set()


def test_metrics_and_plots_show(project, first_repro, tmp_path):
    shown = dvc(project, "metrics", "show").stdout
    for stage in ("fusion", "report"):
        assert f"data/test/08_reporting/{stage}/metrics.json" in shown
    values = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    assert values, "dvc metrics show --json printed no metrics"
    out = tmp_path / "plots"
    dvc(project, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    for png in ("accuracy_vs_k.png", "reliability.png", "accuracy_vs_obtain_cost.png"):
        assert png in html
    assert len(list(out.rglob("*.png"))) >= len(STAGES)


def test_push_then_pull_restores_a_deleted_output(project, first_repro):
    before = digest(project / FUSION_MODELS)
    assert before
    pushed = dvc(project, "push").stdout
    assert re.search(r"\d+ files? pushed", pushed), pushed
    shutil.rmtree(project / FUSION_MODELS)
    status = dvc(project, "status").stdout
    assert re.search(rf"fusion:\s+changed outs:\s+deleted:\s+{FUSION_MODELS}\n", status), status
    assert changed(project) == {"fusion"}
    shutil.rmtree(project / ".dvc" / "cache")  # the copy must come from the remote
    dvc(project, "pull")
    assert digest(project / FUSION_MODELS) == before
    assert changed(project) == set()


def test_params_file_without_a_declared_key_is_named(project, first_repro):
    metrics = project / "data/test/08_reporting/fusion/metrics.json"
    kept = metrics.read_bytes()
    text = (project / FUSION_BASE).read_text()
    params = yaml.safe_load(text)
    del params["zoo_fusion"]
    (project / FUSION_BASE).write_text(yaml.safe_dump(params))
    try:
        status = dvc(project, "status").stdout
        assert re.search(r"conf/base/parameters_fusion.yml:\s+deleted:\s+zoo_fusion", status)
        proc = dvc(project, "repro", "fusion", ok=False)
        assert proc.returncode != 0
        assert (
            "Parameters 'zoo_fusion' are missing from 'conf/base/parameters_fusion.yml'"
            in proc.stdout
        )
        assert "Running stage" not in proc.stdout  # DVC stopped before Kedro ran
    finally:
        (project / FUSION_BASE).write_text(text)
    # DVC removed the stage's cached outs before it checked the params; the uncached
    # metrics are persist: true; `dvc checkout` brings the rest back from the cache
    assert metrics.read_bytes() == kept
    dvc(project, "checkout", "fusion")
    assert changed(project) == set()


def test_setting_kedro_rejects_is_named(project, first_repro):
    before = digest(project / FUSION_MODELS)
    text = edit(project, FUSION_TEST, "ks: [2, 4]", "ks: [1, 4]")
    try:
        proc = dvc(project, "repro", "fusion", ok=False)
        assert proc.returncode != 0
        assert "fusion.settings.ks must be >= 2" in proc.stdout
        assert "failed to reproduce 'fusion'" in proc.stdout
    finally:
        (project / FUSION_TEST).write_text(text)
    dvc(project, "checkout", "fusion")
    assert digest(project / FUSION_MODELS) == before
    assert changed(project) == set()


def test_switching_env_without_its_data_root_is_refused(project, first_repro):
    proc = dvc(project, "exp", "run", "-S", "kedro_env=gpu", "zoo", ok=False)
    run(project, "git", "checkout", "--", "params.yaml")
    assert proc.returncode != 0
    assert "kedro_env=gpu with data_root=data/test" in proc.stdout
    assert "conf/gpu/globals.yml has data_root=data/gpu" in proc.stdout
    assert "> kedro run" not in proc.stdout  # the guard stopped the stage before Kedro
    dvc(project, "checkout")
    assert changed(project) == set()
