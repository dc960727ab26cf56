"""DVC stages whose dependencies cannot drift from the code they run.

Each stage runs ``kedro run --pipelines=<name>``; it must depend on the whole library
(``src/weightspace``, so a change to any network, metric or kernel reruns it) and on every
module of the Kedro glue that its pipeline imports, found by walking the imports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT / "src" / "weightspace_kedro"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_path(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (ROOT / "src" / rel / "__init__.py", (ROOT / "src" / rel).with_suffix(".py")):
        if cand.exists():
            return cand
    return None


def _glue_imports(path: Path, seen: set[Path]) -> set[Path]:
    """Every ``weightspace_kedro`` module reachable from ``path`` by imports."""
    if path in seen:
        return seen
    seen.add(path)
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            target = _module_path(name) if name.startswith("weightspace_kedro") else None
            if target is not None:
                _glue_imports(target, seen)
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_library_and_every_glue_module_it_imports(stage):
    spec = STAGES[stage]
    pipeline = re.search(r"--pipelines?[= ](\w+)", spec["cmd"]).group(1)
    deps = [str(d) for d in spec["deps"]]
    assert "src/weightspace" in deps, f"{stage}: depend on the whole library"
    entry = GLUE / "pipelines" / pipeline / "__init__.py"
    modules = _glue_imports(entry, set())
    modules |= {p for m in list(modules) if m.name == "__init__.py" for p in m.parent.glob("*.py")}
    missing = sorted(
        p.relative_to(ROOT).as_posix()
        for p in modules
        if not _covered(p, deps) and p.name != "__init__.py"
    )
    assert not missing, f"dvc.yaml stage {stage!r} misses deps {missing}"


def test_dvcignore_keeps_bytecode_out_of_hashes():
    ignored = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored
