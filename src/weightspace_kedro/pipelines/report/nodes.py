"""Nodes of the report pipeline: typed settings, every method's rows, then the table,
the cards, the plots and the report's own metrics. Each is one call into
:mod:`weightspace.reporting.comparison` / :mod:`weightspace.reporting.model_card`."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from weightspace.errors import MissingPipelineOutputError
from weightspace.reporting import comparison as cmp
from weightspace.reporting.model_card import model_card
from weightspace_kedro.pipelines.report.inputs import run_command
from weightspace_kedro.pipelines.report.settings import ReportSettings
from weightspace_kedro.typed import typed_settings


def build_settings(params: dict[str, Any]) -> ReportSettings:
    """``report.settings`` typed (a misspelled key fails here, naming key and file)."""
    return typed_settings(ReportSettings, params, "report.settings", "report")


def _run_params(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parameters the method's run read, keyed without ``params:``."""
    if not provenance or "parameters" not in provenance:
        return None
    return {k.removeprefix("params:"): v for k, v in provenance["parameters"].items()}


def compare(settings: ReportSettings, **outputs: Any) -> dict[str, Any]:
    """Every requested method's rows, stamped with its commit and config hash.

    ``outputs`` holds ``<method>_metrics`` and ``<method>_provenance`` (``None`` where the
    pre-run check found them absent). A requested method without metrics is an error
    under ``require_all``, else a "not run" row.
    """
    rows, cards, missing = [], {}, []
    for m in settings.methods:
        metrics, prov = outputs[f"{m}_metrics"], outputs[f"{m}_provenance"]
        if metrics is None:
            if settings.require_all:
                raise MissingPipelineOutputError(
                    f"{m} has no metrics.json; run `{run_command(m, None)}` first"
                )
            missing.append(m)
            rows.append(cmp.not_run_row(m, run_command(m, None)))
            continue
        params = _run_params(prov)
        prov = prov or {}
        mine = cmp.with_provenance(
            cmp.extract(m, metrics, params), prov.get("git_commit"), prov.get("config_hash")
        )
        cards[m] = model_card(m, mine, prov or None, params)
        rows += mine
    return {"rows": rows, "cards": cards, "missing": missing}


def tables(comparison: dict[str, Any]) -> tuple[str, str, dict[str, float]]:
    """comparison.md, comparison.csv and the report's flat metrics."""
    rows, missing = comparison["rows"], comparison["missing"]
    ran = [r for r in rows if r.variant != "not run"]
    methods = list(dict.fromkeys(r.method for r in ran))
    metrics = {
        "n_methods": float(len(methods)),
        "n_methods_not_run": float(len(missing)),
        "n_rows": float(len(ran)),
        "n_comparable_groups": float(len({r.comparable_group for r in ran})),
        "n_methods_with_provenance": float(len({r.method for r in ran if r.config_hash})),
        "n_commits": float(len({r.git_commit for r in ran if r.git_commit})),
    }
    for r in ran:
        if r.headline and r.accuracy is not None:
            metrics[f"{r.method}_headline_acc"] = r.accuracy
    return cmp.comparison_markdown(rows, missing), cmp.comparison_csv(rows), metrics


def cards(comparison: dict[str, Any]) -> dict[str, str]:
    """One model card per method that ran (``cards/<method>.md``)."""
    return dict(comparison["cards"])


def plots(comparison: dict[str, Any]) -> tuple[Figure, Figure]:
    """Accuracy vs cost to obtain, and vs inference cost."""
    figures = cmp.plots([r for r in comparison["rows"] if r.variant != "not run"])
    return figures["accuracy_vs_obtain_cost"], figures["accuracy_vs_inference_cost"]
