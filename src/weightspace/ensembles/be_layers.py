"""BatchEnsemble layers (Wen et al., ICLR 2020): :class:`BELinear`, :class:`BEConv`, and
the tiled-batch helpers :func:`tile` / :func:`untile`.

Member ``m`` of a layer with shared weight ``W``, shared bias ``b`` and fast weights
``r_m`` (input side) and ``s_m`` (output side) computes ``((x ∘ r_m) W^T + b) ∘ s_m`` on
its block of a batch tiled M times. :mod:`weightspace.ensembles.batchensemble` wraps a
whole architecture with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import InvalidParameterError, ShapeError, UnsupportedLayerError

__all__ = ["BEConv", "BELayer", "BELinear", "tile", "untile"]

# Layers with parameters that need no fast weights: they act per sample (LayerNorm,
# GroupNorm, InstanceNorm) or are shared by design (BatchNorm over the tiled batch).
_SHARED_PARAMETRISED = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_CONV_FN = {1: F.conv1d, 2: F.conv2d}


def _check_m(m: object) -> int:
    """Return ``m`` if it is an int ``>= 1`` (not a bool), else raise."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise InvalidParameterError(
            f"the ensemble size m must be an integer >= 1, got {m!r}; "
            "e.g. m = 4 for a BatchEnsemble student of a 4-member deep ensemble"
        )
    return m


def _check_tiled(x: Tensor, m: int, what: str) -> int:
    """Per-member batch size ``B`` of a tiled batch ``(M*B, ...)``, else raise ShapeError."""
    if x.ndim < 1 or x.shape[0] == 0 or x.shape[0] % m != 0:
        n = x.shape[0] if x.ndim >= 1 else "no"
        raise ShapeError(
            f"{what} got a batch of {n} rows, which is not a positive multiple of the "
            f"ensemble size M={m}; BatchEnsemble takes a batch tiled M times (rows "
            "[m*B:(m+1)*B] belong to member m): build it with "
            "weightspace.ensembles.batchensemble.tile(x, M), or call member_logits(x)"
        )
    return x.shape[0] // m


def tile(x: Tensor, m: int) -> Tensor:
    """Repeat a batch M times along dim 0: member ``m``'s block of the result is ``x``.

    Parameters
    ----------
    x : Tensor, shape (B, ...)
    m : int
        Ensemble size ``M >= 1``.

    Returns
    -------
    Tensor, shape (M*B, ...)
        ``x.repeat(M, 1, ..., 1)``; rows ``[i*B:(i+1)*B]`` equal ``x``.
    """
    m = _check_m(m)
    if x.ndim < 1:
        raise ShapeError(f"tile needs a batch (B, ...), got a tensor of shape {tuple(x.shape)}")
    return x.repeat(m, *([1] * (x.ndim - 1)))


def untile(y: Tensor, m: int) -> Tensor:
    """Split a tiled batch into its members' blocks.

    Parameters
    ----------
    y : Tensor, shape (M*B, ...)
    m : int
        Ensemble size ``M >= 1``.

    Returns
    -------
    Tensor, shape (M, B, ...)
        ``out[i]`` is rows ``[i*B:(i+1)*B]`` of ``y`` (a view when ``y`` is contiguous).

    Raises
    ------
    ShapeError
        If the number of rows is not a positive multiple of ``M``.
    """
    m = _check_m(m)
    b = _check_tiled(y, m, "untile")
    return y.reshape(m, b, *y.shape[1:])


def _fast_weight(m: int, n: int, like: Tensor) -> nn.Parameter:
    """Fast weights ``(M, n)`` initialised to one, on ``like``'s device and dtype."""
    return nn.Parameter(torch.ones(m, n, dtype=like.dtype, device=like.device))


def _member_scale(v: Tensor, m: int, x: Tensor, channel_dim: int) -> Tensor:
    """View fast weights ``(M, n)`` to broadcast against ``x`` viewed as ``(M, B, ...)``.

    ``channel_dim`` is the position of the ``n`` axis in ``x`` (``-1`` for Linear inputs,
    ``1`` for convolution inputs ``(M*B, C, *spatial)``).
    """
    shape = [m] + [1] * x.ndim  # (M, 1, ..., 1) against (M, B, *x.shape[1:])
    shape[channel_dim if channel_dim < 0 else channel_dim + 1] = v.shape[1]
    return v.reshape(shape)


def _per_member(x: Tensor, v: Tensor, m: int, channel_dim: int) -> Tensor:
    """``x`` (M*B, ...) with member ``i``'s block multiplied by ``v[i]`` along ``channel_dim``."""
    b = x.shape[0] // m
    blocks = x.reshape(m, b, *x.shape[1:]) * _member_scale(v, m, x, channel_dim)
    return blocks.reshape(x.shape)


class BELinear(nn.Module):
    """A BatchEnsemble linear layer: ``y_m = ((x ∘ r_m) W^T + b) ∘ s_m`` for each member.

    Parameters
    ----------
    layer : nn.Linear
        The layer whose ``weight`` and ``bias`` become the shared slow weights. Its
        parameters are reused, not copied (:class:`BatchEnsemble` wraps a deep copy).
    m : int
        Ensemble size ``M >= 1``.

    Attributes
    ----------
    weight : nn.Parameter, shape (out_features, in_features)
        Shared slow weight.
    bias : nn.Parameter, shape (out_features,), or None
        Shared bias, added before the multiplication by ``s``.
    r : nn.Parameter, shape (M, in_features)
        Input-side fast weights, initialised to one.
    s : nn.Parameter, shape (M, out_features)
        Output-side fast weights, initialised to one.
    """

    def __init__(self, layer: nn.Linear, m: int) -> None:
        super().__init__()
        if not isinstance(layer, nn.Linear):
            raise UnsupportedLayerError(
                f"BELinear wraps an nn.Linear, got {type(layer).__name__}; "
                "use BEConv for nn.Conv1d / nn.Conv2d"
            )
        self.m = _check_m(m)
        self.in_features = layer.in_features
        self.out_features = layer.out_features
        self.weight = layer.weight
        self.register_parameter("bias", layer.bias)
        self.r = _fast_weight(self.m, self.in_features, layer.weight)
        self.s = _fast_weight(self.m, self.out_features, layer.weight)
        self.train(layer.training)

    def forward(self, x: Tensor) -> Tensor:
        """Apply member ``i`` to block ``i`` of a tiled batch.

        Parameters
        ----------
        x : Tensor, shape (M*B, *, in_features)

        Returns
        -------
        Tensor, shape (M*B, *, out_features)
        """
        _check_tiled(x, self.m, "BELinear")
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"BELinear expects inputs (M*B, *, {self.in_features}), got {tuple(x.shape)}"
            )
        y = F.linear(_per_member(x, self.r, self.m, -1), self.weight, self.bias)
        return _per_member(y, self.s, self.m, -1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, m={self.m}"
        )


class BEConv(nn.Module):
    """A BatchEnsemble 1-D or 2-D convolution: ``y_m = (conv(x ∘ r_m, W) + b) ∘ s_m``.

    ``r_m`` scales the input channels and ``s_m`` the output channels; stride, padding and
    dilation are those of the wrapped layer.

    Parameters
    ----------
    layer : nn.Conv1d or nn.Conv2d
        The layer whose ``weight`` and ``bias`` become the shared slow weights (reused,
        not copied). Must have ``groups == 1`` and ``padding_mode == "zeros"``.
    m : int
        Ensemble size ``M >= 1``.

    Attributes
    ----------
    weight : nn.Parameter, shape (out_channels, in_channels, *kernel_size)
    bias : nn.Parameter, shape (out_channels,), or None
    r : nn.Parameter, shape (M, in_channels)
        Input-channel fast weights, initialised to one.
    s : nn.Parameter, shape (M, out_channels)
        Output-channel fast weights, initialised to one.

    Raises
    ------
    UnsupportedLayerError
        For another layer type, a grouped convolution or a padding mode other than zeros.
    """

    def __init__(self, layer: nn.Conv1d | nn.Conv2d, m: int) -> None:
        super().__init__()
        if not isinstance(layer, nn.Conv1d | nn.Conv2d):
            raise UnsupportedLayerError(
                f"BEConv wraps an nn.Conv1d or nn.Conv2d, got {type(layer).__name__}; "
                "use BELinear for nn.Linear"
            )
        if layer.groups != 1:
            raise UnsupportedLayerError(
                f"BEConv supports only groups=1 convolutions, got groups={layer.groups}; "
                "a grouped or depthwise convolution has no (out, in) fast-weight layout here"
            )
        if layer.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"BEConv supports only padding_mode='zeros', got {layer.padding_mode!r}; "
                "build the network with zero padding"
            )
        self.m = _check_m(m)
        self.nd = 1 if isinstance(layer, nn.Conv1d) else 2
        self.in_channels = layer.in_channels
        self.out_channels = layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation
        self.weight = layer.weight
        self.register_parameter("bias", layer.bias)
        self.r = _fast_weight(self.m, self.in_channels, layer.weight)
        self.s = _fast_weight(self.m, self.out_channels, layer.weight)
        self.train(layer.training)

    def forward(self, x: Tensor) -> Tensor:
        """Apply member ``i`` to block ``i`` of a tiled batch.

        Parameters
        ----------
        x : Tensor, shape (M*B, in_channels, *spatial)
            ``spatial`` has ``nd`` (1 or 2) dimensions.

        Returns
        -------
        Tensor, shape (M*B, out_channels, *spatial_out)
        """
        _check_tiled(x, self.m, "BEConv")
        if x.ndim != self.nd + 2 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"BEConv ({self.nd}-D) expects inputs (M*B, {self.in_channels}, "
                f"{', '.join(['L'] if self.nd == 1 else ['H', 'W'])}), got {tuple(x.shape)}"
            )
        y = _CONV_FN[self.nd](
            _per_member(x, self.r, self.m, 1),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
        )
        return _per_member(y, self.s, self.m, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, m={self.m}"
        )


BELayer = BELinear | BEConv
