"""A set of same-architecture models as weight data, ready for a generator.

:class:`WeightSet` bundles what a weight generator consumes (D2NWG, Section 3.2 of
``d2nwg_diffusion_weight_generation_review_discussion.txt``): the model-wise matrix
``(N, D)``, its per-layer normalization, and the equal-size chunks ``(N, M, c)`` of the
normalized weights with their padding mask and chunk/layer identities. It serialises to a
flat ``{"tensors", "metadata"}`` bundle (one safetensors file) and back, exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from weightspace.errors import InvalidParameterError
from weightspace.weights.chunking import ChunkLayout, chunk, unchunk
from weightspace.weights.normalize import LayerNormalizer
from weightspace.weights.spec import ParameterSpec
from weightspace.weights.vectorize import unvectorize, vectorize

NORMALIZE_MODES = ("layer", "element", "none")
_LAYOUT_TENSORS = ("layer_id", "position", "start", "length", "mask")


@dataclass(frozen=True)
class WeightSet:
    """Weights of ``N`` models of one architecture.

    Attributes
    ----------
    arch_key : str
        Canonical architecture description (:attr:`weightspace.nets.ArchSpec.key`).
    model_ids : tuple of str
        Row ``i`` of ``weights`` belongs to ``model_ids[i]``.
    spec : ParameterSpec
    weights : Tensor (N, D)
        Raw (unnormalized) model-wise vectors.
    layout : ChunkLayout
    normalizer : LayerNormalizer or None
    """

    arch_key: str
    model_ids: tuple[str, ...]
    spec: ParameterSpec
    weights: torch.Tensor
    layout: ChunkLayout
    normalizer: LayerNormalizer | None

    @classmethod
    def build(
        cls,
        stacked: Mapping[str, torch.Tensor],
        spec: ParameterSpec,
        model_ids: Sequence[str],
        arch_key: str,
        chunk_size: int = 64,
        per_layer: bool = True,
        normalize: str = "layer",
    ) -> WeightSet:
        """Vectorize a stack ``{name: (N, *shape)}``, fit normalization, lay out chunks."""
        if normalize not in NORMALIZE_MODES:
            raise InvalidParameterError(
                f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}"
            )
        weights = vectorize(dict(stacked), spec)
        if weights.shape[0] != len(model_ids):
            raise InvalidParameterError(
                f"{weights.shape[0]} models but {len(model_ids)} model ids were given"
            )
        normalizer = (
            None if normalize == "none" else LayerNormalizer.fit(weights, spec, mode=normalize)
        )
        layout = ChunkLayout.from_spec(spec, chunk_size, per_layer=per_layer)
        return cls(arch_key, tuple(model_ids), spec, weights, layout, normalizer)

    @property
    def normalized(self) -> torch.Tensor:
        """Normalized weights (N, D) (the raw ones when no normalizer)."""
        return self.weights if self.normalizer is None else self.normalizer.apply(self.weights)

    @property
    def chunks(self) -> torch.Tensor:
        """Zero-padded chunks of the normalized weights (N, M, chunk_size)."""
        return chunk(self.normalized, self.layout)

    def decode(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Chunks (N, M, c) in normalized space -> stacked state ``{name: (N, *shape)}``."""
        flat = unchunk(chunks, self.layout)
        if self.normalizer is not None:
            flat = self.normalizer.invert(flat)
        return unvectorize(flat, self.spec)

    def roundtrip_error(self) -> dict[str, float]:
        """Max abs error of each inverse on this set (vectorize/chunk must be 0)."""
        stacked = unvectorize(self.weights, self.spec)
        out = {
            "vectorize": float((vectorize(stacked, self.spec) - self.weights).abs().max()),
            "chunk": float(
                (unchunk(chunk(self.weights, self.layout), self.layout) - self.weights).abs().max()
            ),
        }
        if self.normalizer is not None:
            back = self.normalizer.invert(self.normalizer.apply(self.weights))
            out["normalize"] = float((back - self.weights).abs().max())
        return out

    # ---------------------------------------------------------------- storage
    def to_bundle(self) -> dict[str, dict[str, Any]]:
        """``{"tensors": ..., "metadata": ...}`` for one safetensors file."""
        layout = self.layout.to_dict()
        tensors = {"weights": self.weights, "chunks": self.chunks}
        tensors.update({f"layout.{k}": layout.pop(k) for k in _LAYOUT_TENSORS})
        if self.normalizer is not None:
            tensors.update({f"norm.{k}": v for k, v in self.normalizer.state_dict().items()})
        metadata = {
            "arch_key": self.arch_key,
            "model_ids": list(self.model_ids),
            "spec": self.spec.to_json(),
            "layout": layout,
            "normalized": self.normalizer is not None,
        }
        return {"tensors": tensors, "metadata": metadata}

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Mapping[str, Any]]) -> WeightSet:
        """Inverse of :meth:`to_bundle` (the layout and normalizer are re-validated)."""
        t, m = bundle["tensors"], bundle["metadata"]
        spec = ParameterSpec.from_json(m["spec"])
        layout = ChunkLayout.from_dict(
            {**m["layout"], **{k: t[f"layout.{k}"] for k in _LAYOUT_TENSORS}}
        )
        layout.check_spec(spec)
        normalizer = None
        if m["normalized"]:
            normalizer = LayerNormalizer.from_state_dict(
                {k[5:]: v for k, v in t.items() if k.startswith("norm.")}
            )
            normalizer.check_spec(spec)
        return cls(m["arch_key"], tuple(m["model_ids"]), spec, t["weights"], layout, normalizer)
