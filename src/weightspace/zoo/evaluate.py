"""Evaluate a trained stack on every member's own task: accuracy, NLL and ECE per split."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from weightspace.metrics import accuracy, ece, nll
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import predict_stack

SPLIT_NAMES = ("train", "val", "test")


@torch.no_grad()
def evaluate_stack(
    template: nn.Module,
    stacked: Mapping[str, torch.Tensor],
    task_index: torch.Tensor,
    splits: Mapping[str, TaskStack],
    chunk: int = 1024,
) -> dict[str, torch.Tensor]:
    """Per-member metrics on each split.

    Parameters
    ----------
    template : nn.Module
        Module of the architecture (on the evaluation device).
    stacked : mapping name -> Tensor (B, *shape)
        Trained parameters and buffers.
    task_index : LongTensor (B,)
        Each member's task.
    splits : mapping split name -> TaskStack
        Padded splits of the tasks.

    Returns
    -------
    dict
        ``{split}_accuracy``, ``{split}_nll``, ``{split}_ece`` -> Tensor (B,) on CPU.
    """
    out: dict[str, torch.Tensor] = {}
    for name, data in splits.items():
        logits = predict_stack(template, dict(stacked), task_index, data, chunk=chunk)
        t = task_index.to(data.y.device)
        labels = data.y[t]
        mask = torch.arange(data.n_max, device=labels.device)[None, :] < data.n[t][:, None]
        out[f"{name}_accuracy"] = accuracy(logits, labels, mask=mask).cpu()
        out[f"{name}_nll"] = nll(logits, labels, mask=mask).cpu()
        out[f"{name}_ece"] = ece(logits.softmax(-1), labels, mask=mask).cpu()
    return out
