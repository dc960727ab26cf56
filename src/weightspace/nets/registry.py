"""Architecture registry: names -> builders, and a JSON-able :class:`ArchSpec`.

Every registered architecture is a plain :class:`torch.nn.Module` whose parameters can
be swapped for a stacked batch with :func:`torch.func.functional_call` (see
:mod:`weightspace.nets.functional`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from weightspace.errors import InvalidParameterError, UnknownArchitectureError
from weightspace.nets.mlp import build_mlp
from weightspace.nets.resnet import ResNet
from weightspace.nets.vgg import VGG

Builder = Callable[..., nn.Module]

ARCHITECTURES: dict[str, Builder] = {
    "mlp": build_mlp,
    "vgg": VGG,
    "resnet": ResNet,
}


def register_architecture(name: str, builder: Builder) -> None:
    """Add an architecture; ``builder(input_shape, n_classes, **config) -> nn.Module``."""
    if name in ARCHITECTURES:
        raise InvalidParameterError(f"architecture {name!r} is already registered")
    ARCHITECTURES[name] = builder


def _config_keys(builder: Builder) -> list[str]:
    params = inspect.signature(builder).parameters
    return [p for p in params if p not in ("self", "input_shape", "n_classes")]


def build_model(
    name: str,
    config: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] = (1, 8, 8),
    n_classes: int = 10,
) -> nn.Module:
    """Instantiate a registered architecture.

    Parameters
    ----------
    name : str
        Registry name (``"mlp"``, ``"vgg"``, ``"resnet"``).
    config : mapping, optional
        Keyword arguments of the builder (e.g. ``{"hidden": [64, 32]}``).
    input_shape : sequence of int
        Shape of one input sample.
    n_classes : int
        Number of output logits.
    """
    if name not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; registered: {sorted(ARCHITECTURES)}. "
            "Fix the name in your parameters or register one with "
            "weightspace.nets.register_architecture"
        )
    if int(n_classes) < 1:
        raise InvalidParameterError(f"n_classes must be >= 1, got {n_classes}")
    builder = ARCHITECTURES[name]
    config = dict(config or {})
    allowed = _config_keys(builder)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise InvalidParameterError(
            f"unknown config keys {unknown} for architecture {name!r}; allowed: {allowed}"
        )
    return builder(tuple(int(s) for s in input_shape), int(n_classes), **config)


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a module: name, config, input shape, class count."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 8, 8)
    n_classes: int = 10

    def build(self) -> nn.Module:
        """A freshly initialised module of this architecture."""
        return build_model(self.name, self.config, self.input_shape, self.n_classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists instead of tuples)."""
        return {
            "name": self.name,
            "config": json.loads(json.dumps(dict(self.config))),
            "input_shape": list(self.input_shape),
            "n_classes": int(self.n_classes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArchSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(d["name"]),
            config=dict(d.get("config", {})),
            input_shape=tuple(int(s) for s in d["input_shape"]),
            n_classes=int(d["n_classes"]),
        )

    @property
    def key(self) -> str:
        """Canonical string identifying the architecture instance (groups a zoo)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchSpec) and self.key == other.key
