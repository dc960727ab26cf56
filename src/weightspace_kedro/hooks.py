"""Project hooks: seed every generator, resolve ``device: auto`` once per run, time nodes;
check the report's inputs before a run and record each pipeline's provenance after it."""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import numpy as np
import torch
from kedro.framework.hooks import hook_impl

from weightspace.device import resolve_device
from weightspace.distributed import DistributedSetupError
from weightspace.errors import InvalidParameterError
from weightspace_kedro.datasets.node_timings import record
from weightspace_kedro.pipelines.report.inputs import check_report_inputs
from weightspace_kedro.provenance import save_provenance

log = logging.getLogger(__name__)


def check_distributed_launch(run_params: dict[str, Any]) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) the run must use the distributed runner, or
    every rank would save every output and train the whole zoo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "DistributedRunner" not in str(
        run_params.get("runner")
    ):
        raise DistributedSetupError(
            "this run was started by torchrun (WORLD_SIZE="
            f"{os.environ['WORLD_SIZE']}) with the runner {run_params.get('runner')!r}: "
            "launch it as `torchrun ... -m weightspace_kedro run ...` (which picks the "
            "distributed runner) or add --runner=weightspace_kedro.runner.DistributedRunner"
        )


class WeightspaceHooks:
    """Seeding and device selection from the global ``parameters.yml``; node timing;
    the report's input check and the provenance record."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        """Start the node's clock."""
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        """Record ``<node>_seconds`` (see :mod:`weightspace_kedro.datasets.node_timings`)."""
        start = self._started.pop(node.name, None)
        if start is not None:
            short = node.name.rsplit(".", 1)[-1]
            record(node.namespace, short, time.perf_counter() - start)

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Show the library's INFO logs (progress of zoo runs, resumes) next to Kedro's."""
        for name in ("weightspace", "weightspace_kedro"):
            logging.getLogger(name).setLevel(logging.INFO)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Seed Python, NumPy and torch from ``params:seed``; set torch's CPU thread count
        from ``params:threads`` (the same count gives the same numbers on a 2-core and a
        16-core CPU: reductions split the same way); log the device in use. A run that
        holds the report's nodes first checks that every method it compares has outputs
        (:func:`~weightspace_kedro.pipelines.report.inputs.check_report_inputs`)."""
        check_distributed_launch(run_params)
        check_report_inputs(pipeline, catalog, run_params.get("env"))
        seed = self._param(catalog, "seed", 0)
        device = resolve_device(self._param(catalog, "device", "auto"))
        threads = self._param(catalog, "threads", None)
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InvalidParameterError(
                    f"threads (conf/<env>/parameters.yml) must be an integer >= 1 or null "
                    f"(leave torch's default), got {threads!r}"
                )
            torch.set_num_threads(threads)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        log.info(
            "weightspace: seed=%d, device=%s, torch threads=%d",
            seed,
            device,
            torch.get_num_threads(),
        )

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], catalog: Any) -> None:
        """Save ``<pipeline>.provenance`` (commit, config hash, versions) for each pipeline
        the run asked for (see :mod:`weightspace_kedro.provenance`)."""
        from kedro.framework.project import pipelines

        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 records
            save_provenance(run_params, catalog, pipelines)

    @staticmethod
    def _param(catalog: Any, name: str, default: Any) -> Any:
        key = f"params:{name}"
        try:
            return catalog.load(key) if key in catalog else default
        except Exception:  # a catalog without parameters (tests): keep the default
            return default
