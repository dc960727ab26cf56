"""Score models: stacks on every member's own task, single modules and ensembles on a split.

The project's one scoring kernel: every accuracy, NLL and ECE goes through
:mod:`weightspace.metrics`; stacks are run through :func:`predict_stack` (vmap), single
modules through :func:`module_logits`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from weightspace.data.base import Split
from weightspace.device import module_device
from weightspace.metrics import accuracy, ece, ensemble_probs, nll
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
        labels, mask = _labels_and_mask(task_index, data)
        out[f"{name}_accuracy"] = accuracy(logits, labels, mask=mask).cpu()
        out[f"{name}_nll"] = nll(logits, labels, mask=mask).cpu()
        out[f"{name}_ece"] = ece(logits.softmax(-1), labels, mask=mask).cpu()
    return out


def _labels_and_mask(
    task_index: torch.Tensor, data: TaskStack
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``(B, N_max)`` of each member's task and the mask of its real samples."""
    t = task_index.to(data.y.device)
    mask = torch.arange(data.n_max, device=data.y.device)[None, :] < data.n[t][:, None]
    return data.y[t], mask


@torch.no_grad()
def stack_accuracy(
    template: nn.Module,
    stacked: Mapping[str, torch.Tensor],
    task_index: torch.Tensor,
    data: TaskStack,
) -> torch.Tensor:
    """Top-1 accuracy ``(B,)`` (CPU) of every member on its own task's padded split."""
    logits = predict_stack(template, dict(stacked), task_index, data)
    labels, mask = _labels_and_mask(task_index, data)
    return accuracy(logits, labels, mask=mask).float().cpu()


@torch.no_grad()
def stack_agreement(
    template: nn.Module,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    task_index: torch.Tensor,
    data: TaskStack,
) -> torch.Tensor:
    """Share ``(B,)`` (CPU) of each task's samples where stacks ``a`` and ``b`` agree."""
    pa = predict_stack(template, dict(a), task_index, data).argmax(-1)
    pb = predict_stack(template, dict(b), task_index, data)
    _, mask = _labels_and_mask(task_index, data)
    return accuracy(pb, pa, mask=mask).float().cpu()


@torch.no_grad()
def module_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, C)`` on the CPU of ``model`` in eval mode (its mode is restored),
    computed on the model's device."""
    was = model.training
    model.eval()
    out = model(x.to(module_device(model, x.device))).cpu()
    model.train(was)
    return out


def module_accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy of one module on a split."""
    return float(accuracy(module_logits(model, split.x), split.y))


def ensemble_accuracy(models: list[nn.Module] | tuple[nn.Module, ...], split: Split) -> float:
    """Top-1 accuracy of the prediction ensemble (mean of the members' probabilities)."""
    logits = torch.stack([module_logits(m, split.x) for m in models])
    return float(accuracy(ensemble_probs(logits), split.y))
