"""Nodes of the superweights pipeline: typed settings, the data, the experiment (one call
into :func:`~weightspace.evaluation.superweights_protocol.run_superweights`), report.
Stage times come from the project hook."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from weightspace.data import SplitDataset
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.superweights_protocol import run_superweights
from weightspace.reporting import superweights_report as sr
from weightspace_kedro.pipelines.superweights.settings import SuperWeightsSettings
from weightspace_kedro.pipelines.zoo.nodes import load_datasets
from weightspace_kedro.typed import typed_settings


def build_settings(params: dict[str, Any]) -> SuperWeightsSettings:
    """``superweights.settings`` typed (a misspelled key fails here, naming key and file)."""
    return typed_settings(SuperWeightsSettings, params, "superweights.settings", "superweights")


def load_data(data: dict[str, Any], settings: SuperWeightsSettings) -> SplitDataset:
    """The dataset the ensembles train on (``superweights.data``, zoo-style)."""
    datasets = load_datasets(data)
    if settings.dataset not in datasets:
        raise InvalidParameterError(
            f"superweights.settings.dataset is {settings.dataset!r} but superweights.data "
            f"loads {sorted(datasets)}; add it under superweights.data.datasets"
        )
    return datasets[settings.dataset]


def run(data: SplitDataset, settings: SuperWeightsSettings) -> dict[str, Any]:
    """Every ensemble of the protocol, trained and scored (JSON-able result); finished runs
    are journaled in ``settings.journal_dir`` (a killed run resumes there)."""
    return run_superweights(
        data, settings.protocol, progress=True, journal_dir=settings.journal_dir
    )


def report(
    result: dict[str, Any], node_seconds: dict[str, float]
) -> tuple[dict[str, float], str, Figure, Figure, Figure, Figure]:
    """metrics.json, tables.md and the four figures."""
    metrics, tables, figs = sr.assemble_report(result, node_seconds)
    return (
        metrics, tables, figs["anytime"], figs["sensitivity"], figs["interpolation"],
        figs["clusters"],
    )  # fmt: skip
