"""Provenance of a pipeline's outputs: the commit, the parameters it read and their hash.

After every successful ``kedro run`` the project hook saves, for each pipeline that ran,
``<pipeline>.provenance`` (``data/08_reporting/<pipeline>/provenance.json``) through the
catalog. The config hash is the sha256 of the canonical JSON of exactly the parameters
that pipeline reads: the ``params:*`` inputs of its nodes, plus the global parameters the
hook applies to every run (``seed``, ``device``, ``threads``: they change the numbers too).
No wall-clock time is recorded, so a rerun of the same commit and parameters writes the
same file (DVC sees no change).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOOK_PARAMS = ("params:seed", "params:device", "params:threads")
"""Global parameters read by the project hook for every pipeline (seeding, device, threads)."""

FILTERS = ("tags", "from_nodes", "to_nodes", "node_names", "from_inputs", "to_outputs",
           "namespaces")  # fmt: skip
"""``run_params`` keys that run only part of a pipeline."""


def config_hash(values: Mapping[str, Any]) -> str:
    """sha256 of ``values`` as canonical JSON (sorted keys, no whitespace).

    Examples
    --------
    >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def parameter_keys(pipeline: Any) -> list[str]:
    """The ``params:*`` inputs of a pipeline's nodes and the hook's globals, sorted."""
    read = {i for node in pipeline.nodes for i in node.inputs if i.startswith("params:")}
    return sorted(read | set(HOOK_PARAMS))


def read_parameters(keys: Iterable[str], catalog: Any) -> dict[str, Any]:
    """``{key: value}`` of each key; a hook global (:data:`HOOK_PARAMS`) that the
    configuration does not set is left out (the hook's default applies)."""
    values = {}
    for key in keys:
        try:
            values[key] = catalog.load(key)
        except Exception:
            if key not in HOOK_PARAMS:
                raise
    return values


def _git(project: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(project), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(project: Path) -> tuple[str | None, bool | None]:
    """``(HEAD commit, tracked files modified)``; ``(None, None)`` outside a git checkout."""
    commit = _git(project, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(project, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def versions() -> dict[str, str]:
    """Versions of weightspace, torch, kedro and Python."""
    out = {"python": platform.python_version()}
    for dist in ("weightspace", "torch", "kedro"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def provenance_record(
    name: str, pipeline: Any, catalog: Any, project: Path, env: str | None, partial: bool
) -> dict[str, Any]:
    """The ``provenance.json`` of pipeline ``name`` (a registered pipeline object)."""
    keys = parameter_keys(pipeline)
    values = read_parameters(keys, catalog)
    commit, dirty = git_state(project)
    return {
        "pipeline": name,
        "git_commit": commit,
        "git_dirty": dirty,
        "config_hash": config_hash(values),
        "params": sorted(values),
        "parameters": values,
        "kedro_env": env,
        "partial_run": partial,
        "versions": versions(),
    }


def save_provenance(
    run_params: Mapping[str, Any], catalog: Any, registry: Mapping[str, Any]
) -> None:
    """Save ``<name>.provenance`` for every pipeline the run asked for (every registered
    one for ``__default__``) whose dataset the catalog resolves."""
    names = list(run_params.get("pipeline_names") or ["__default__"])
    if "__default__" in names:
        names = [n for n in registry if n != "__default__"]
    partial = any(run_params.get(f) for f in FILTERS)
    project = Path(run_params.get("project_path") or ".")
    for name in names:
        dataset = f"{name}.provenance"
        if name not in registry or dataset not in catalog:
            log.warning("provenance: no pipeline or no %s dataset; not recorded", dataset)
            continue
        record = provenance_record(
            name, registry[name], catalog, project, run_params.get("env"), partial
        )
        catalog.save(dataset, record)
        log.info("provenance: %s (config %s)", dataset, record["config_hash"][:12])


__all__ = [
    "HOOK_PARAMS",
    "config_hash",
    "git_state",
    "parameter_keys",
    "provenance_record",
    "read_parameters",
    "save_provenance",
    "versions",
]
