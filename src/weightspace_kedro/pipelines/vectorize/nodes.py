"""Nodes of the vectorize pipeline: thin calls into :mod:`weightspace.weights`."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from weightspace.errors import EmptyZooError
from weightspace.weights import ParameterSpec, WeightSet
from weightspace.zoo import Zoo


def _slug(arch_key: str) -> str:
    arch = json.loads(arch_key)
    shape = "x".join(str(s) for s in arch["input_shape"])
    digest = hashlib.sha256(arch_key.encode()).hexdigest()[:8]
    return f"{arch['name']}_in{shape}_c{arch['n_classes']}_{digest}"


def vectorize_zoo(zoo: Zoo, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One weight-set bundle per architecture instance of the zoo."""
    index = zoo.index
    if params.get("final_only", True):
        index = index[index["is_final"].astype(bool)]
    if index.empty:
        raise EmptyZooError("the zoo has no checkpoints to vectorize; run the zoo pipeline")
    bundles = {}
    for arch_key, group in index.groupby("arch_key", sort=True):
        ids = group["model_id"].tolist()
        spec = ParameterSpec.from_module(
            zoo.arch_spec(ids[0]).build(), include_buffers=params.get("include_buffers", True)
        )
        weight_set = WeightSet.build(
            zoo.stack(ids), spec, ids, arch_key,
            chunk_size=params["chunk_size"], per_layer=params.get("per_layer", True),
            normalize=params.get("normalize", "layer"),
        )  # fmt: skip
        bundles[_slug(arch_key)] = weight_set.to_bundle()
    return bundles


def report(weight_sets: dict[str, Any]) -> dict[str, float]:
    """Sizes of each weight set and the measured round-trip errors (must be 0 / ~1e-7)."""
    start = time.perf_counter()
    metrics: dict[str, float] = {"n_models": 0, "n_weight_sets": len(weight_sets)}
    worst = {"vectorize": 0.0, "chunk": 0.0, "normalize": 0.0}
    for name, loader in sorted(weight_sets.items()):
        ws = WeightSet.from_bundle(loader() if callable(loader) else loader)
        n, d = ws.weights.shape
        metrics["n_models"] += n
        metrics[f"{name}.n_models"] = n
        metrics[f"{name}.n_params"] = d
        metrics[f"{name}.n_chunks"] = ws.layout.num_chunks
        metrics[f"{name}.padding_fraction"] = ws.layout.padding / (
            ws.layout.num_chunks * ws.layout.chunk_size
        )
        for k, v in ws.roundtrip_error().items():
            worst[k] = max(worst[k], v)
    metrics.update({f"max_roundtrip_error_{k}": v for k, v in worst.items()})
    metrics["report_seconds"] = time.perf_counter() - start
    return metrics
