"""The report's inputs before the run: absent method outputs get a clear message.

Kedro would fail on the first absent ``<method>.metrics`` with a generic ``DatasetError``
naming a file. The project hook calls :func:`check_report_inputs` before a run that holds
the report's node: every requested method whose ``metrics.json`` is absent (and not
written by this same run) is listed with the command that writes it; a method not
requested, or with ``require_all: false``, gets an empty placeholder, as does an absent
``provenance.json`` (a run from before provenance: its card says "unknown").
"""

from __future__ import annotations

from typing import Any

from kedro.io import MemoryDataset

from weightspace.errors import MissingPipelineOutputError
from weightspace.reporting.comparison import METHODS
from weightspace_kedro.pipelines.report.settings import ReportSettings
from weightspace_kedro.typed import typed_settings

NAMESPACE = "report"


def run_command(method: str, env: str | None) -> str:
    """The command that writes ``method``'s outputs in environment ``env``."""
    suffix = f" --env {env}" if env and env not in ("local", "base") else ""
    return f"kedro run --pipelines={method}{suffix}"


def check_report_inputs(pipeline: Any, catalog: Any, env: str | None = None) -> list[str]:
    """Check the report's inputs; returns the methods that will show as "not run".

    Raises
    ------
    MissingPipelineOutputError
        ``require_all`` and a requested method's ``metrics.json`` is absent: names each
        such method and the ``kedro run`` command to run first.
    """
    if not any(n.namespace == NAMESPACE for n in getattr(pipeline, "nodes", ())):
        return []
    settings = typed_settings(
        ReportSettings, catalog.load(f"params:{NAMESPACE}.settings"), "report.settings", "report"
    )
    free = pipeline.inputs()
    absent = [m for m in METHODS if f"{m}.metrics" in free and not catalog.exists(f"{m}.metrics")]
    missing = [m for m in absent if m in settings.methods]
    if missing and settings.require_all:
        lines = [f"  - {m}: `{run_command(m, env)}`" for m in missing]
        raise MissingPipelineOutputError(
            f"the report compares {', '.join(settings.methods)}, but "
            f"{len(missing)} of them {'has' if len(missing) == 1 else 'have'} no metrics.json "
            f"yet; run first:\n" + "\n".join(lines) + "\n(or leave them out of "
            "report.settings.methods, or set report.settings.require_all: false to list them "
            "as not run, in conf/<env>/parameters_report.yml)"
        )
    for m in absent:
        catalog[f"{m}.metrics"] = MemoryDataset(data=None)
    for m in METHODS:
        name = f"{m}.provenance"
        if name in free and not catalog.exists(name):
            catalog[name] = MemoryDataset(data=None)
    return missing
