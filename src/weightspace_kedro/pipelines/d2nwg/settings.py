"""Typed settings of the two D2NWG scenarios, built once from ``parameters_d2nwg.yml``.

Every default lives in these dataclasses or in the library configs they compose
(:class:`~weightspace.generators.d2nwg.D2NWGConfig`,
:class:`~weightspace.evaluation.d2nwg_protocol.FewShotProtocol`,
:class:`~weightspace.zoo.TrainConfig`); the YAML states values, and unknown keys fail in
the first node with their dotted path.

Every value is checked when a settings object is built (``__post_init__``): types,
ranges, choices and the rules that tie fields together (``pool.way`` against the classes
of the chosen datasets, ``evaluation.n_seen`` against ``pool.n_zoo``, ...), so a bad value
fails in the pipeline's first node, in well under a second, instead of after the zoos are
trained. The class counts of the datasets are known without loading them
(:data:`CLASS_COUNTS`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from weightspace.data.registry import DATASETS
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.d2nwg_comparisons import ComparisonSettings
from weightspace.evaluation.d2nwg_protocol import FewShotProtocol
from weightspace.generators.classwise import ClassWiseConfig
from weightspace.generators.d2nwg import D2NWGConfig
from weightspace.generators.training_checkpoint import CheckpointPolicy
from weightspace.nets.registry import ARCHITECTURES
from weightspace.zoo import TrainConfig

CLASS_COUNTS: dict[str, int] = {
    "digits": 10,
    "mnist1d": 10,
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
}
"""Classes of the registered datasets, known without loading them."""

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidParameterError(f"{key} must be an integer >= {low}, got {value!r}")


def _device(key: str, value: Any) -> None:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise InvalidParameterError(
            f"{key} must be 'auto', 'cpu', 'mps' or 'cuda[:N]', got {value!r}"
        )


@dataclass(frozen=True)
class GeneratorSettings:
    """Chunking, the VAE gate and every generator hyper-parameter."""

    chunk_size: int = 64
    vae_gate: float = 0.95
    progress: bool = True
    d2nwg: D2NWGConfig = field(default_factory=D2NWGConfig)
    # periodic training checkpoints of the VAE and diffusion stages (null: none); a rerun
    # with the same settings and data resumes from the newest one
    checkpoint_dir: str | None = "data/06_models/d2nwg_checkpoints"
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        _int("generator.chunk_size", self.chunk_size, 1)
        if (
            isinstance(self.vae_gate, bool)
            or not isinstance(self.vae_gate, int | float)
            or not 0.0 <= self.vae_gate <= 1.0
        ):
            raise InvalidParameterError(
                f"generator.vae_gate must be a number in [0, 1], got {self.vae_gate!r}"
            )
        if not isinstance(self.progress, bool):
            raise InvalidParameterError(f"generator.progress must be true or false, got "
                                        f"{self.progress!r}")  # fmt: skip
        try:
            CheckpointPolicy(self.checkpoint_dir, self.checkpoint_every)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"generator.{exc}") from exc


@dataclass(frozen=True)
class Domain:
    """One embedded dataset of the pool and its classes held out as novel."""

    name: str
    novel: tuple[int, ...] = (7, 8, 9)

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise InvalidParameterError(
                f"pool.domains: unknown dataset {self.name!r}; choose from {sorted(DATASETS)}"
            )
        embedded = sorted(n for n, e in DATASETS.items() if not e.needs_root)
        if DATASETS[self.name].needs_root:
            raise InvalidParameterError(
                f"pool.domains: {self.name!r} is read from a folder, which the pool has no "
                f"setting for; choose from the embedded datasets {embedded}"
            )
        n = self.n_classes
        bad = [c for c in self.novel if isinstance(c, bool) or not isinstance(c, int)
               or not 0 <= c < n]  # fmt: skip
        if bad or len(set(self.novel)) != len(self.novel):
            raise InvalidParameterError(
                f"pool.domains[{self.name}].novel must be distinct classes in [0, {n}), "
                f"got {list(self.novel)}"
            )

    @property
    def n_classes(self) -> int:
        """Classes of this dataset (known without loading it)."""
        if self.name not in CLASS_COUNTS:
            raise InvalidParameterError(
                f"pool.domains: the class count of {self.name!r} is not known; add it to "
                "CLASS_COUNTS in weightspace_kedro/pipelines/d2nwg/settings.py"
            )
        return CLASS_COUNTS[self.name]


@dataclass(frozen=True)
class PoolSettings:
    """Scenario (a)'s class pool: its domains (a list, so an override replaces it whole)
    and the k-way task sets."""

    domains: tuple[Domain, ...] = (Domain("digits"), Domain("mnist1d"))
    way: int = 5
    n_zoo: int = 120
    n_unseen: int = 20
    n_novel: int = 6

    def __post_init__(self) -> None:
        if not self.domains:
            raise InvalidParameterError("pool.domains is empty; name at least one dataset")
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise InvalidParameterError(f"pool.domains names a dataset twice: {names}")
        _int("pool.way", self.way, 2)
        _int("pool.n_zoo", self.n_zoo, 1)
        _int("pool.n_unseen", self.n_unseen, 0)
        _int("pool.n_novel", self.n_novel, 0)
        novel = sum(len(d.novel) for d in self.domains)
        seen = sum(d.n_classes for d in self.domains) - novel
        pool = " + ".join(f"{d.name} ({d.n_classes} classes)" for d in self.domains)
        if self.way > seen:
            raise InvalidParameterError(
                f"pool.way ({self.way}) is more than the {seen} seen classes of the pool "
                f"{pool} minus the novel ones; lower pool.way"
            )
        if math.comb(seen, self.way) < self.n_zoo + self.n_unseen:
            raise InvalidParameterError(
                f"pool.n_zoo + pool.n_unseen ({self.n_zoo} + {self.n_unseen}) exceed the "
                f"C({seen}, {self.way}) = {math.comb(seen, self.way)} distinct {self.way}-way "
                "tasks of the seen classes"
            )
        if self.n_novel and math.comb(novel, self.way) < self.n_novel:
            raise InvalidParameterError(
                f"pool.n_novel ({self.n_novel}) exceeds the C({novel}, {self.way}) = "
                f"{math.comb(novel, self.way)} distinct {self.way}-way tasks of the {novel} "
                "novel classes; lower pool.n_novel or pool.way, or hold out more classes"
            )


@dataclass(frozen=True)
class BackboneSettings:
    """The frozen feature extractor trained per domain on its seen classes."""

    name: str = "vgg"
    config: dict[str, Any] = field(default_factory=lambda: {"stages": [[16], [32]]})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=0.003, epochs=15))

    def __post_init__(self) -> None:
        if self.name not in ARCHITECTURES:
            raise InvalidParameterError(
                f"backbone.name: unknown architecture {self.name!r}; choose from "
                f"{sorted(ARCHITECTURES)}"
            )


@dataclass(frozen=True)
class HeadsZooSettings:
    """The zoo of heads: seeds per zoo task and the training recipe."""

    seeds: int = 4
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _int("heads.seeds", self.seeds, 1)


ABLATIONS: tuple[str, ...] = ("unconditional", "no_alignment")
"""Class-wise generators trained beside the method: no dataset encoding at all (p-diff
style: no condition, no anchor), and no contrastive alignment of the encoder."""


@dataclass(frozen=True)
class ClassWiseSettings:
    """The class-wise head generator (the method of scenario (a)) and its ablations."""

    config: ClassWiseConfig = field(default_factory=ClassWiseConfig)
    ablations: tuple[str, ...] = ABLATIONS

    def __post_init__(self) -> None:
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad or len(set(self.ablations)) != len(self.ablations):
            raise InvalidParameterError(
                f"classwise.ablations must be distinct names from {list(ABLATIONS)}, got "
                f"{list(self.ablations)}"
            )


@dataclass(frozen=True)
class HeadsSettings:
    """Scenario (a): few-shot classifier heads over a pool of digits + MNIST-1D classes."""

    seed: int = 0
    device: str = "auto"
    pool: PoolSettings = field(default_factory=PoolSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    heads: HeadsZooSettings = field(default_factory=HeadsZooSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    classwise: ClassWiseSettings = field(default_factory=ClassWiseSettings)
    evaluation: FewShotProtocol = field(default_factory=FewShotProtocol)
    comparisons: ComparisonSettings = field(default_factory=ComparisonSettings)

    def __post_init__(self) -> None:
        _int("seed", self.seed, 0)
        _device("device", self.device)
        c = self.comparisons
        _int("comparisons.probe_converged_steps", c.probe_converged_steps, 1)
        if not c.lr_grid or any(isinstance(v, bool) or not isinstance(v, int | float)
                                or not v > 0 for v in c.lr_grid):  # fmt: skip
            raise InvalidParameterError(
                f"comparisons.lr_grid must be a non-empty list of numbers > 0, got {c.lr_grid!r}"
            )
        if not isinstance(c.keep_init, bool):
            raise InvalidParameterError(
                f"comparisons.keep_init must be true or false, got {c.keep_init!r}"
            )
        _int("comparisons.zoo_best_of", c.zoo_best_of, 1)
        if c.zoo_best_of > self.heads.seeds:
            raise InvalidParameterError(
                f"comparisons.zoo_best_of ({c.zoo_best_of}) must be <= heads.seeds "
                f"({self.heads.seeds}): the zoo's best-of-k chooses among a task's members"
            )
        if not 0 < c.copy_ratio <= 1:
            raise InvalidParameterError(
                f"comparisons.copy_ratio must be in (0, 1], got {c.copy_ratio!r}"
            )
        ev = self.evaluation
        for name, low in (("shots", 1), ("n_seen", 0), ("n_candidates", 1),
                          ("throughput_candidates", 1), ("random_seed", 0)):  # fmt: skip
            _int(f"evaluation.{name}", getattr(ev, name), low)
        if ev.n_seen > self.pool.n_zoo:
            raise InvalidParameterError(
                f"evaluation.n_seen ({ev.n_seen}) must be <= pool.n_zoo ({self.pool.n_zoo})"
            )
        for name, low in (("finetune_steps", 1), ("oracle_seeds", 0)):
            values = getattr(ev, name)
            if not values:
                raise InvalidParameterError(f"evaluation.{name} must not be empty")
            for v in values:
                _int(f"evaluation.{name}[]", v, low)


@dataclass(frozen=True)
class RetrievalProtocol:
    """Scenario (b)'s evaluation: support shots per class and candidates per dataset."""

    shots: int = 5
    n_candidates: int = 10

    def __post_init__(self) -> None:
        _int("evaluation.shots", self.shots, 1)
        _int("evaluation.n_candidates", self.n_candidates, 1)


@dataclass(frozen=True)
class NetworksSettings:
    """Scenario (b): whole networks over related datasets (model retrieval)."""

    seed: int = 0
    device: str = "auto"
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    evaluation: RetrievalProtocol = field(default_factory=RetrievalProtocol)

    def __post_init__(self) -> None:
        _int("seed", self.seed, 0)
        _device("device", self.device)
