"""Padded stacks of task datasets, so each model of a stack can read its own task.

A stack of ``T`` tasks of different sizes becomes ``x: (T, N_max, *input_shape)``,
``y: (T, N_max)`` and ``n: (T,)``; positions ``>= n[t]`` are padding (zeros) and are never
used as real samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from weightspace.data.base import Split
from weightspace.errors import EmptyZooError, ShapeError


@dataclass(frozen=True)
class TaskStack:
    """Padded samples of ``T`` tasks (one split each).

    Attributes
    ----------
    x : Tensor (T, N_max, *input_shape)
    y : LongTensor (T, N_max)
    n : LongTensor (T,)
    """

    x: torch.Tensor
    y: torch.Tensor
    n: torch.Tensor

    @classmethod
    def from_splits(cls, splits: Sequence[Split], device: torch.device | str = "cpu") -> TaskStack:
        """Pad and stack the given splits (all with the same input shape)."""
        if not splits:
            raise EmptyZooError("no tasks to stack; the zoo grid selected no task")
        shapes = {tuple(s.x.shape[1:]) for s in splits}
        if len(shapes) != 1:
            raise ShapeError(
                f"tasks stacked together must share an input shape, got {sorted(shapes)}"
            )
        n_max = max(len(s) for s in splits)
        x = torch.zeros((len(splits), n_max, *next(iter(shapes))), dtype=splits[0].x.dtype)
        y = torch.zeros((len(splits), n_max), dtype=torch.int64)
        for t, s in enumerate(splits):
            x[t, : len(s)] = s.x
            y[t, : len(s)] = s.y
        n = torch.tensor([len(s) for s in splits], dtype=torch.int64)
        return cls(x.to(device), y.to(device), n.to(device))

    @property
    def n_max(self) -> int:
        """Padded length."""
        return int(self.x.shape[1])

    def gather(
        self, task_index: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``positions`` (B, k) of tasks ``task_index`` (B,): x (B, k, ...), y (B, k)."""
        t = task_index[:, None]
        return self.x[t, positions], self.y[t, positions]
