"""Fine-tune (or train from scratch) a stack of same-architecture models on one dataset.

Used wherever a method's output is retrained and compared with baselines for the same
number of epochs (CLAFusion Table 1: the fused model vs each parent vs a random
initialisation of the fused architecture). Every epoch's weights are scored on the
validation and test splits; the reported model is the best *validation* epoch (the
paper keeps the best epoch; we select on validation so the test figure stays honest).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from weightspace.data.base import Split, SplitDataset
from weightspace.device import module_device
from weightspace.errors import InvalidParameterError
from weightspace.zoo import evaluate
from weightspace.zoo.init import init_stack
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, train_stack


@dataclass
class FinetuneResult:
    """Per-member curves and the best-validation-epoch weights.

    Attributes
    ----------
    best : dict name -> Tensor (B, *shape)
        Weights at each member's best validation epoch (epoch 0 = the initialisation).
    best_epoch : LongTensor (B,)
    val_accuracy, test_accuracy : Tensor (B, epochs + 1)
        Accuracy after each epoch; column 0 is the initialisation.
    seconds : float
        Wall time of the training (not of the evaluation).
    """

    best: dict[str, torch.Tensor]
    best_epoch: torch.Tensor
    val_accuracy: torch.Tensor
    test_accuracy: torch.Tensor
    seconds: float

    @property
    def best_test_accuracy(self) -> torch.Tensor:
        """Test accuracy ``(B,)`` at each member's best validation epoch."""
        return self.test_accuracy.gather(1, self.best_epoch[:, None])[:, 0]


def stack_accuracy(
    template: nn.Module, stacked: Mapping[str, torch.Tensor], split: Split
) -> torch.Tensor:
    """Accuracy ``(B,)`` (CPU) of every member of a stack on one split.

    A thin call to :func:`weightspace.zoo.evaluate.stack_accuracy` with the split as the
    one task of every member.

    Parameters
    ----------
    template : nn.Module
        Module of the architecture (on the evaluation device).
    stacked : mapping name -> Tensor (B, *shape)
        Parameters and buffers of the stack.
    split : Split
        Inputs ``(N, *input_shape)`` and labels ``(N,)``.
    """
    data = TaskStack.from_splits([split], device=module_device(template))
    return _accuracy_on(template, stacked, data)


def _accuracy_on(
    template: nn.Module, stacked: Mapping[str, torch.Tensor], data: TaskStack
) -> torch.Tensor:
    """Accuracy ``(B,)`` (CPU) of every member on the single task of ``data``."""
    b = len(next(iter(stacked.values())))
    task = torch.zeros(b, dtype=torch.long, device=data.x.device)
    return evaluate.stack_accuracy(template, stacked, task, data)


def finetune_stack(
    template: nn.Module,
    dataset: SplitDataset,
    epochs: int,
    lr: float,
    batch_size: int,
    init: Mapping[str, torch.Tensor] | None = None,
    seeds: torch.Tensor | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> FinetuneResult:
    """Train ``B`` models of ``template``'s architecture on ``dataset`` for ``epochs``.

    Parameters
    ----------
    template : nn.Module
        The architecture, on the training device.
    dataset : SplitDataset
        Train / val / test splits.
    epochs, lr, batch_size, optimizer, momentum, weight_decay
        Training settings shared by the stack.
    init : mapping name -> Tensor (B, *shape), optional
        Starting weights (fine-tuning); ``None`` trains from the seeded initialisation.
    seeds : LongTensor (B,), optional
        Batch orders (and initialisations when ``init`` is None); default ``0..B-1``.
    """
    if int(epochs) < 1:
        raise InvalidParameterError(f"epochs must be >= 1, got {epochs}")
    if init is None and seeds is None:
        raise InvalidParameterError("pass init (weights to fine-tune) or seeds (random inits)")
    b = len(next(iter(init.values()))) if init is not None else len(seeds)
    seeds = torch.arange(b) if seeds is None else torch.as_tensor(seeds).long()
    device = module_device(template)
    hp = StackHParams(
        seeds=seeds,
        lr=torch.full((b,), float(lr)),
        weight_decay=torch.full((b,), float(weight_decay)),
        epochs=torch.full((b,), int(epochs)),
        init_scale=torch.ones(b),
    )
    data = TaskStack.from_splits([dataset.train], device=device)
    task = torch.zeros(b, dtype=torch.long)
    start = time.perf_counter()
    result = train_stack(
        template, hp, task, data, batch_size, optimizer=optimizer, momentum=momentum,
        snapshot_epochs=range(1, int(epochs) + 1), init=init,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    states = [init if init is not None else _initial(template, hp, device)]
    states += [result.snapshots[e] for e in range(1, int(epochs) + 1)]
    val_data, test_data = (
        TaskStack.from_splits([s], device=device) for s in (dataset.val, dataset.test)
    )
    val = torch.stack([_accuracy_on(template, s, val_data) for s in states], 1)
    test = torch.stack([_accuracy_on(template, s, test_data) for s in states], 1)
    best_epoch = val.argmax(1)  # first maximum: the earliest best epoch
    best = {
        k: torch.stack([states[int(e)][k][i].cpu() for i, e in enumerate(best_epoch)])
        for k in result.final
    }
    return FinetuneResult(best, best_epoch, val, test, seconds)


def _initial(
    template: nn.Module, hp: StackHParams, device: torch.device
) -> dict[str, torch.Tensor]:
    """The seeded initial weights ``(B, *shape)`` of ``hp``'s members, on the CPU."""
    return {
        k: v.cpu() for k, v in init_stack(template, hp.seeds, hp.init_scale, device=device).items()
    }
