"""Typed ``superweights.settings``: the dataset and the experiment.

The experiment is the library's
:class:`~weightspace.evaluation.superweights_protocol.SuperWeightsProtocol` (members,
kinds, budgets, seeds, training, sensitivity grids), so its defaults live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightspace.evaluation.superweights_protocol import SuperWeightsProtocol


@dataclass(frozen=True)
class SuperWeightsSettings:
    """Everything the superweights pipeline runs (``superweights.settings``)."""

    dataset: str = "mnist1d"
    protocol: SuperWeightsProtocol = field(default_factory=SuperWeightsProtocol)
    # finished runs are journaled here so a killed run resumes (None: no journal)
    journal_dir: str | None = None
