"""What a zoo member is: architecture, task, seed and training hyper-parameters.

A member's identity (:attr:`MemberSpec.member_id`) is a hash of its canonical JSON and of
:data:`PROTOCOL_VERSION`, so a re-run finds the checkpoints of members it already trained
and a change of the training protocol never reuses stale ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from weightspace.data.tasks import TaskSpec
from weightspace.errors import InvalidParameterError
from weightspace.zoo.optim import OPTIMIZERS

PROTOCOL_VERSION = 1
"""Bump when training semantics change: old checkpoints then stop matching."""


def canonical_json(obj: Any) -> str:
    """Stable JSON (sorted keys, no spaces) used for hashing and for the zoo index."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters of one member."""

    lr: float = 1e-2
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "momentum", "init_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidParameterError(
                    f"invalid zoo training parameter: {name} must be a number, got {value!r}"
                )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            ):
                raise InvalidParameterError(
                    f"invalid zoo training parameter: {name} must be an integer, got {value!r}"
                )
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (int(self.epochs) >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (int(self.batch_size) >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.init_scale > 0, f"init_scale must be > 0, got {self.init_scale}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidParameterError(f"invalid zoo training parameter: {message}")
        object.__setattr__(self, "epochs", int(self.epochs))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        for name in ("lr", "weight_decay", "momentum", "init_scale"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class MemberSpec:
    """One model of a zoo, before training."""

    arch: str
    task: TaskSpec
    seed: int
    train: TrainConfig
    arch_config: Mapping[str, Any] = field(default_factory=dict)
    data_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "arch": self.arch,
            "arch_config": json.loads(canonical_json(dict(self.arch_config))),
            "task": self.task.to_dict(),
            "seed": int(self.seed),
            "train": self.train.to_dict(),
            "data_seed": int(self.data_seed),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            arch=d["arch"],
            task=TaskSpec.from_dict(d["task"]),
            seed=int(d["seed"]),
            train=TrainConfig(**d["train"]),
            arch_config=dict(d.get("arch_config", {})),
            data_seed=int(d.get("data_seed", 0)),
        )

    @property
    def member_id(self) -> str:
        """16 hex digits identifying this member (and the training protocol)."""
        payload = canonical_json({"protocol": PROTOCOL_VERSION, **self.to_dict()})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def stack_key(self) -> tuple:
        """Members with equal keys (and equal architecture instance) train in one stack."""
        t = self.train
        return (t.batch_size, t.optimizer, t.momentum)
