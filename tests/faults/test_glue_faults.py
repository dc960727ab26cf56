"""Fault battery, glue: pipeline names, global parameters, method settings, the Makefile,
DVC by-products and unsafe loads. Every case names the error and the key or file."""

from __future__ import annotations

import ast
import copy
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, merged_params
from weightspace.errors import InvalidParameterError

# ---------------------------------------------------------------- pipeline registry


def test_unknown_pipeline_lists_the_registered_ones(monkeypatch):
    from kedro.framework.project import pipelines as project_pipelines

    from weightspace_kedro import pipeline_registry as reg

    monkeypatch.setattr(project_pipelines, "_requested_pipelines", ["nonexistent"], raising=False)
    with pytest.raises(InvalidParameterError, match="no pipeline named 'nonexistent'") as err:
        reg.register_pipelines()
    for name in ("d2nwg", "fusion", "distill", "weightformer", "superweights", "zoo"):
        assert name in str(err.value)


# ---------------------------------------------------------------- global parameters


class _Catalog:
    def __init__(self, params: dict) -> None:
        self.params = {f"params:{k}": v for k, v in params.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def load(self, key: str):
        return self.params[key]


@pytest.mark.parametrize("bad", [0, -2, "two", True, 1.5])
def test_bad_thread_count_names_the_key(bad):
    from weightspace_kedro.hooks import WeightspaceHooks

    with pytest.raises(InvalidParameterError, match="threads"):
        WeightspaceHooks().before_pipeline_run({}, None, _Catalog({"threads": bad}))


def test_thread_count_is_applied():
    from weightspace_kedro.hooks import WeightspaceHooks

    before = torch.get_num_threads()
    try:
        WeightspaceHooks().before_pipeline_run({}, None, _Catalog({"threads": 1}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- method settings

_BUILD = {
    "distill": "weightspace_kedro.pipelines.distill.nodes",
    "weightformer": "weightspace_kedro.pipelines.weightformer.nodes",
    "superweights": "weightspace_kedro.pipelines.superweights.nodes",
}

_BAD = [
    ("superweights", ["protocol", "train", "tau"], 1.5, "tau"),
    ("superweights", ["protocol", "train", "lr"], -0.1, "lr"),
    ("superweights", ["protocol", "train", "epochs"], 0, "epochs"),
    ("superweights", ["protocol", "budgets", "q25"], -0.25, "q25"),
    ("superweights", ["protocol", "n_members"], 1, "n_members"),
    ("superweights", ["protocol", "kinds"], ["ho", "weird"], "weird"),
    ("superweights", ["protocol", "seeds"], [], "seeds"),
    ("superweights", ["protocol", "trian"], {}, "trian"),
    ("weightformer", ["protocol", "fit", "steps"], 0, "steps"),
    ("weightformer", ["protocol", "fit", "lr"], float("nan"), "lr"),
    ("weightformer", ["protocol", "n_train"], 0, "n_train"),
    ("weightformer", ["model", "d_model"], "big", "d_model"),
    ("distill", ["protocol", "kd", "lr"], -0.05, "lr"),
    ("distill", ["protocol", "kd", "epochs"], 0, "epochs"),
    ("distill", ["members"], 1, "members"),
    ("distill", ["unknown_key"], 1, "unknown_key"),
]


def _settings(pipeline: str) -> dict:
    return copy.deepcopy(merged_params("base")[pipeline]["settings"])


def _build(nodes, pipeline: str, params: dict):
    if pipeline == "distill":  # also resolves the teacher entry of the zoo grid
        return nodes.build_settings(params, merged_params("base")["zoo_distill"]["grid"])
    return nodes.build_settings(params)


def _set(block: dict, path: list[str], value) -> None:
    for k in path[:-1]:
        block = block.setdefault(k, {})
    block[path[-1]] = value


@pytest.mark.parametrize(("pipeline", "path", "value", "fragment"), _BAD)
def test_bad_method_settings_fail_in_the_first_node(pipeline, path, value, fragment):
    import importlib

    nodes = importlib.import_module(_BUILD[pipeline])
    params = _settings(pipeline)
    _set(params, path, value)
    start = time.perf_counter()
    with pytest.raises(InvalidParameterError, match=fragment) as err:
        _build(nodes, pipeline, params)
    assert time.perf_counter() - start < 30.0  # seconds, not a training run
    assert f"parameters_{pipeline}.yml" in str(err.value)


def test_base_settings_of_every_method_are_valid():
    import importlib

    for pipeline, module in _BUILD.items():
        _build(importlib.import_module(module), pipeline, _settings(pipeline))


# ---------------------------------------------------------------- Makefile, DVC, loads


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_find_the_venv_without_activation():
    venv_bin = ROOT / ".venv" / "bin"
    if not (venv_bin / "kedro").exists():
        pytest.skip("no .venv here (make test creates it)")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "tools"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert str(venv_bin / "kedro") in out and str(venv_bin / "dvc") in out


def test_dvc_ignores_bytecode_by_products():
    dvc = ROOT / ".venv" / "bin" / "dvc"
    if not dvc.exists():
        pytest.skip("no .venv here (make test creates it)")
    probe = ROOT / "src" / "weightspace" / "__pycache__" / "probe.cpython-311.pyc"
    out = subprocess.run(
        [str(dvc), "check-ignore", str(probe.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )  # fmt: skip
    assert out.returncode == 0 and "probe" in out.stdout


def _unsafe_loads(path: Path) -> list[str]:
    """``pickle.load(s)`` / ``torch.load`` calls without ``weights_only=True`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = f"{getattr(owner, 'id', '?')}.{node.func.attr}"
        if name in ("pickle.load", "pickle.loads"):
            found.append(f"{path}:{node.lineno} {name}")
        if name == "torch.load":
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value
                for k in node.keywords
            )
            if not safe:
                found.append(f"{path}:{node.lineno} {name} without weights_only=True")
    return found


def test_no_unpickling_of_user_files():
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    files += list((ROOT / "benchmarks").rglob("*.py"))
    bad = [hit for f in files if "faults" not in f.parts for hit in _unsafe_loads(f)]
    assert not bad, bad


def test_the_unsafe_load_scan_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import pickle, torch\npickle.load(f)\ntorch.load(p)\n")
    assert len(_unsafe_loads(probe)) == 2


# ---------------------------------------------------------------- environments


@pytest.mark.parametrize("env", ["test", "gpu"])
def test_each_environment_writes_its_own_data_folder(env):
    from kedro.config import OmegaConfigLoader

    catalog = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=env)
    paths = [
        entry.get("path") or entry.get("filepath")
        for entry in catalog["catalog"].values()
        if isinstance(entry, dict) and (entry.get("path") or entry.get("filepath"))
    ]
    assert paths and all(p.startswith(f"data/{env}/") for p in paths), paths
    params = merged_params(env)
    for value in (
        params["superweights"]["settings"].get("journal_dir"),
        params["d2nwg_heads"]["settings"]["generator"].get("checkpoint_dir"),
    ):
        assert value is None or value.startswith(f"data/{env}/")


def test_base_environment_writes_under_data():
    from kedro.config import OmegaConfigLoader

    catalog = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    for entry in catalog["catalog"].values():
        path = isinstance(entry, dict) and (entry.get("path") or entry.get("filepath"))
        if path:
            assert path.startswith("data/") and not path.startswith(("data/test", "data/gpu"))
