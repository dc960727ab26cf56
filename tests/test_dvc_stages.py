"""DVC stages that cannot drift from the code, the parameters and the catalog they run.

``dvc.yaml`` has one stage per registered pipeline, ``kedro run --env ${kedro_env}
--pipelines=<name>``, with ``kedro_env`` and ``data_root`` from ``params.yaml``. For every
environment (``base``, ``test``, ``gpu``) these tests resolve the two variables as DVC
does and check, statically:

- deps: the whole library and every module of the Kedro glue that the run imports
  (walking the imports from the pipeline package and ``settings.py``), every catalog file,
  and exactly the files of other stages that the pipeline reads through the catalog;
- params: exactly the top-level keys the pipeline reads (``params:<key>...`` inputs) plus
  the global ones the hooks read, from the conf/base file that defines them, plus the
  environment's override files (which must exist and hold only keys the pipeline reads);
- outs, metrics, plots: every file the catalog writes for the pipeline lies under one of
  them, each of them holds something the catalog writes, none is declared twice;
- the environment switch: ``data_root`` agrees with ``conf/<env>/globals.yml`` and the
  guard that opens every stage says so when it does not.
"""

from __future__ import annotations

import ast
import importlib
import logging
import re
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT / "src" / "weightspace_kedro"
ENVS = ("base", "test", "gpu")
VARS = {"kedro_env", "data_root"}
GLOBAL_PARAMS = "conf/base/parameters.yml"
PROVENANCE = "{pipeline}.provenance"  # the catalog entry the project hook saves after a run


def _data_root(env: str) -> str:
    return yaml.safe_load((ROOT / "conf" / env / "globals.yml").read_text())["data_root"]


@cache
def stages(env: str) -> dict:
    """``dvc.yaml``'s stages with ``${kedro_env}`` / ``${data_root}`` set for ``env``."""
    text = (ROOT / "dvc.yaml").read_text()
    text = text.replace("${kedro_env}", env).replace("${data_root}", _data_root(env))
    return yaml.safe_load(text)["stages"]


def _pipeline_name(spec: dict) -> str:
    return re.search(r"--pipelines?[= ](\w+)", spec["cmd"][-1]).group(1)


@cache
def pipeline(name: str):
    return importlib.import_module(f"weightspace_kedro.pipelines.{name}").create_pipeline()


@cache
def catalog_resolver(env: str):
    """The project catalog of ``env`` (globals resolved), dataset factories included."""
    from kedro.config import OmegaConfigLoader
    from kedro.io.catalog_config_resolver import CatalogConfigResolver

    logging.getLogger("kedro.io.catalog_config_resolver").setLevel(logging.ERROR)
    loader = OmegaConfigLoader(
        str(ROOT / "conf"), base_env="base", default_run_env=env, merge_strategy={}
    )
    return CatalogConfigResolver(loader["catalog"])


def _path_of(env: str, dataset: str) -> str | None:
    config = catalog_resolver(env).resolve_pattern(dataset)
    path = config.get("filepath") or config.get("path")
    return None if path is None else PurePosixPath(path).as_posix()


def _entries(items: list) -> list[str]:
    """Paths of a dvc.yaml list whose items are ``path`` or ``{path: {options}}``."""
    return [next(iter(i)) if isinstance(i, dict) else str(i) for i in items or []]


def _declared(spec: dict) -> list[str]:
    return _entries(spec.get("outs")) + _entries(spec.get("metrics")) + _entries(spec.get("plots"))


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _params(spec: dict) -> dict[str, list[str] | None]:
    out: dict[str, list[str] | None] = {}
    for item in spec["params"]:
        ((path, keys),) = item.items()
        out[path] = None if keys is None or out.get(path, []) is None else out.get(path, []) + keys
    return out


def _reads(name: str) -> set[str]:
    """Top-level parameter keys pipeline ``name`` reads (its ``params:`` inputs)."""
    inputs = pipeline(name).inputs()
    return {i.removeprefix("params:").split(".")[0] for i in inputs if i.startswith("params:")}


def _top_keys(path: Path) -> set[str]:
    return set(yaml.safe_load(path.read_text()) or {})


def _hook_params() -> set[str]:
    """The global parameters the project hooks read for every pipeline."""
    from weightspace_kedro.provenance import HOOK_PARAMS

    return {p.removeprefix("params:") for p in HOOK_PARAMS}


STAGE_NAMES = sorted(stages("base"))
CASES = [(env, stage) for env in ENVS for stage in STAGE_NAMES]


# ---- one stage per pipeline, the environment switch -----------------------------------


def test_one_stage_per_registered_pipeline():
    from weightspace_kedro.pipeline_registry import available_pipelines

    assert available_pipelines() == STAGE_NAMES
    for name, spec in stages("base").items():
        assert spec["cmd"][-1] == f"kedro run --env base --pipelines={name}", name


def test_dvc_yaml_uses_only_the_environment_switch():
    used = set(re.findall(r"\$\{(\w+)\}", (ROOT / "dvc.yaml").read_text()))
    assert used == VARS, f"dvc.yaml interpolates {used - VARS}; params.yaml defines only {VARS}"
    switch = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(switch) == VARS


def test_params_yaml_data_root_is_its_environments():
    switch = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert switch == {"kedro_env": "base", "data_root": _data_root("base")}, (
        "params.yaml must select the embedded default: kedro_env: base with "
        "conf/base/globals.yml's data_root"
    )


def test_documented_switches_name_each_environments_data_root():
    pattern = r"-S kedro_env=(\w+) -S data_root=([\w/.-]+)"
    for name in ("dvc.yaml", "params.yaml", "README.md"):
        for env, root in re.findall(pattern, (ROOT / name).read_text()):
            assert root == _data_root(env), f"{name}: kedro_env={env} with data_root={root}"
    assert re.findall(pattern, (ROOT / "params.yaml").read_text())


def _guard(env: str, data_root: str) -> subprocess.CompletedProcess:
    text = (ROOT / "dvc.yaml").read_text()
    guard = yaml.safe_load(text)["stages"]["zoo"]["cmd"][0]
    guard = guard.replace("${kedro_env}", env).replace("${data_root}", data_root)
    assert guard.startswith('python -c "') and guard.endswith('"')
    code = guard.removeprefix('python -c "').removesuffix('"')
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("env", ENVS)
def test_guard_accepts_each_environments_data_root(env):
    proc = _guard(env, _data_root(env))
    assert proc.returncode == 0, proc.stderr


def test_guard_names_both_files_when_data_root_does_not_match():
    proc = _guard("gpu", "data")
    assert proc.returncode == 1
    assert "kedro_env=gpu with data_root=data" in proc.stderr
    assert "conf/gpu/globals.yml has data_root=data/gpu" in proc.stderr


def test_every_stage_opens_with_the_same_guard():
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    guards = {name: spec["cmd"][0] for name, spec in raw.items()}
    assert len(set(guards.values())) == 1 and all(len(s["cmd"]) == 2 for s in raw.values())


# ---- deps ------------------------------------------------------------------------------


def _module_path(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (ROOT / "src" / rel / "__init__.py", (ROOT / "src" / rel).with_suffix(".py")):
        if cand.exists():
            return cand
    return None


def _package_of(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT / "src").with_suffix("").parts)
    return parts[:-1]  # a module's package; an __init__'s own package


def _imported_names(node: ast.AST, path: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from . import nodes / from .settings import X
        package = _package_of(path)[: len(_package_of(path)) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _glue_imports(path: Path, seen: set[Path]) -> set[Path]:
    """Every ``weightspace_kedro`` module executed when ``path`` is imported: what it
    imports (absolute or relative), and the ``__init__`` of each package on the way."""
    if path in seen:
        return seen
    seen.add(path)
    for node in ast.walk(ast.parse(path.read_text())):
        for name in _imported_names(node, path):
            if not name.startswith("weightspace_kedro"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = _module_path(".".join(parts[:i]))
                if target is not None:
                    _glue_imports(target, seen)
    return seen


def _run_modules(name: str) -> set[Path]:
    """Glue modules a ``kedro run --pipelines=<name>`` executes: the pipeline package and
    ``settings.py`` (hooks, config loader), with everything they import.
    ``pipeline_registry.py`` is left out: it imports every pipeline package only to map
    names to ``create_pipeline``, which changes no output."""
    modules: set[Path] = set()
    for entry in (GLUE / "pipelines" / name / "__init__.py", GLUE / "settings.py"):
        modules |= _glue_imports(entry, set())
    return modules


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_depends_on_library_and_every_glue_module_it_runs(stage):
    spec = stages("base")[stage]
    deps = [str(d) for d in spec["deps"]]
    assert "src/weightspace" in deps, f"{stage}: depend on the whole library"
    modules = _run_modules(_pipeline_name(spec))
    missing = sorted(
        p.relative_to(ROOT).as_posix()
        for p in modules
        if not _under(p.relative_to(ROOT).as_posix(), deps) and p.name != "__init__.py"
    )
    assert not missing, f"dvc.yaml stage {stage!r} misses deps {missing}"
    code = [d for d in deps if d.startswith("src/weightspace_kedro/")]
    unused = [
        d for d in code if not any(_under(p.relative_to(ROOT).as_posix(), [d]) for p in modules)
    ]
    assert not unused, f"dvc.yaml stage {stage!r} depends on code its run never imports: {unused}"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_depends_on_every_catalog_file(stage):
    deps = [str(d) for d in stages("base")[stage]["deps"]]
    catalogs = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("conf/base/catalog*.yml"))
    assert set(catalogs) <= set(deps), f"{stage}: depend on {catalogs}"
    for env in ENVS[1:]:
        overrides = sorted(p.name for p in (ROOT / "conf" / env).glob("catalog*"))
        assert not overrides, (
            f"conf/{env} overrides the catalog ({overrides}): track it in dvc.yaml"
        )


@pytest.mark.parametrize(("env", "stage"), CASES)
def test_stage_data_deps_are_the_files_its_pipeline_reads(env, stage):
    spec = stages(env)[stage]
    name = _pipeline_name(spec)
    root = _data_root(env)
    written = {_path_of(env, d) for d in pipeline(name).all_outputs()}
    read = {_path_of(env, d) for d in pipeline(name).inputs() if not d.startswith("params:")}
    read = {p for p in read - written if p is not None}
    deps = {str(d) for d in spec["deps"] if str(d).startswith(root + "/")}
    assert deps == read, (
        f"{stage} under --env {env}: deps {sorted(deps)}, catalog reads {sorted(read)}"
    )
    producers = {p: s for s, other in stages(env).items() for p in _declared(other)}
    orphans = sorted(d for d in deps if d not in producers)
    assert not orphans, f"{stage}: {orphans} are outs of no stage"


# ---- params ----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_params_are_the_keys_its_pipeline_reads(stage):
    spec = stages("base")[stage]
    name = _pipeline_name(spec)
    listed = {
        path: keys
        for item in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["params"]
        for path, keys in item.items()
        if "${" not in path
    }
    assert all(keys for keys in listed.values()), f"{stage}: name the keys of each conf/base file"
    declared = {k for keys in listed.values() for k in keys}
    wanted = _reads(name) | _hook_params()
    assert declared == wanted, (
        f"{stage}: params list {sorted(declared)}, the pipeline and hooks read {sorted(wanted)}"
    )
    for path, keys in listed.items():
        absent = sorted(set(keys) - _top_keys(ROOT / path))
        assert not absent, f"{stage}: {path} does not define {absent}"


def test_global_parameters_file_holds_the_hooks_parameters():
    assert _top_keys(ROOT / GLOBAL_PARAMS) == _hook_params()


def test_each_parameter_key_is_defined_in_one_base_file():
    owners: dict[str, list[str]] = {}
    for path in sorted(ROOT.glob("conf/base/parameters*.yml")):
        for key in _top_keys(path):
            owners.setdefault(key, []).append(path.name)
    assert not {k: v for k, v in owners.items() if len(v) > 1}


@pytest.mark.parametrize(("env", "stage"), [c for c in CASES if c[0] != "base"])
def test_stage_tracks_the_environments_overrides(env, stage):
    spec = stages(env)[stage]
    name = _pipeline_name(spec)
    tracked = _params(spec)
    whole = [p for p, keys in tracked.items() if keys is None]
    assert whole, f"{stage}: track the override files of --env {env}"
    for path in whole:
        file = ROOT / path
        assert file.exists(), (
            f"dvc.yaml stage {stage!r} tracks {path} under --env {env}: create it (a comment "
            "and `{}` when the environment overrides nothing), or DVC stops with "
            f"\"dependency '{path}' does not exist\""
        )
        extra = sorted(_top_keys(file) - _reads(name) - _hook_params())
        assert not extra, f"{path} holds keys {extra} that {name} does not read"
    reads = _reads(name) | _hook_params()
    for file in sorted((ROOT / "conf" / env).glob("parameters*.yml")):
        path = file.relative_to(ROOT).as_posix()
        keys = tracked.get(path, [])
        covered = _top_keys(file) if keys is None else set(keys)
        untracked = sorted((_top_keys(file) & reads) - covered)
        assert not untracked, f"{stage} reads {untracked} from {path}, which it does not track"


# ---- outs, metrics, plots --------------------------------------------------------------


@pytest.mark.parametrize(("env", "stage"), CASES)
def test_stage_outs_match_the_catalog(env, stage):
    spec = stages(env)[stage]
    name = _pipeline_name(spec)
    datasets = set(pipeline(name).all_outputs()) | {PROVENANCE.format(pipeline=name)}
    written = {p for p in (_path_of(env, d) for d in datasets) if p is not None}
    declared = _declared(spec)
    assert len(declared) == len(set(declared)), f"{stage}: an out is declared twice"
    loose = sorted(p for p in written if not _under(p, declared))
    assert not loose, f"{stage} under --env {env}: the catalog writes {loose}, not DVC outs"
    empty = sorted(d for d in declared if not any(_under(p, [d]) for p in written))
    assert not empty, f"{stage} under --env {env}: outs {empty} hold nothing the catalog writes"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_metrics_are_uncached_json_and_plots_are_cached_images(stage):
    spec = stages("base")[stage]
    name = _pipeline_name(spec)
    metrics = spec.get("metrics") or []
    assert metrics, f"{stage}: declare the pipeline's metrics.json"
    for item in metrics:
        ((path, options),) = item.items()
        assert path.endswith("/metrics.json") and options == {"cache": False, "persist": True}, item
    assert f"data/08_reporting/{name}/metrics.json" in _entries(metrics)
    for path in _entries(spec.get("plots")):
        assert path.endswith(".png"), path
    provenance = _path_of("base", PROVENANCE.format(pipeline=name))
    assert provenance in _entries(spec["outs"]), f"{stage}: {provenance} is a cached out"


def test_no_path_is_the_out_of_two_stages():
    for env in ENVS:
        seen: dict[str, str] = {}
        for stage, spec in stages(env).items():
            for path in _declared(spec):
                clash = [s for p, s in seen.items() if _under(p, [path]) or _under(path, [p])]
                assert not clash, f"{path} ({stage}) overlaps an out of {clash}"
                seen[path] = stage


def test_dvcignore_keeps_bytecode_out_of_hashes():
    ignored = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored


def test_default_remote_is_a_folder_next_to_the_clone():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\s*remote = local$", config, re.M)
    assert re.search(r"^\s*url = \.\./\.\./weightspace-dvc-remote$", config, re.M)
    assert re.search(r"^\s*analytics = false$", config, re.M)
