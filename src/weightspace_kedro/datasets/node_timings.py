"""Node wall times recorded by the project hook, readable as a dataset.

:class:`weightspace_kedro.hooks.WeightspaceHooks` times every node (``before_node_run`` /
``after_node_run``) into :data:`NODE_SECONDS`; a report node that lists
``<namespace>.node_seconds`` among its inputs receives ``{node_short_name: seconds}`` for
the nodes of that namespace that have run so far in this process. Nodes never time
themselves.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset

NODE_SECONDS: dict[str, dict[str, float]] = {}
"""namespace ('' for none) -> node short name -> wall seconds of its last run."""


def record(namespace: str | None, name: str, seconds: float) -> None:
    """Store one node's wall time (called by the hook)."""
    NODE_SECONDS.setdefault(namespace or "", {})[name] = float(seconds)


class NodeTimingsDataset(AbstractDataset[None, dict[str, float]]):
    """Read-only: ``{node_short_name: seconds}`` of one namespace's nodes."""

    def __init__(self, namespace: str = "", metadata: dict | None = None):
        self._namespace = namespace
        self.metadata = metadata

    def load(self) -> dict[str, float]:
        """The recorded times (empty when no node of the namespace has run)."""
        return dict(NODE_SECONDS.get(self._namespace, {}))

    def save(self, data: Any) -> None:
        """Timings are recorded by the hook, never saved by a node."""
        raise NotImplementedError("node timings are recorded by the project hook")

    def _describe(self) -> dict[str, Any]:
        return {"namespace": self._namespace}

    def _exists(self) -> bool:
        return True
