"""Dimension-generic convolution helpers shared by the CNN architectures.

An input shape ``(C, L)`` selects 1-D layers (MNIST-1D signals) and ``(C, H, W)`` 2-D
layers (images); the architectures are otherwise identical.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from weightspace.errors import InvalidParameterError

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}
NORMS = ("none", "batch")


def spatial_dims(input_shape: Sequence[int]) -> int:
    """Number of spatial dimensions of an input ``(C, *spatial)``; 1 or 2."""
    nd = len(input_shape) - 1
    if nd not in _CONV:
        raise InvalidParameterError(
            f"convolutional architectures take inputs (C, L) or (C, H, W), got shape "
            f"{tuple(input_shape)}; use the 'mlp' architecture for flat inputs"
        )
    return nd


def is_positive_int(value: object) -> bool:
    """True for a (non-bool) int > 0: config values that size a layer."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_norm(norm: str) -> str:
    """Validate a normalisation name (``"none"`` or ``"batch"``)."""
    if norm not in NORMS:
        raise InvalidParameterError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def conv(nd: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, bias: bool = True):
    """A 'same'-padded convolution of ``nd`` spatial dims."""
    return _CONV[nd](c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


def batch_norm(nd: int, channels: int) -> nn.Module:
    """BatchNorm over ``channels`` for ``nd`` spatial dims."""
    return _BN[nd](channels)


def max_pool(nd: int) -> nn.Module:
    """2x max pooling (floor) for ``nd`` spatial dims."""
    return _POOL[nd](2)


def global_avg_pool(nd: int) -> nn.Module:
    """Global average pooling to one value per channel."""
    return _GAP[nd](1)
