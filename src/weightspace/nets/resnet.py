"""Small ResNet (He et al. 2016) with BasicBlocks, for 1-D signals or small images.

``stem -> stages of BasicBlocks -> global average pool -> linear``. Each stage after the
first halves the spatial size with a strided first block and a 1x1 projection shortcut.
With ``norm="batch"`` the blocks follow torchvision's ``BasicBlock``; a block whose last
conv (and BN weight) is zero is the identity on non-negative inputs, which CLAFusion's
layer balancing relies on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import InvalidParameterError
from weightspace.nets.conv import (
    batch_norm,
    check_norm,
    conv,
    global_avg_pool,
    is_positive_int,
    spatial_dims,
)


def _norm_or_identity(nd: int, channels: int, norm: str) -> nn.Module:
    return batch_norm(nd, channels) if norm == "batch" else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, nd: int, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        use_bias = norm == "none"
        self.conv1 = conv(nd, c_in, c_out, stride=stride, bias=use_bias)
        self.bn1 = _norm_or_identity(nd, c_out, norm)
        self.conv2 = conv(nd, c_out, c_out, bias=use_bias)
        self.bn2 = _norm_or_identity(nd, c_out, norm)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv(nd, c_in, c_out, kernel=1, stride=stride, bias=use_bias),
                _norm_or_identity(nd, c_out, norm),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``(N, C_in, *spatial)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet classifier.

    Parameters
    ----------
    input_shape : sequence of int
        ``(C, L)`` or ``(C, H, W)``.
    n_classes : int
        Number of logits.
    stem_channels : int
        Output channels of the 3x3 stem conv.
    stages : sequence of (channels, n_blocks)
        One entry per stage; stages after the first downsample by 2 where possible.
    norm : {"batch", "none"}
        BatchNorm after every conv, or none (biases instead).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        stem_channels: int = 8,
        stages: Sequence[Sequence[int]] = ((8, 1), (16, 1)),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        nd = spatial_dims(input_shape)
        check_norm(norm)
        pairs_ok = (
            isinstance(stages, Sequence)
            and len(stages) > 0
            and all(
                isinstance(s, Sequence) and len(s) == 2 and all(is_positive_int(v) for v in s)
                for s in stages
            )
        )
        if not pairs_ok:
            raise InvalidParameterError(
                f"resnet stages must be [channels, n_blocks] pairs of positive integers, "
                f"got {stages!r}; e.g. stages: [[8, 1], [16, 2]]"
            )
        if not is_positive_int(stem_channels):
            raise InvalidParameterError(
                f"resnet stem_channels must be a positive integer, got {stem_channels!r}"
            )
        self.stem = nn.Sequential(
            conv(nd, int(input_shape[0]), stem_channels, bias=norm == "none"),
            _norm_or_identity(nd, stem_channels, norm),
            nn.ReLU(),
        )
        size = min(int(s) for s in input_shape[1:])
        blocks: list[nn.Module] = []
        c_prev = stem_channels
        for i, (channels, n_blocks) in enumerate(stages):
            stride = 2 if i > 0 and size >= 2 else 1
            size //= stride
            for b in range(int(n_blocks)):
                blocks.append(BasicBlock(nd, c_prev, int(channels), stride if b == 0 else 1, norm))
                c_prev = int(channels)
        self.layers = nn.Sequential(*blocks)
        self.pool = global_avg_pool(nd)
        self.fc = nn.Linear(c_prev, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` of inputs ``(N, *input_shape)``."""
        h = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(h, 1))
