"""WeightFormer's token layout: which tensors make up each generated layer's tokens.

:class:`TokenLayout` (built by :meth:`TokenLayout.from_module`, JSON-able, fingerprinted)
lists, in module order, every Linear / Conv1d / Conv2d of an architecture as a
:class:`LayerTokens` entry: ``n_out`` tokens (one per output unit) made of the pieces
``W[o].flatten()``, ``b[o]``, and the affine ``gamma[o]``, ``beta[o]`` of a BatchNorm that
directly follows the layer. Every parameter of the architecture's
:class:`~weightspace.weights.spec.ParameterSpec` is covered exactly once (checked on
construction and on loading). :mod:`weightspace.generators.weight_tokens` turns teachers'
weights into these tokens and back (Fei et al., "Meta-Ensemble Parameter Learning",
Section 3.1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import accumulate
from typing import Any

from torch import nn

from weightspace.errors import (
    CheckpointMismatchError,
    InvalidParameterError,
    UnsupportedLayerError,
)
from weightspace.weights.spec import ParameterSpec

__all__ = ["LayerTokens", "TokenLayout"]

_FORMAT = "weightspace.TokenLayout"
_VERSION = 1
_MAX_REPORTED = 10
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_REBUILD = "the stored layout is corrupt or was edited: rebuild it with TokenLayout.from_module"


@dataclass(frozen=True)
class LayerTokens:
    """One generated layer: ``n_out`` tokens of ``width`` values each.

    Attributes
    ----------
    layer : str
        Path of the Linear / Conv module in ``named_modules()`` (``""`` for the root).
    n_out : int
        Number of tokens: output features (Linear) or output channels (Conv).
    pieces : tuple of (str, int)
        The state-dict tensors of a token in token order, each with its per-unit width:
        ``(weight, n_in * prod(k))``, then ``(bias, 1)`` if the layer has a bias, then
        ``(bn.weight, 1), (bn.bias, 1)`` if a BatchNorm follows it.
    """

    layer: str
    n_out: int
    pieces: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        pieces = tuple(tuple(p) if isinstance(p, list | tuple) else (p,) for p in self.pieces)
        ok = (
            isinstance(self.layer, str)
            and _is_positive_int(self.n_out)
            and len(pieces) > 0
            and all(
                len(p) == 2 and isinstance(p[0], str) and _is_positive_int(p[1]) for p in pieces
            )
        )
        if not ok:
            raise InvalidParameterError(
                f"LayerTokens needs a str layer, a positive int n_out and non-empty (name, "
                f"positive int width) pieces; got layer={self.layer!r}, n_out={self.n_out!r}, "
                f"pieces={self.pieces!r}"
            )
        object.__setattr__(self, "pieces", pieces)

    @property
    def width(self) -> int:
        """``d_layer``, the number of values of one token (sum of the piece widths)."""
        return sum(w for _, w in self.pieces)

    @property
    def piece_slices(self) -> tuple[tuple[str, slice], ...]:
        """``(name, slice of the token's last dimension)`` of every piece."""
        stops = list(accumulate(w for _, w in self.pieces))
        starts = [0, *stops[:-1]]
        return tuple(
            (n, slice(a, b)) for (n, _), a, b in zip(self.pieces, starts, stops, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``width`` included for readers; checked on load)."""
        pieces = [[n, w] for n, w in self.pieces]
        return {"layer": self.layer, "n_out": self.n_out, "width": self.width, "pieces": pieces}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerTokens:
        """Inverse of :meth:`to_dict`."""
        entry = cls(layer=data["layer"], n_out=data["n_out"], pieces=tuple(data["pieces"]))
        if data.get("width", entry.width) != entry.width:
            raise InvalidParameterError(
                f"layer {entry.layer!r}: stored width {data['width']!r} is not the sum of the "
                f"piece widths ({entry.width}); {_REBUILD}"
            )
        return entry


@dataclass(frozen=True)
class TokenLayout:
    """How an architecture's parameters become WeightFormer tokens, layer by layer.

    Build it with :meth:`from_module`. The constructor checks that the pieces cover
    every parameter of ``spec`` exactly once, each of shape ``(n_out, ...)`` with the
    piece width as per-unit size.

    Attributes
    ----------
    spec : ParameterSpec
        ``ParameterSpec.from_module(module, include_buffers=False)``: parameters only.
    layers : tuple of LayerTokens
        The generated layers in ``named_modules()`` (forward) order.
    buffers : tuple of str
        Floating-point buffers of the module (BatchNorm running statistics): allowed in
        the teachers' state dicts, ignored, never tokenized.
    """

    spec: ParameterSpec
    layers: tuple[LayerTokens, ...]
    buffers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "buffers", tuple(str(b) for b in self.buffers))
        if not isinstance(self.spec, ParameterSpec) or not all(
            isinstance(e, LayerTokens) for e in self.layers
        ):
            raise InvalidParameterError("TokenLayout needs a ParameterSpec and LayerTokens")
        problems = _coverage_problems(self.spec, self.layers)
        if problems:
            raise InvalidParameterError(
                f"token layout does not cover its parameter spec exactly once: "
                f"{'; '.join(problems)}; {_REBUILD}"
            )

    @classmethod
    def from_module(cls, module: nn.Module) -> TokenLayout:
        """Token layout of a module of Linear / Conv1d / Conv2d layers (+ BatchNorm).

        Parameters
        ----------
        module : nn.Module
            E.g. ``build_model("vgg", {"norm": "batch"}, (3, 32, 32), 10)``. Modules
            without parameters (ReLU, pooling, Flatten, Identity) are skipped.

        Returns
        -------
        TokenLayout

        Raises
        ------
        UnsupportedLayerError
            Naming the path and type of a parametrised module that is not Linear /
            Conv1d / Conv2d / BatchNorm1d/2d, of a BatchNorm that does not directly follow
            a layer with ``num_features`` outputs, of a grouped convolution or of a layer
            with parameters other than ``weight`` / ``bias``; or naming tied parameters.
        """
        _reject_tied(module)
        spec = ParameterSpec.from_module(module, include_buffers=False)
        layers = _walk(module)
        problems = _coverage_problems(spec, layers)
        if problems:
            raise UnsupportedLayerError(
                f"the layers of {type(module).__name__} do not cover its parameters exactly "
                f"once: {'; '.join(problems)}. Only Linear / Conv1d / Conv2d layers, each "
                "optionally followed by a BatchNorm1d/2d, can be tokenized"
            )
        buffers = tuple(n for n, b in module.named_buffers() if b.is_floating_point())
        return cls(spec=spec, layers=layers, buffers=buffers)

    @property
    def n_layers(self) -> int:
        """Number of generated layers."""
        return len(self.layers)

    @property
    def widths(self) -> tuple[int, ...]:
        """Token width ``d_layer`` of every layer."""
        return tuple(e.width for e in self.layers)

    @property
    def n_outs(self) -> tuple[int, ...]:
        """Token count ``n_out`` of every layer."""
        return tuple(e.n_out for e in self.layers)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape of one model, in spec order."""
        return {e.name: e.shape for e in self.spec.entries}

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the spec fingerprint and the layer entries (canonical JSON)."""
        payload = {"spec": self.spec.fingerprint, "layers": [e.to_dict() for e in self.layers]}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def check_fingerprint(self, fingerprint: str, what: str = "this object") -> None:
        """Raise :class:`CheckpointMismatchError` unless ``fingerprint`` is this layout's."""
        if fingerprint != self.fingerprint:
            raise CheckpointMismatchError(
                f"{what} was built for token layout {fingerprint[:12]}..., not for this layout "
                f"{self.fingerprint[:12]}... (widths {list(self.widths)}): use the "
                "architecture it was built for, or rebuild it from this layout"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: format tag, version, spec, layers and buffers."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "spec": self.spec.to_dict(),
            "layers": [e.to_dict() for e in self.layers],
            "buffers": list(self.buffers),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLayout:
        """Inverse of :meth:`to_dict`; re-validates the layout."""
        if (data.get("format"), data.get("version")) != (_FORMAT, _VERSION):
            raise InvalidParameterError(
                f"not a serialized TokenLayout of version {_VERSION} (format "
                f"{data.get('format')!r}, version {data.get('version')!r})"
            )
        try:
            spec = ParameterSpec.from_dict(data["spec"])
            layers = tuple(LayerTokens.from_dict(e) for e in data["layers"])
            return cls(spec=spec, layers=layers, buffers=tuple(data.get("buffers", ())))
        except (KeyError, TypeError) as exc:
            raise InvalidParameterError(f"malformed TokenLayout: {exc!r}; {_REBUILD}") from exc

    def __repr__(self) -> str:
        return (
            f"TokenLayout({self.n_layers} layers, n_out={list(self.n_outs)}, "
            f"widths={list(self.widths)}, fingerprint={self.fingerprint[:12]})"
        )


def _walk(module: nn.Module) -> tuple[LayerTokens, ...]:
    """One entry per Linear / Conv in ``named_modules()`` order, BatchNorms folded in."""
    layers: list[LayerTokens] = []
    previous, open_layer = "no parametrised module", False  # what the next module follows
    for path, m in module.named_modules():
        own = [name for name, _ in m.named_parameters(recurse=False)]
        if not own:
            continue
        if not isinstance(m, _LAYER_TYPES + _NORM_TYPES):
            raise UnsupportedLayerError(
                f"{_where(path, m)} has parameters but is not a Linear, Conv1d, Conv2d or "
                "BatchNorm1d/2d: WeightFormer tokens (one per output unit) are defined for "
                "those only. Tokenize a model built from them (the registry's mlp, vgg, "
                "resnet), or generate this layer some other way"
            )
        if "weight" not in own or not set(own) <= {"weight", "bias"}:
            raise UnsupportedLayerError(
                f"{_where(path, m)} has parameters {own}, expected 'weight' and optionally "
                "'bias' (weight normalisation?): remove the reparametrisation first"
            )
        if isinstance(m, _LAYER_TYPES):
            layers.append(_new_layer(path, m))
        else:
            layers[-1] = _attach_norm(layers[-1] if open_layer else None, previous, path, m)
        previous, open_layer = _where(path, m), isinstance(m, _LAYER_TYPES)
    return tuple(layers)


def _new_layer(path: str, m: nn.Module) -> LayerTokens:
    """Tokens of one Linear / Conv: ``W[o]`` flattened, then ``b[o]``."""
    if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups != 1:
        raise UnsupportedLayerError(
            f"{_where(path, m)} is a grouped convolution (groups={m.groups}): its tokens "
            "would hold only one group's input channels. Use groups=1 convolutions"
        )
    pieces = [(_join(path, "weight"), math.prod(m.weight.shape[1:]))]
    if m.bias is not None:
        pieces.append((_join(path, "bias"), 1))
    return LayerTokens(layer=path, n_out=int(m.weight.shape[0]), pieces=tuple(pieces))


def _attach_norm(last: LayerTokens | None, previous: str, path: str, m: nn.Module) -> LayerTokens:
    """``last`` with the BatchNorm's ``gamma[o], beta[o]`` appended to its tokens.

    ``last`` is the layer the BatchNorm directly follows (None if it follows none).
    """
    if last is None or last.n_out != m.num_features:
        raise UnsupportedLayerError(
            f"{_where(path, m)} with {m.num_features} features does not directly follow a "
            f"Linear/Conv layer with {m.num_features} outputs (it follows {previous}): a "
            "BatchNorm's gamma/beta are tokenized with the units of the layer just before "
            "it. Place each BatchNorm right after the layer it normalises"
        )
    bn = ((_join(path, "weight"), 1), (_join(path, "bias"), 1))
    return replace(last, pieces=(*last.pieces, *bn))


def _reject_tied(module: nn.Module) -> None:
    """Raise if one parameter tensor is reachable under several names."""
    names_of: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    tied = [names for names in names_of.values() if len(names) > 1]
    if tied:
        raise UnsupportedLayerError(
            f"tied/shared parameters {tied[:_MAX_REPORTED]}: one tensor under several names "
            "would get several generated tokens. Untie them (give each module its own "
            "parameter, e.g. copy.deepcopy the shared module) before tokenizing"
        )


def _coverage_problems(spec: ParameterSpec, layers: Sequence[LayerTokens]) -> list[str]:
    """Why the pieces do not cover ``spec`` exactly once with matching shapes ([] if they do)."""
    shapes = {e.name: e.shape for e in spec.entries}
    counts: dict[str, int] = {}
    problems = []
    for entry in layers:
        for name, width in entry.pieces:
            counts[name] = counts.get(name, 0) + 1
            shape = shapes.get(name)
            if shape is None:
                problems.append(f"{name!r} (layer {entry.layer!r}) is not a parameter")
            elif not shape or shape[0] != entry.n_out or math.prod(shape[1:]) != width:
                problems.append(f"{name!r} of shape {shape} is not ({entry.n_out}, {width})")
    problems += [f"{n!r} is in {c} tokens" for n, c in counts.items() if c > 1]
    problems += [f"{n!r} is in no token" for n in shapes if n not in counts]
    return problems[:_MAX_REPORTED]


def _where(path: str, m: nn.Module) -> str:
    """``"layer 'features.3' (Conv2d)"``, or ``"the root module (Linear)"``."""
    return f"{f'layer {path!r}' if path else 'the root module'} ({type(m).__name__})"


def _join(path: str, attr: str) -> str:
    return f"{path}.{attr}" if path else attr


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_positive(what: str, value: object) -> None:
    if not _is_positive_int(value):
        raise InvalidParameterError(f"{what} must be a positive int, got {value!r}")
