"""Project pipelines, discovered under ``weightspace_kedro.pipelines``."""

from __future__ import annotations

from pathlib import Path

from kedro.framework.project import find_pipelines
from kedro.framework.project import pipelines as project_pipelines
from kedro.pipeline import Pipeline

from weightspace.errors import InvalidParameterError

PIPELINES_DIR = Path(__file__).parent / "pipelines"


def available_pipelines() -> list[str]:
    """Names of the pipeline folders (each has a ``pipeline.py`` with ``create_pipeline``)."""
    return sorted(p.name for p in PIPELINES_DIR.iterdir() if (p / "pipeline.py").is_file())


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline folder's ``create_pipeline()`` under its folder name.

    Raises
    ------
    InvalidParameterError
        A pipeline asked for on the command line (``--pipelines``) that does not exist;
        the message lists the registered ones (Kedro would report an ``ImportError`` of
        a module that does not exist).
    """
    requested = getattr(project_pipelines, "_requested_pipelines", None) or []
    known = available_pipelines()
    unknown = [r for r in requested if r not in known and r != "__default__"]
    if unknown:
        raise InvalidParameterError(
            f"no pipeline named {', '.join(map(repr, unknown))}; registered pipelines: "
            f"{', '.join(known)} (run one with `kedro run --pipelines=<name>`)"
        )
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(pipelines.values())
    return pipelines
