"""Typed settings of the two D2NWG scenarios, built once from ``parameters_d2nwg.yml``.

Every default lives in these dataclasses or in the library configs they compose
(:class:`~weightspace.generators.d2nwg.D2NWGConfig`,
:class:`~weightspace.evaluation.d2nwg_protocol.FewShotProtocol`,
:class:`~weightspace.zoo.TrainConfig`); the YAML states values, and unknown keys fail in
the first node with their dotted path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from weightspace.evaluation.d2nwg_protocol import FewShotProtocol
from weightspace.generators.d2nwg import D2NWGConfig
from weightspace.zoo import TrainConfig


@dataclass(frozen=True)
class GeneratorSettings:
    """Chunking, the VAE gate and every generator hyper-parameter."""

    chunk_size: int = 64
    vae_gate: float = 0.95
    progress: bool = True
    d2nwg: D2NWGConfig = field(default_factory=D2NWGConfig)


@dataclass(frozen=True)
class Domain:
    """One embedded dataset of the pool and its classes held out as novel."""

    name: str
    novel: tuple[int, ...] = (7, 8, 9)


@dataclass(frozen=True)
class PoolSettings:
    """Scenario (a)'s class pool: its domains (a list, so an override replaces it whole)
    and the k-way task sets."""

    domains: tuple[Domain, ...] = (Domain("digits"), Domain("mnist1d"))
    way: int = 5
    n_zoo: int = 120
    n_unseen: int = 20
    n_novel: int = 6


@dataclass(frozen=True)
class BackboneSettings:
    """The frozen feature extractor trained per domain on its seen classes."""

    name: str = "vgg"
    config: dict[str, Any] = field(default_factory=lambda: {"stages": [[16], [32]]})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=0.003, epochs=15))


@dataclass(frozen=True)
class HeadsZooSettings:
    """The zoo of heads: seeds per zoo task and the training recipe."""

    seeds: int = 4
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class HeadsSettings:
    """Scenario (a): few-shot classifier heads over a pool of digits + MNIST-1D classes."""

    seed: int = 0
    device: str = "auto"
    pool: PoolSettings = field(default_factory=PoolSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    heads: HeadsZooSettings = field(default_factory=HeadsZooSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    evaluation: FewShotProtocol = field(default_factory=FewShotProtocol)


@dataclass(frozen=True)
class RetrievalProtocol:
    """Scenario (b)'s evaluation: support shots per class and candidates per dataset."""

    shots: int = 5
    n_candidates: int = 10


@dataclass(frozen=True)
class NetworksSettings:
    """Scenario (b): whole networks over related datasets (model retrieval)."""

    seed: int = 0
    device: str = "auto"
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    evaluation: RetrievalProtocol = field(default_factory=RetrievalProtocol)
