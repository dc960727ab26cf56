"""Small member networks for the SuperWeight tests."""

from __future__ import annotations

import torch
from torch import nn

from weightspace.nets.registry import build_model


def vgg1d(widths, seed: int = 0, n_classes: int = 3, length: int = 16, norm: str = "none"):
    """A 1-D VGG with one conv per stage (first conv = stem, last Linear = classifier)."""
    torch.manual_seed(seed)
    stages = [[int(w)] for w in widths]
    return build_model("vgg", {"stages": stages, "norm": norm}, (1, length), n_classes)


def resnet1d(width: int, blocks: int = 1, seed: int = 0, n_classes: int = 3, length: int = 16):
    """A 1-D ResNet of base width ``width`` with two stages."""
    torch.manual_seed(seed)
    config = {"stem_channels": width, "stages": [[width, blocks], [2 * width, blocks]]}
    return build_model("resnet", config, (1, length), n_classes)


def shared_weight_count(member: nn.Module) -> int:
    """Elements of the weights SuperWeights replace: Linear/Conv weights but first and last."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    layers = [m for m in member.modules() if isinstance(m, kinds)]
    return sum(m.weight.numel() for m in layers[1:-1])
