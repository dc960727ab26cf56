"""Parameter spec: the ordered layout of one architecture's weights in a flat vector.

A :class:`ParameterSpec` lists every tensor that is treated as a weight, in state-dict
order, with its shape, its offset into the flat vector and the layer (owning module)
it belongs to. It is the contract between checkpoints and everything that consumes
weights as data: :mod:`weightspace.weights.vectorize` turns state dicts into
``(N, D)`` matrices with it, :mod:`weightspace.weights.chunking` cuts those matrices
into per-layer chunks with it (D2NWG, Section 3.2 "layer-vectorization and chunking":
*"we adopt layer-wise or model-wise chunking to split the large parameters into smaller,
more manageable pieces of equal size"*), and generator checkpoints store its
:attr:`ParameterSpec.fingerprint` so that sampled weights are only ever unvectorized into
the architecture they were learnt from.

Which tensors are weights
-------------------------
* every parameter (``kind="parameter"``);
* floating-point buffers such as BatchNorm ``running_mean`` / ``running_var``
  (``kind="buffer"``), unless ``include_buffers=False``;
* never integer or boolean tensors (BatchNorm ``num_batches_tracked``): they are
  bookkeeping, not weights, and are left out of the vector.

Tied weights appear under every state-dict name that refers to them (as in
``module.state_dict()``), so an unvectorized state dict loads back with
``load_state_dict`` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from weightspace.errors import CheckpointMismatchError, InvalidParameterError
from weightspace.weights.spec_checks import check_state_dict

PARAMETER = "parameter"
BUFFER = "buffer"
KINDS = (PARAMETER, BUFFER)

_FORMAT = "weightspace.ParameterSpec"
_VERSION = 1


def layer_of(name: str) -> str:
    """Return the owning module's path of a state-dict key (``""`` at top level).

    Examples
    --------
    >>> layer_of("features.0.weight")
    'features.0'
    >>> layer_of("bias")
    ''
    """
    return name.rpartition(".")[0]


@dataclass(frozen=True)
class ParamEntry:
    """One tensor of the spec.

    Attributes
    ----------
    name : str
        State-dict key, e.g. ``"features.0.weight"``.
    shape : tuple of int
        Shape of the tensor for one model.
    offset : int
        Index of the tensor's first element in the flat model vector.
    layer : str
        Path of the module that owns the tensor (``name`` without its last component;
        ``""`` for a tensor registered on the root module).
    kind : str
        ``"parameter"`` or ``"buffer"``.
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    layer: str
    kind: str = PARAMETER

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidParameterError(f"entry name must be a non-empty str, got {self.name!r}")
        shape = tuple(self.shape)
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in shape):
            raise InvalidParameterError(
                f"entry {self.name!r}: shape must be a tuple of non-negative ints, got {shape!r}"
            )
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.offset, int) or self.offset < 0:
            raise InvalidParameterError(
                f"entry {self.name!r}: offset must be a non-negative int, got {self.offset!r}"
            )
        if self.kind not in KINDS:
            raise InvalidParameterError(
                f"entry {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )

    @property
    def numel(self) -> int:
        """Number of elements of the tensor (product of ``shape``)."""
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        """One past the index of the tensor's last element in the flat vector."""
        return self.offset + self.numel

    def to_dict(self) -> dict:
        """JSON-able dict of the entry."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "offset": self.offset,
            "layer": self.layer,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class ParameterSpec:
    """Ordered layout of an architecture's weights in a flat vector of length ``D``.

    Parameters
    ----------
    entries : tuple of ParamEntry
        In state-dict order; offsets must be contiguous (entry ``i`` starts where entry
        ``i - 1`` stops) and every layer's entries must be adjacent.

    Notes
    -----
    Build one with :meth:`from_module` (preferred: it knows which tensors are buffers)
    or :meth:`from_state_dict`. Two specs are equal iff their fingerprints are equal.
    """

    entries: tuple[ParamEntry, ...]

    def __post_init__(self) -> None:
        entries = tuple(self.entries)
        object.__setattr__(self, "entries", entries)
        if not entries:
            raise InvalidParameterError(
                "a ParameterSpec needs at least one entry; the module or state dict has no "
                "floating-point parameters"
            )
        seen: set[str] = set()
        closed_layers: set[str] = set()
        expected_offset = 0
        previous_layer: str | None = None
        for entry in entries:
            if not isinstance(entry, ParamEntry):
                raise InvalidParameterError(f"entries must be ParamEntry, got {type(entry)}")
            if entry.name in seen:
                raise InvalidParameterError(f"duplicate entry name {entry.name!r}")
            seen.add(entry.name)
            if entry.offset != expected_offset:
                raise InvalidParameterError(
                    f"entry {entry.name!r} has offset {entry.offset}, expected "
                    f"{expected_offset}: offsets must be contiguous in entry order"
                )
            expected_offset = entry.stop
            if entry.layer != previous_layer:
                if entry.layer in closed_layers:
                    raise InvalidParameterError(
                        f"the tensors of layer {entry.layer!r} are not adjacent (entry "
                        f"{entry.name!r} comes after another layer's): order the keys so that "
                        "each module's tensors are together, as module.state_dict() does"
                    )
                if previous_layer is not None:
                    closed_layers.add(previous_layer)
                previous_layer = entry.layer

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_entries(cls, items: Iterable[tuple[str, tuple[int, ...], str]]) -> ParameterSpec:
        """Build a spec from ``(name, shape, kind)`` triples, computing offsets and layers."""
        entries = []
        offset = 0
        for name, shape, kind in items:
            entry = ParamEntry(name, tuple(int(s) for s in shape), offset, layer_of(name), kind)
            entries.append(entry)
            offset = entry.stop
        return cls(tuple(entries))

    @classmethod
    def from_module(cls, module: nn.Module, include_buffers: bool = True) -> ParameterSpec:
        """Spec of a module's state dict.

        Parameters
        ----------
        module : nn.Module
            Any module; lazy modules must be materialized (run one forward pass) first.
        include_buffers : bool
            Include floating-point persistent buffers (BatchNorm running statistics) as
            ``kind="buffer"``. Integer buffers are always excluded.

        Returns
        -------
        ParameterSpec
        """
        param_names = {name for name, _ in module.named_parameters(remove_duplicate=False)}
        items = []
        for name, tensor in module.state_dict(keep_vars=True).items():
            if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                raise InvalidParameterError(
                    f"{name!r} is not initialized (lazy module): run one forward pass on an "
                    "example input before building the parameter spec"
                )
            kind = PARAMETER if name in param_names else BUFFER
            if kind == BUFFER and not include_buffers:
                continue
            if not _is_weight_tensor(name, tensor):
                continue
            items.append((name, tuple(tensor.shape), kind))
        return cls.from_entries(items)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        buffer_names: Iterable[str] | None = None,
        include_buffers: bool = True,
    ) -> ParameterSpec:
        """Spec of a plain state dict.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            One model's tensors, in the order the spec should use.
        buffer_names : iterable of str, optional
            Keys that are buffers (e.g. ``{n for n, _ in module.named_buffers()}``). By
            default every floating-point tensor is treated as a parameter.
        include_buffers : bool
            Keep the floating-point tensors named in ``buffer_names`` (as
            ``kind="buffer"``); with ``False`` they are left out.

        Returns
        -------
        ParameterSpec
        """
        buffers = set(buffer_names or ())
        items = []
        for name, tensor in state_dict.items():
            if not isinstance(tensor, torch.Tensor):
                raise InvalidParameterError(
                    f"state dict value {name!r} is a {type(tensor).__name__}, not a Tensor"
                )
            kind = BUFFER if name in buffers else PARAMETER
            if kind == BUFFER and not include_buffers:
                continue
            if not _is_weight_tensor(name, tensor):
                continue
            items.append((name, tuple(tensor.shape), kind))
        return cls.from_entries(items)

    # ------------------------------------------------------------------ views
    @property
    def numel(self) -> int:
        """``D``, the length of the flat model vector."""
        return self.entries[-1].stop

    @property
    def names(self) -> tuple[str, ...]:
        """State-dict keys in vector order."""
        return tuple(e.name for e in self.entries)

    @cached_property
    def layers(self) -> tuple[str, ...]:
        """Layer names (owning module paths) in vector order, each once."""
        return tuple(dict.fromkeys(e.layer for e in self.entries))

    @cached_property
    def layer_slices(self) -> dict[str, slice]:
        """Layer name -> slice of the flat vector holding that layer's tensors."""
        starts: dict[str, int] = {}
        stops: dict[str, int] = {}
        for e in self.entries:
            starts.setdefault(e.layer, e.offset)
            stops[e.layer] = e.stop
        return {layer: slice(starts[layer], stops[layer]) for layer in self.layers}

    def layer_numel(self, layer: str) -> int:
        """Number of elements of one layer."""
        sl = self.layer_slices[layer]
        return sl.stop - sl.start

    def entries_of(self, layer: str) -> tuple[ParamEntry, ...]:
        """Entries of one layer, in vector order."""
        if layer not in self.layer_slices:
            raise InvalidParameterError(f"unknown layer {layer!r}; layers: {list(self.layers)}")
        return tuple(e for e in self.entries if e.layer == layer)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> ParamEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict:
        """JSON-able dict (format tag, version and the entries)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "entries": [e.to_dict() for e in self.entries],
        }

    def to_json(self, indent: int | None = None) -> str:
        """Serialize to JSON.

        With ``indent=None`` the output is canonical (sorted keys, no whitespace): the
        same spec always gives the same string, which is what :attr:`fingerprint`
        hashes.
        """
        if indent is None:
            return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> ParameterSpec:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != _FORMAT:
            raise InvalidParameterError(
                f"not a serialized ParameterSpec (format {data.get('format')!r}, expected "
                f"{_FORMAT!r})"
            )
        if data.get("version") != _VERSION:
            raise InvalidParameterError(
                f"unsupported ParameterSpec version {data.get('version')!r}; this library "
                f"reads version {_VERSION}"
            )
        try:
            entries = tuple(
                ParamEntry(
                    name=e["name"],
                    shape=tuple(e["shape"]),
                    offset=e["offset"],
                    layer=e["layer"],
                    kind=e["kind"],
                )
                for e in data["entries"]
            )
        except (KeyError, TypeError) as exc:
            raise InvalidParameterError(f"malformed ParameterSpec entry: {exc!r}") from exc
        return cls(entries)

    @classmethod
    def from_json(cls, text: str) -> ParameterSpec:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"ParameterSpec JSON does not parse: {exc}") from exc
        return cls.from_dict(data)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the canonical JSON.

        Store it next to anything derived from this spec (a generator checkpoint, a
        chunk layout, normalization statistics) and compare before use.
        """
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return (
            f"ParameterSpec({len(self.entries)} entries, {len(self.layers)} layers, "
            f"D={self.numel}, fingerprint={self.fingerprint[:12]})"
        )

    # ------------------------------------------------------------------ checks
    def check_fingerprint(self, fingerprint: str, what: str = "this object") -> None:
        """Raise :class:`CheckpointMismatchError` unless ``fingerprint`` is this spec's."""
        if fingerprint != self.fingerprint:
            raise CheckpointMismatchError(
                f"{what} was built for parameter spec {fingerprint[:12]}..., not for this "
                f"spec {self.fingerprint[:12]}... ({len(self.entries)} entries, "
                f"D={self.numel}): rebuild it from this spec, or use the spec it was built "
                "with (stored next to it as JSON)"
            )

    def check_state_dict(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        stacked: bool = False,
        strict: bool = True,
    ) -> int | None:
        """Check that a state dict has exactly this spec's tensors with its shapes.

        See :func:`weightspace.weights.spec_checks.check_state_dict`.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            One model's tensors, or with ``stacked=True`` tensors of shape
            ``(N, *shape)`` holding ``N`` models.
        stacked : bool
            Expect a leading model dimension (the same ``N`` on every tensor).
        strict : bool
            Also reject floating-point keys that the spec does not have. Integer
            tensors (``num_batches_tracked``) are never reported.

        Returns
        -------
        int or None
            ``N`` when ``stacked``, else ``None``.

        Raises
        ------
        CheckpointMismatchError
            Naming every missing, unexpected and wrongly shaped key.
        """
        return check_state_dict(self, state_dict, stacked=stacked, strict=strict)


def _is_weight_tensor(name: str, tensor: torch.Tensor) -> bool:
    """Floating-point tensors are weights; integer and bool tensors are bookkeeping."""
    if tensor.is_complex():
        raise InvalidParameterError(
            f"{name!r} is complex ({tensor.dtype}); complex weights are not supported: "
            "store real and imaginary parts as two real tensors"
        )
    return tensor.is_floating_point()
