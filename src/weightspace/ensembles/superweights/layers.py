"""SuperWeight layers: Linear, Conv1d and Conv2d whose weight is composed from a bank.

The layer of member ``m`` at slot ``s`` computes its weight at forward time as the
top-left block of its slot's SuperWeight (main paper Sec. 2.1, supplement Sec. 1.1):

.. math::

    W_m = \\Big(\\sum_k \\alpha_{c(m),k} T_{s,k}\\Big)[:out_m, :in_m] ,

so a narrower member's weight is the top-left block of a wider member's when they read
the same coefficients ``alpha``. The bias (when the layer has one) is the member's own.

While recording is on (:meth:`SuperWeightLayer.start_recording`), a backward hook sums
``dL/dW_m`` and ``dL/dalpha_k = <dL/dW_m, T_k[:out_m, :in_m]>`` over the batches; these
accumulated gradients drive cluster refinement (``tau``) and coefficient un-sharing
(``beta``) in :mod:`~weightspace.ensembles.superweights.clusters`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from weightspace.ensembles.superweights.bank import ParameterBank
from weightspace.errors import UnsupportedLayerError

__all__ = ["SWConv1d", "SWConv2d", "SWLinear", "SuperWeightLayer", "superweight_layer"]


class SuperWeightLayer(nn.Module):
    """Base of the SuperWeight layers: weight from a :class:`ParameterBank`, own bias.

    The bank is held by reference, not registered as a submodule: a member's own
    parameters are only its biases; the owner (the ensemble, or
    :class:`~weightspace.ensembles.superweights.ensemble.SuperWeightMember`) registers the
    bank once.

    Parameters
    ----------
    layer : nn.Linear, nn.Conv1d or nn.Conv2d
        The layer replaced; its weight shape is kept and its bias copied.
    slot, coef : int
        Slot and coefficient set in the bank.
    bank : ParameterBank, optional
        Bound now or later with :meth:`bind`.

    Attributes
    ----------
    shape : tuple of int
        Weight shape ``(out, in, *kernel)``.
    bias : nn.Parameter, shape (out,), or None
    grad_weight : Tensor, shape (out, in, *kernel), or None
        Sum of ``dL/dW`` over the recorded backward passes.
    grad_alpha : Tensor, shape (K,), or None
        Sum of ``dL/dalpha`` over the recorded backward passes, this layer's share only.
    """

    def __init__(
        self, layer: nn.Module, slot: int, coef: int, bank: ParameterBank | None = None
    ) -> None:
        super().__init__()
        self.shape = tuple(layer.weight.shape)
        self.bias = None
        if layer.bias is not None:
            self.bias = nn.Parameter(layer.bias.detach().clone())
        self.recording = False
        self.grad_weight: Tensor | None = None
        self.grad_alpha: Tensor | None = None
        self.slot, self.coef = slot, coef
        object.__setattr__(self, "bank", bank)
        self.train(layer.training)

    def bind(self, bank: ParameterBank, slot: int, coef: int) -> None:
        """Read weights from ``bank``'s slot ``slot`` with coefficient set ``coef``."""
        object.__setattr__(self, "bank", bank)
        self.slot, self.coef = slot, coef

    def _crop(self) -> tuple[slice, ...]:
        return tuple(slice(0, d) for d in self.shape)

    def composed_weight(self) -> Tensor:
        """The member's weight, shape ``(out, in, *kernel)`` (differentiable)."""
        if self.bank is None:
            raise RuntimeError("this SuperWeight layer is not bound to a ParameterBank")
        templates = self.bank.templates(self.slot)
        w = self.bank.compose(self.slot, self.coef, templates)[self._crop()]
        if self.recording and w.requires_grad:
            cropped = templates.detach()[(slice(None), *self._crop())]
            w.register_hook(lambda g: self._record(g, cropped))
        return w

    def _record(self, grad: Tensor, templates: Tensor) -> None:
        g = grad.detach()
        ga = (templates * g).reshape(templates.shape[0], -1).sum(1)
        self.grad_weight = g.clone() if self.grad_weight is None else self.grad_weight + g
        self.grad_alpha = ga if self.grad_alpha is None else self.grad_alpha + ga

    def start_recording(self) -> None:
        """Zero the accumulated gradients and record from the next backward pass on."""
        self.recording, self.grad_weight, self.grad_alpha = True, None, None

    def stop_recording(self) -> None:
        """Stop recording; the accumulated gradients stay readable."""
        self.recording = False

    def to_plain(self) -> nn.Module:
        """A plain layer holding the current composed weight and bias (copies)."""
        raise NotImplementedError


def _copy_into(plain: nn.Module, weight: Tensor, bias: Tensor | None, training: bool) -> nn.Module:
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    plain.train(training)
    return plain


class SWLinear(SuperWeightLayer):
    """SuperWeight ``nn.Linear``: ``y = x W_m^T + b_m``.

    Forward: ``x`` of shape ``(B, *, in)`` to ``(B, *, out)``.
    """

    def __init__(self, layer: nn.Linear, slot: int, coef: int, bank=None) -> None:
        super().__init__(layer, slot, coef, bank)
        self.out_features, self.in_features = self.shape

    def forward(self, x: Tensor) -> Tensor:
        """``(B, *, in_features) -> (B, *, out_features)``."""
        return F.linear(x, self.composed_weight(), self.bias)

    def to_plain(self) -> nn.Linear:
        w = self.composed_weight().detach()
        kw = {"bias": self.bias is not None, "device": w.device, "dtype": w.dtype}
        plain = skip_init(nn.Linear, self.in_features, self.out_features, **kw)
        return _copy_into(plain, w, self.bias, self.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, slot={self.slot}, coef={self.coef}"
        )


class _SWConv(SuperWeightLayer):
    nd = 0
    _plain_cls: type[nn.Module] = nn.Module

    def __init__(self, layer: nn.Conv1d | nn.Conv2d, slot: int, coef: int, bank=None) -> None:
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"{type(layer).__name__} with groups={layer.groups}, padding_mode="
                f"{layer.padding_mode!r} is not supported by SuperWeights: only groups=1 "
                "convolutions with zero padding are composed from templates"
            )
        super().__init__(layer, slot, coef, bank)
        self.out_channels, self.in_channels = self.shape[:2]
        self.kernel_size = layer.kernel_size
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, *spatial) -> (B, out_channels, *spatial_out)``."""
        conv = F.conv1d if self.nd == 1 else F.conv2d
        w = self.composed_weight()
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation)

    def to_plain(self) -> nn.Module:
        w = self.composed_weight().detach()
        kw = {"bias": self.bias is not None, "device": w.device, "dtype": w.dtype}
        plain = skip_init(
            self._plain_cls,
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            **kw,
        )
        return _copy_into(plain, w, self.bias, self.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"slot={self.slot}, coef={self.coef}"
        )


class SWConv1d(_SWConv):
    """SuperWeight ``nn.Conv1d`` (groups 1, zero padding)."""

    nd = 1
    _plain_cls = nn.Conv1d


class SWConv2d(_SWConv):
    """SuperWeight ``nn.Conv2d`` (groups 1, zero padding)."""

    nd = 2
    _plain_cls = nn.Conv2d


def superweight_layer(
    layer: nn.Module, slot: int, coef: int, bank: ParameterBank | None = None
) -> SuperWeightLayer:
    """The SuperWeight version of ``layer`` (nn.Linear, nn.Conv1d or nn.Conv2d).

    Raises
    ------
    UnsupportedLayerError
        For any other type (named in the message), or a grouped / non-zero-padded conv.
    """
    if isinstance(layer, nn.Linear):
        return SWLinear(layer, slot, coef, bank)
    if isinstance(layer, nn.Conv1d):
        return SWConv1d(layer, slot, coef, bank)
    if isinstance(layer, nn.Conv2d):
        return SWConv2d(layer, slot, coef, bank)
    raise UnsupportedLayerError(
        f"{type(layer).__name__} has no SuperWeight form; supported: nn.Linear, nn.Conv1d, "
        "nn.Conv2d"
    )
