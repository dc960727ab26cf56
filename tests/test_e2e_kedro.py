"""End to end: ``kedro run --env test`` in a scratch copy of the project.

The scratch copy keeps the user's ``data/`` untouched: it copies ``conf/`` and
``pyproject.toml`` and uses the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from weightspace.zoo import Zoo

pytestmark = pytest.mark.slow

KEDRO = str(Path(sys.executable).with_name("kedro"))
GOLDEN = Path(__file__).parent / "pipelines"


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(repo_root / name, root / name)
    shutil.copytree(repo_root / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    # Kedro wants a source folder inside the project; the package itself is the
    # installed (editable) one, so an empty folder suffices.
    (root / "src").mkdir()
    for layer in ("01_raw", "02_intermediate", "03_primary", "04_feature", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    return root


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [KEDRO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_kedro_run_env_test_zoo_then_vectorize(project):
    _kedro(project, "run", "--env", "test", "--pipelines", "zoo")
    metrics = json.loads((project / "data/test/08_reporting/zoo/metrics.json").read_text())
    assert metrics["n_models"] == 16 and metrics["run_n_trained"] == 16
    assert (project / "data/test/08_reporting/zoo/accuracy.png").stat().st_size > 10_000
    assert (project / "data/test/03_primary/zoo/index.parquet").exists()
    zoo = Zoo.load(project / "data/test/03_primary/zoo")
    assert zoo.verify() == ([], [])

    _kedro(project, "run", "--env", "test", "--pipelines", "vectorize")
    vec = json.loads((project / "data/test/08_reporting/vectorize/metrics.json").read_text())
    assert vec["n_models"] == len(zoo)  # final_only: false in conf/test: trajectories too
    assert vec["max_roundtrip_error_chunk"] == 0.0

    # Delete one checkpoint: only that member is retrained.
    victim = zoo.index[zoo.index["is_final"]].iloc[0]
    (project / "data/test/03_primary/zoo" / victim["path"]).unlink()
    _kedro(project, "run", "--env", "test", "--pipelines", "zoo")
    again = json.loads((project / "data/test/08_reporting/zoo/metrics.json").read_text())
    assert again["run_n_trained"] == 1 and again["run_n_reused"] == 15


def test_kedro_run_env_test_d2nwg(project):
    _kedro(project, "run", "--env", "test", "--pipelines", "d2nwg")
    metrics = json.loads((project / "data/test/08_reporting/d2nwg/metrics.json").read_text())
    required = [
        "seen_zoo_mean_acc", "seen_sampled_mean_acc", "seen_sampled_best_acc",
        "unseen_oracle_acc", "unseen_sampled_mean_acc", "unseen_random_init_acc",
        "unseen_finetune_sampled_acc", "unseen_finetune_random_acc",
        "unseen_finetune_nearest_acc", "novel_oracle_acc", "novel_sampled_mean_acc",
        "vae_recon_acc_ratio", "memorization_similarity", "noise_baseline_similarity",
        "sample_seconds_per_model",
    ]  # fmt: skip
    assert not [k for k in required if k not in metrics]
    assert all(0.0 <= metrics[k] <= 1.0 for k in required if k.endswith("acc"))
    assert metrics["n_zoo_heads"] == 12
    for plot in ("accuracy_hist", "finetune_curves", "latents"):
        assert (project / f"data/test/08_reporting/d2nwg/{plot}.png").stat().st_size > 5_000
    assert (project / "data/test/06_models/d2nwg/generator.safetensors").exists()
    # Scenario (b): whole networks over digits + 2 transforms, model retrieval.
    networks = [
        "networks_zoo_mean_acc", "networks_sampled_mean_acc", "networks_sampled_best_acc",
        "networks_retrieval_accuracy", "networks_retrieval_accuracy_l2",
        "networks_vae_recon_acc_ratio",
    ] + [
        f"networks_{d}_{m}"
        for d in ("digits", "digits_rotate90", "digits_invert")
        for m in ("zoo_mean_acc", "sampled_mean_acc", "sampled_best_acc", "retrieval_accuracy")
    ]  # fmt: skip
    assert not [k for k in networks if k not in metrics]
    assert all(0.0 <= metrics[k] <= 1.0 for k in networks if k != "networks_vae_recon_acc_ratio")
    assert metrics["networks_n_zoo"] == 6 and metrics["networks_n_datasets"] == 3
    assert metrics["networks_zoo_mean_acc"] > 0.5  # 2 epochs already beat chance (0.1)
    assert (project / "data/test/08_reporting/d2nwg/networks_accuracy.png").stat().st_size > 5_000
    assert (project / "data/test/06_models/d2nwg/networks_generator.safetensors").exists()
    for zoo in ("zoo_d2nwg_backbones", "zoo_d2nwg_heads", "zoo_d2nwg_networks"):
        assert Zoo.load(project / "data/test/03_primary" / zoo).verify() == ([], [])
    # Golden metrics of --env test (CPU, deterministic): every untimed number within a
    # tolerance that one flipped prediction of these tiny test sets cannot exceed.
    golden = json.loads((GOLDEN / "d2nwg" / "golden_metrics_test.json").read_text())
    off = {
        k: (metrics.get(k), v)
        for k, v in golden.items()
        if k not in metrics or abs(metrics[k] - v) > 0.03 + 0.05 * abs(v)
    }
    assert not off, off


FUSION_KEYS = [
    "model_a_acc", "model_b_acc", "ensemble_acc", "vanilla_avg_acc", "otfusion_acc",
    "clafusion_acc", "clafusion_finetuned_acc", "parent_a_finetuned_acc",
    "parent_b_finetuned_acc", "random_init_finetuned_acc", "depth_aligned_b_finetuned_acc",
]  # fmt: skip


def test_kedro_run_env_test_fusion(project):
    _kedro(project, "run", "--env", "test", "--pipelines", "fusion")
    out = project / "data/test/08_reporting/fusion"
    metrics = json.loads((out / "metrics.json").read_text())
    assert not [k for k in [*FUSION_KEYS, "fusion_seconds"] if k not in metrics]
    assert all(0.0 <= metrics[k] <= 1.0 for k in FUSION_KEYS)
    assert metrics["fusion_seconds"] > 0
    # Both experiments (MLP on digits, VGG on MNIST-1D) and K = 2, 4 are reported.
    for kd in ("kd_fused_best_acc", "kd_pretrained_b_best_acc", "fused_student_oneshot_acc"):
        assert 0.0 <= metrics[f"mlp_teacher_student.{kd}"] <= 1.0
    for exp in ("mlp_digits", "vgg_mnist1d"):
        assert 0.0 <= metrics[f"{exp}.clafusion_acc"] <= 1.0
        assert 0.0 <= metrics[f"{exp}.k4_fused_acc"] <= 1.0
    tables = (out / "tables.md").read_text()
    assert "Table 1" in tables and "| mlp_digits | 4 |" in tables
    assert "Table 4" in tables and "Table 5" in tables
    for plot in ("accuracy_vs_k", "finetune_curves"):
        assert (out / f"{plot}.png").stat().st_size > 5_000
    assert (project / "data/test/06_models/fusion/clafusion_pairs.safetensors").exists()
    assert Zoo.load(project / "data/test/03_primary/zoo_fusion").verify() == ([], [])


def test_kedro_run_env_test_distill(project):
    _kedro(project, "run", "--env", "test", "--pipelines", "distill")
    out = project / "data/test/08_reporting/distill"
    metrics = json.loads((out / "metrics.json").read_text())
    methods = ["de", "single", "kd", "be", "latentbe", "latentbe_ods", "latentbe_confods",
               "latentbe_tdiv_sdiv"]  # fmt: skip
    keys = [f"{m}_{k}" for m in methods for k in ("acc", "nll", "ece", "cnll", "cece")]
    keys += [f"{m}_inference_seconds_per_example" for m in ("de", "be", "latentbe")]
    assert not [k for k in [*keys, "latentbe_be_agreement"] if k not in metrics]
    assert all(0.0 <= metrics[f"{m}_acc"] <= 1.0 for m in methods)
    assert "| KD + LatentBE |" in (out / "tables.md").read_text()
    assert (out / "reliability.png").stat().st_size > 5_000
    assert (project / "data/test/06_models/distill/latentbe_students.safetensors").exists()
    assert Zoo.load(project / "data/test/03_primary/zoo_distill").verify() == ([], [])


def test_kedro_run_env_test_weightformer(project):
    _kedro(project, "run", "--env", "test", "--pipelines", "weightformer")
    out = project / "data/test/08_reporting/weightformer"
    metrics = json.loads((out / "metrics.json").read_text())
    for m in ("single", "ensemble", "kd", "mlp", "wf", "wf_star"):
        assert 0.0 <= metrics[f"{m}_acc"] <= 1.0
    assert metrics["wf_seconds_per_student"] > 0
    assert (out / "teacher_number.png").stat().st_size > 5_000
    assert (project / "data/test/06_models/weightformer/generators.safetensors").exists()
    assert Zoo.load(project / "data/test/03_primary/zoo_weightformer").verify() == ([], [])


def test_kedro_run_env_test_superweights(project):
    _kedro(project, "run", "--env", "test", "--pipelines", "superweights")
    out = project / "data/test/08_reporting/superweights"
    metrics = json.loads((out / "metrics.json").read_text())
    for m in ("single", "de", "be", "swn_ho_q50", "swn_he_width_q50"):
        assert 0.0 <= metrics[f"{m}_acc"] <= 1.0
    for plot in ("anytime", "sensitivity", "interpolation", "clusters"):
        assert (out / f"{plot}.png").stat().st_size > 5_000
    assert (project / "data/test/07_model_output/superweights/result.json").exists()


def test_registry_lists_pipelines(project):
    out = _kedro(project, "registry", "list").stdout
    names = ("zoo", "vectorize", "d2nwg", "fusion", "distill", "weightformer", "superweights")
    for name in (*names, "__default__"):
        assert f"- {name}" in out


# ---- issue 14: the notebook tour, executed headless on the test environment -----------
TOUR = Path(__file__).parents[1] / "notebooks" / "weightspace_tour.ipynb"
TOUR_READS = ("zoo", "d2nwg", "fusion", "distill")
"""Pipelines whose outputs the tour reads (besides the report's comparison table)."""


def _run_missing(project: Path, pipelines: list[str]) -> None:
    """Run every pipeline whose ``metrics.json`` is absent: none after the tests above,
    all of them when this test runs alone (``pytest -k notebook``)."""
    for name in pipelines:
        if not (project / "data/test/08_reporting" / name / "metrics.json").exists():
            _kedro(project, "run", "--env", "test", "--pipelines", name)


def test_notebook_tour_executes(project, monkeypatch):
    import re

    import nbformat
    from nbclient import NotebookClient

    from weightspace.reporting.comparison import METHODS

    # The report: every method side by side (the tour's last section reads its table).
    _run_missing(project, list(dict.fromkeys([*TOUR_READS, *METHODS])))
    _kedro(project, "run", "--env", "test", "--pipelines", "report")
    out = project / "data/test/08_reporting/report"
    table = (out / "comparison.md").read_text()
    assert not [m for m in METHODS if f"| {m} |" not in table], table[:2000]
    assert (out / "comparison.csv").stat().st_size > 0

    # The project copy has no notebooks/ folder: the tour runs from its own folder there,
    # as it would in a checkout (kedro.ipython finds the project above it).
    folder = project / "notebooks"
    folder.mkdir(exist_ok=True)
    shutil.copy(TOUR, folder / TOUR.name)
    nb = nbformat.read(folder / TOUR.name, as_version=4)
    monkeypatch.setenv("WEIGHTSPACE_ENV", "test")
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "environment 'test'" in text
    assert re.search(r"D2NWG sampled heads, unseen tasks: mean test accuracy [01]\.\d{3}", text)
    assert re.search(r"fused accuracy: CLAFusion [01]\.\d{3} vs parents [01]\.\d{3}", text), text
    assert re.search(r"KD: \d+ epochs in [\d.]+ s", text)

    def images(cell) -> int:
        return sum("image/png" in o.get("data", {}) for o in cell.outputs)

    # zoo accuracies, sampled vs zoo heads, the KD curve, the comparison (last cell)
    assert sum(images(c) for c in code) >= 4
    last = code[-1]
    assert "report.comparison_csv" in last.source and images(last) == 1
    assert any("text/html" in o.get("data", {}) for o in last.outputs)  # the table
