"""Run a Kedro pipeline under ``torchrun``: one process per device, rank 0 saves.

``torchrun --nproc_per_node=N -m weightspace_kedro run --pipeline=zoo`` starts ``N``
processes; ``python -m weightspace_kedro`` picks :class:`DistributedRunner` for them
(``kedro run`` under torchrun must name it: ``--runner=weightspace_kedro.runner.
DistributedRunner``; the project hook refuses a distributed launch without it).

Nodes tagged :data:`DISTRIBUTED` (zoo training, the D2NWG generators' VAE and
diffusion training) are the work the ranks share: each calls the library with
:func:`node_world`, and the library splits the zoo's members or each batch's rows across
the ranks. The runner runs a pipeline in two phases:

1. every rank runs the distributed nodes and the nodes they depend on (data loading,
   planning, feature extraction: cheap and deterministic, so every rank computes the same
   inputs; the library checks that it did), in the same order;
2. rank 0 alone runs the rest (evaluation, reports, plots).

Only rank 0 saves catalog outputs: on the other ranks every output of phase 1 is
replaced by an in-memory dataset, so nothing they compute reaches ``data/``. The zoo
itself is written by the library (each rank its own checkpoints, rank 0 the index).
A plain ``kedro run`` (no ``WORLD_SIZE``) with this runner is a sequential run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from kedro.io import MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from weightspace.device import resolve_device
from weightspace.distributed import World, current_world, shutdown

__all__ = ["DISTRIBUTED", "DistributedRunner", "node_device", "node_world"]

log = logging.getLogger(__name__)

DISTRIBUTED = "distributed"
"""Tag of the nodes whose work the ranks of a torchrun launch share."""


def node_world(device: str = "auto") -> World:
    """The world a node runs in (the single process outside torchrun).

    ``device`` is used only when no runner has joined the world yet (a node called
    directly); under :class:`DistributedRunner` the world exists before any node runs.
    """
    return current_world(device)


def node_device(device: str = "auto") -> torch.device:
    """This rank's device under torchrun, else ``device`` resolved (``auto``: CUDA if
    present)."""
    world = node_world(device)
    return world.device if world.active else resolve_device(device)


def _param(catalog: Any, name: str, default: Any) -> Any:
    key = f"params:{name}"
    try:
        return catalog.load(key) if key in catalog else default
    except Exception:  # a catalog without parameters: keep the default
        return default


def split_phases(pipeline: Pipeline) -> tuple[Pipeline, Pipeline]:
    """``(shared, main_only)``: the distributed nodes with everything they depend on, and
    the rest of the pipeline."""
    names = [n.name for n in pipeline.nodes if DISTRIBUTED in n.tags]
    if not names:
        return Pipeline([]), pipeline
    shared = pipeline.to_nodes(*names)
    return shared, pipeline - shared


class DistributedRunner(SequentialRunner):
    """A sequential runner that, under torchrun, shares the distributed nodes between the
    ranks and lets rank 0 alone save outputs and run the rest (see the module docstring).
    """

    def run(
        self,
        pipeline: Pipeline,
        catalog: Any,
        hook_manager: Any = None,
        run_id: str | None = None,
        only_missing_outputs: bool = False,
    ) -> dict[str, Any]:
        """Run ``pipeline`` on this rank (everything, when not under torchrun)."""
        world = current_world(str(_param(catalog, "device", "auto")))
        if not world.active:
            return super().run(pipeline, catalog, hook_manager, run_id, only_missing_outputs)
        shared, rest = split_phases(pipeline)
        log.info(
            "rank %d of %d: %d shared node(s)%s",
            world.rank,
            world.world_size,
            len(shared.nodes),
            f", then {len(rest.nodes)} on rank 0 only" if world.is_main else "",
        )
        out: dict[str, Any] = {}
        self._keep = rest.inputs() if world.is_main else set()
        try:
            if not world.is_main:
                for name in shared.all_outputs():
                    catalog[name] = MemoryDataset(copy_mode="assign")
            if shared.nodes:
                out |= super().run(shared, catalog, hook_manager, run_id, only_missing_outputs)
            if world.is_main and rest.nodes:
                out |= super().run(rest, catalog, hook_manager, run_id, only_missing_outputs)
        finally:
            self._keep = set()
            shutdown()
        return out if world.is_main else {}

    def _release_datasets(self, node: Any, catalog: Any, load_counts: dict, pipeline: Any) -> None:
        """As Kedro's, but keeps the in-memory outputs that rank 0's second phase reads."""
        keep = getattr(self, "_keep", set())
        for dataset in node.inputs:
            load_counts[dataset] -= 1
            if load_counts[dataset] < 1 and dataset not in pipeline.inputs() | keep:
                catalog.release(dataset)
        for dataset in node.outputs:
            if load_counts[dataset] < 1 and dataset not in pipeline.outputs() | keep:
                catalog.release(dataset)
