"""Typed ``weightformer.settings``: the generator, its training and the protocol.

The parts are the library's configs
(:class:`~weightspace.generators.weightformer.WeightFormerConfig`,
:class:`~weightspace.evaluation.weightformer_protocol.WeightFormerProtocol` with its
:class:`~weightspace.generators.weightformer_training.FitConfig` and KD config), so their
defaults live in one place; the pipeline adds the dataset and which ablations to train.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightspace.errors import InvalidParameterError
from weightspace.evaluation.weightformer_protocol import WeightFormerProtocol
from weightspace.generators.weightformer import WeightFormerConfig

ABLATIONS: tuple[str, ...] = ("no_cross", "no_shift", "no_cutoff", "no_residual")
"""Table 4's variants: without the [cross] flow, without shift consistency, without cutoff;
and without the residual read-out (the paper's direct read-out; see
:mod:`weightspace.generators.weightformer`)."""


@dataclass(frozen=True)
class WeightFormerSettings:
    """Everything the weightformer pipeline runs (``weightformer.settings``)."""

    dataset: str = "mnist1d"
    device: str = "cpu"
    """Where everything runs ("cuda" on the GPU box): generator training, evaluation and
    KD, so WF and KD are timed on the same device."""
    model: WeightFormerConfig = field(default_factory=WeightFormerConfig)
    protocol: WeightFormerProtocol = field(default_factory=WeightFormerProtocol)
    ablations: tuple[str, ...] = ABLATIONS

    def __post_init__(self) -> None:
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise InvalidParameterError(
                f"weightformer.settings.ablations: unknown {bad}; choose from {list(ABLATIONS)}"
            )
        if self.model.max_teachers < self.protocol.n_teachers:
            raise InvalidParameterError(
                f"weightformer.settings.model.max_teachers ({self.model.max_teachers}) must be "
                f">= protocol.fit.n_teachers ({self.protocol.n_teachers})"
            )
