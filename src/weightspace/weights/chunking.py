"""Equal-size chunking of weight vectors with zero padding, as in D2NWG.

D2NWG (Section 3.2, "layer-vectorization and chunking", and the authors' discussion of
scaling to ResNet-18, GPT-2 and LLaMA) splits large weight vectors into *"smaller, more
manageable pieces of equal size"*, either **layer-wise** or **model-wise**, pads the last
piece, and conditions the diffusion model on each chunk's identity (*"we used layer
indexing as class conditioning for layer-wise chunking and generation"*); at sampling
time the chunks of a network or layer are generated and concatenated back in their
original order.

A :class:`ChunkLayout` is computed from a :class:`~weightspace.weights.spec.ParameterSpec`
alone and describes that split for ``M`` chunks of ``c = chunk_size`` elements:

* ``per_layer=True`` (layer-wise): each layer's flat vector is cut into
  ``ceil(D_layer / c)`` chunks; the last chunk of a layer is zero-padded; no chunk
  straddles two layers. ``layer_id`` is the chunk's layer, ``position`` its index within
  the layer.
* ``per_layer=False`` (model-wise): the whole model vector is cut into ``ceil(D / c)``
  chunks; only the last chunk is padded and chunks may straddle layers. ``layer_id`` is
  the layer of the chunk's **first** element and ``position`` the chunk's index among
  the chunks whose first element lies in that layer.

:func:`chunk` and :func:`unchunk` are one ``index_copy_`` / ``index_select`` each with an
index precomputed from the layout (no Python loop over chunks) and are bit-exact
inverses: ``unchunk(chunk(x, L), L)`` equals ``x`` and padding is exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from weightspace.errors import CheckpointMismatchError, InvalidParameterError, ShapeError
from weightspace.weights.spec import ParameterSpec

_FORMAT = "weightspace.ChunkLayout"
_VERSION = 1
_TENSOR_FIELDS = ("layer_id", "position", "start", "length", "mask")


@dataclass(frozen=True, eq=False)
class ChunkLayout:
    """How a flat weight vector of length ``D`` is cut into ``M`` chunks of ``chunk_size``.

    Build it with :meth:`from_spec`; the constructor checks that every field agrees with
    the layout recomputed from ``layer_numel``, ``chunk_size`` and ``per_layer``.

    Attributes
    ----------
    spec_fingerprint : str
        :attr:`ParameterSpec.fingerprint` of the spec it was built from.
    chunk_size : int
        ``c``, elements per chunk (padding included).
    per_layer : bool
        Layer-wise (``True``) or model-wise (``False``) chunking.
    layer_names : tuple of str
        ``spec.layers``; ``layer_id`` indexes into it.
    layer_numel : tuple of int
        Elements of each layer, in the same order.
    layer_id : LongTensor, shape (M,)
        Layer of each chunk (model-wise: layer of the chunk's first element).
    position : LongTensor, shape (M,)
        Index of the chunk within its layer (0, 1, ...).
    start : LongTensor, shape (M,)
        Offset of the chunk's first element in the flat vector.
    length : LongTensor, shape (M,)
        Number of real (non-padding) elements, in ``[1, chunk_size]``.
    mask : BoolTensor, shape (M, chunk_size)
        ``True`` where the chunk holds a real element, ``False`` on padding.
    """

    spec_fingerprint: str
    chunk_size: int
    per_layer: bool
    layer_names: tuple[str, ...]
    layer_numel: tuple[int, ...]
    layer_id: torch.Tensor
    position: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    mask: torch.Tensor
    _index_cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        c = self.chunk_size
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise InvalidParameterError(f"chunk_size must be a positive int, got {c!r}")
        object.__setattr__(self, "layer_names", tuple(self.layer_names))
        object.__setattr__(self, "layer_numel", tuple(int(n) for n in self.layer_numel))
        object.__setattr__(self, "per_layer", bool(self.per_layer))
        if len(self.layer_names) != len(self.layer_numel):
            raise InvalidParameterError(
                f"{len(self.layer_names)} layer names but {len(self.layer_numel)} layer sizes"
            )
        expected = _compute(self.layer_numel, c, self.per_layer)
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise InvalidParameterError(f"ChunkLayout.{name} must be a Tensor")
            value = value.detach().cpu()
            if value.shape != expected[name].shape or not torch.equal(
                value.to(expected[name].dtype), expected[name]
            ):
                raise InvalidParameterError(
                    f"ChunkLayout.{name} is inconsistent with chunk_size={c}, "
                    f"per_layer={self.per_layer} and the layer sizes: the stored layout is "
                    "corrupt or was edited; rebuild it with ChunkLayout.from_spec"
                )
            object.__setattr__(self, name, expected[name])
        # Flat positions (in the (M * c) chunk space) of the D real elements, in vector
        # order: chunks are consecutive and left-aligned in both modes.
        self._index_cache[torch.device("cpu")] = self.mask.reshape(-1).nonzero().flatten()

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_spec(cls, spec: ParameterSpec, chunk_size: int, per_layer: bool = True) -> ChunkLayout:
        """Compute the layout of ``spec`` for chunks of ``chunk_size`` elements.

        Parameters
        ----------
        spec : ParameterSpec
        chunk_size : int
            Elements per chunk, >= 1.
        per_layer : bool
            Layer-wise (default) or model-wise chunking.

        Returns
        -------
        ChunkLayout
        """
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise InvalidParameterError(f"chunk_size must be a positive int, got {chunk_size!r}")
        layer_numel = tuple(spec.layer_numel(layer) for layer in spec.layers)
        tensors = _compute(layer_numel, chunk_size, per_layer)
        return cls(
            spec_fingerprint=spec.fingerprint,
            chunk_size=chunk_size,
            per_layer=per_layer,
            layer_names=spec.layers,
            layer_numel=layer_numel,
            **tensors,
        )

    # ------------------------------------------------------------------ views
    @property
    def num_chunks(self) -> int:
        """``M``."""
        return int(self.layer_id.shape[0])

    @property
    def total_numel(self) -> int:
        """``D``, the length of the flat vector."""
        return sum(self.layer_numel)

    @property
    def num_layers(self) -> int:
        """Number of layers (``layer_id`` ranges over ``[0, num_layers)``)."""
        return len(self.layer_names)

    @property
    def padding(self) -> int:
        """Number of padding elements over all chunks (``M * c - D``)."""
        return self.num_chunks * self.chunk_size - self.total_numel

    def chunks_of(self, layer: str) -> torch.Tensor:
        """Indices (LongTensor) of the chunks whose ``layer_id`` is ``layer``."""
        if layer not in self.layer_names:
            raise InvalidParameterError(f"unknown layer {layer!r}; layers: {self.layer_names}")
        return (self.layer_id == self.layer_names.index(layer)).nonzero().flatten()

    def index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Gather index, shape (D,): position of each vector element in ``(M * c)``.

        Cached per device, so hot loops on a GPU transfer it once.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._index_cache:
            self._index_cache[device] = self._index_cache[torch.device("cpu")].to(device)
        return self._index_cache[device]

    def check_spec(self, spec: ParameterSpec) -> None:
        """Raise :class:`CheckpointMismatchError` unless the layout was built from ``spec``."""
        if spec.fingerprint != self.spec_fingerprint:
            raise CheckpointMismatchError(
                f"chunk layout was built for parameter spec {self.spec_fingerprint[:12]}..., "
                f"not for {spec.fingerprint[:12]}...: rebuild it with "
                "ChunkLayout.from_spec(spec, chunk_size)"
            )

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """Plain dict: JSON-able metadata plus the five tensors (CPU).

        For safetensors, store the tensor values as tensors and the rest as JSON
        metadata; :meth:`from_dict` accepts the merged dict back and re-validates it.
        """
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "spec_fingerprint": self.spec_fingerprint,
            "chunk_size": self.chunk_size,
            "per_layer": self.per_layer,
            "layer_names": list(self.layer_names),
            "layer_numel": list(self.layer_numel),
            **{name: getattr(self, name).clone() for name in _TENSOR_FIELDS},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChunkLayout:
        """Inverse of :meth:`to_dict`; raises on a corrupt or edited layout."""
        if data.get("format") != _FORMAT or data.get("version") != _VERSION:
            raise InvalidParameterError(
                f"not a serialized ChunkLayout version {_VERSION} (format "
                f"{data.get('format')!r}, version {data.get('version')!r})"
            )
        try:
            return cls(
                spec_fingerprint=str(data["spec_fingerprint"]),
                chunk_size=int(data["chunk_size"]),
                per_layer=bool(data["per_layer"]),
                layer_names=tuple(data["layer_names"]),
                layer_numel=tuple(int(n) for n in data["layer_numel"]),
                **{name: data[name] for name in _TENSOR_FIELDS},
            )
        except KeyError as exc:
            raise InvalidParameterError(f"serialized ChunkLayout lacks {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkLayout):
            return NotImplemented
        return (
            self.spec_fingerprint == other.spec_fingerprint
            and self.chunk_size == other.chunk_size
            and self.per_layer == other.per_layer
            and self.layer_names == other.layer_names
            and self.layer_numel == other.layer_numel
        )  # the tensors are a function of these fields (checked at construction)

    def __hash__(self) -> int:
        return hash((self.spec_fingerprint, self.chunk_size, self.per_layer, self.layer_numel))

    def __repr__(self) -> str:
        mode = "layer-wise" if self.per_layer else "model-wise"
        return (
            f"ChunkLayout({mode}, chunk_size={self.chunk_size}, M={self.num_chunks}, "
            f"D={self.total_numel}, padding={self.padding}, "
            f"spec={self.spec_fingerprint[:12]})"
        )


def chunk(matrix: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Cut ``N`` flat weight vectors into zero-padded chunks.

    Parameters
    ----------
    matrix : Tensor, shape (N, D)
        Model-wise vectors (:func:`~weightspace.weights.vectorize.vectorize`).
    layout : ChunkLayout

    Returns
    -------
    Tensor, shape (N, M, chunk_size)
        Same dtype and device; padding (``~layout.mask``) is exactly zero.
    """
    d = layout.total_numel
    if matrix.dim() != 2 or matrix.shape[1] != d:
        raise ShapeError(
            f"chunk expects a matrix of shape (N, {d}) (one flat model vector per row), got "
            f"{tuple(matrix.shape)}"
        )
    n_models = matrix.shape[0]
    out = matrix.new_zeros((n_models, layout.num_chunks * layout.chunk_size))
    out.index_copy_(1, layout.index(matrix.device), matrix)
    return out.view(n_models, layout.num_chunks, layout.chunk_size)


def unchunk(chunks: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Inverse of :func:`chunk`: concatenate the real elements back into flat vectors.

    Padding positions are ignored, whatever they hold (a generator's output need not
    be zero there).

    Parameters
    ----------
    chunks : Tensor, shape (N, M, chunk_size)
    layout : ChunkLayout

    Returns
    -------
    Tensor, shape (N, D)
    """
    m, c = layout.num_chunks, layout.chunk_size
    if chunks.dim() != 3 or tuple(chunks.shape[1:]) != (m, c):
        raise ShapeError(
            f"unchunk expects chunks of shape (N, {m}, {c}), got {tuple(chunks.shape)}"
        )
    flat = chunks.reshape(chunks.shape[0], m * c)
    return flat.index_select(1, layout.index(chunks.device))


def _compute(
    layer_numel: Sequence[int], chunk_size: int, per_layer: bool
) -> dict[str, torch.Tensor]:
    """Vectorised layout computation (no loop over layers or chunks)."""
    c = chunk_size
    n = torch.tensor(list(layer_numel), dtype=torch.long)
    if (n < 0).any():
        raise InvalidParameterError(f"layer sizes must be >= 0, got {list(layer_numel)}")
    layer_stop = torch.cumsum(n, 0)
    layer_start = layer_stop - n
    if per_layer:
        per = (n + c - 1) // c
        layer_id = torch.repeat_interleave(torch.arange(len(n)), per)
        first = torch.cumsum(per, 0) - per
        position = torch.arange(int(per.sum())) - first[layer_id]
        start = layer_start[layer_id] + position * c
        length = torch.clamp(n[layer_id] - position * c, max=c)
    else:
        total = int(n.sum())
        start = torch.arange((total + c - 1) // c) * c
        length = torch.clamp(total - start, max=c)
        layer_id = torch.searchsorted(layer_stop, start, right=True)
        position = torch.arange(start.shape[0]) - torch.searchsorted(layer_id, layer_id)
    mask = torch.arange(c).unsqueeze(0) < length.unsqueeze(1)
    return {
        "layer_id": layer_id,
        "position": position,
        "start": start,
        "length": length,
        "mask": mask,
    }
