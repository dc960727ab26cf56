"""BatchEnsemble (Wen et al. [1]_): M members sharing slow weights, each with rank-one fast weights.

Member :math:`m` of a BatchEnsemble layer with shared weight :math:`W` (shape
``(out, in, *kernel)``), shared bias :math:`b` and fast weights :math:`r_m` (``in``) and
:math:`s_m` (``out``) computes

.. math::

    y_m = \\big((x \\circ r_m) W^\\top + b\\big) \\circ s_m ,

i.e. it is the plain layer with weight :math:`W \\circ (s_m r_m^\\top)` (for a convolution
broadcast over the kernel dimensions, ``W[o, c, ...] * s_m[o] * r_m[c]``) and bias
:math:`b \\circ s_m` (eq. 3 of the LatentBE paper [3]_ in PyTorch's ``(out, in)`` layout).
All members run in one forward pass on a batch tiled M times (:func:`tile`): rows
``[m*B:(m+1)*B]`` of the ``(M*B, ...)`` batch belong to member ``m``. Layers without
fast weights (activations, pooling, BatchNorm, residual shortcuts) are shared by the
members and see the whole tiled batch, so a shared BatchNorm normalises with statistics
over all ``M*B`` rows in train mode.

A BatchEnsemble student trained with one-to-one distillation, member ``m`` against
teacher ``m`` (Mariet et al. [2]_, eq. 4 of [3]_), is the starting point of LatentBE
(:mod:`weightspace.ensembles.latentbe`), which collapses the members into one network.
:func:`collapse` is the single place where fast weights are folded into a plain layer;
:meth:`BatchEnsemble.member` and :func:`weightspace.ensembles.latentbe.merge` both use it.

References
----------
.. [1] Y. Wen, D. Tran, J. Ba. "BatchEnsemble: an Alternative Approach to Efficient
   Ensemble and Lifelong Learning." ICLR 2020. arXiv:2002.06715.
.. [2] Z. Mariet, R. Jenatton, F. Wenzel, D. Tran. "Distilling Ensembles Improves
   Uncertainty Estimates." 3rd Symposium on Advances in Approximate Bayesian Inference,
   2021.
.. [3] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022. arXiv:2206.15047.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from weightspace.ensembles.be_layers import (
    _SHARED_PARAMETRISED,
    BEConv,
    BELayer,
    BELinear,
    _check_m,
    _check_tiled,
    tile,
    untile,
)
from weightspace.errors import InvalidParameterError, ShapeError, UnsupportedLayerError

__all__ = [
    "BEConv",
    "BELayer",
    "BELinear",
    "BatchEnsemble",
    "collapse",
    "effective_weights",
    "tile",
    "untile",
]


def effective_weights(
    weight: Tensor, bias: Tensor | None, scale: Tensor, bias_scale: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Fold fast weights into a plain layer's weight and bias.

    The one implementation of "fast weights -> plain layer": member ``i`` is
    ``scale = outer(s_i, r_i)``, ``bias_scale = s_i``; LatentBE's merges pass the
    averaged forms (:func:`weightspace.ensembles.latentbe.merge_layer_weights`).

    Parameters
    ----------
    weight : Tensor, shape (out, in, *kernel)
        Shared slow weight (``*kernel`` is empty for a Linear layer).
    bias : Tensor, shape (out,), or None
        Shared bias.
    scale : Tensor, shape (out, in)
        Elementwise factor of the weight, broadcast over the kernel dimensions.
    bias_scale : Tensor, shape (out,)
        Elementwise factor of the bias.

    Returns
    -------
    weight : Tensor, shape (out, in, *kernel)
        ``weight * scale[:, :, None, ...]``.
    bias : Tensor, shape (out,), or None
        ``bias * bias_scale`` (None when ``bias`` is None).

    Raises
    ------
    ShapeError
        If the shapes disagree.
    """
    if weight.ndim < 2 or tuple(scale.shape) != tuple(weight.shape[:2]):
        raise ShapeError(
            f"scale must have shape (out, in) = {tuple(weight.shape[:2])} of the weight "
            f"{tuple(weight.shape)}, got {tuple(scale.shape)}"
        )
    if tuple(bias_scale.shape) != (weight.shape[0],):
        raise ShapeError(
            f"bias_scale must have shape ({weight.shape[0]},), got {tuple(bias_scale.shape)}"
        )
    w = weight * scale.reshape(*scale.shape, *([1] * (weight.ndim - 2)))
    b = None if bias is None else bias * bias_scale
    return w, b


def _plain_layer(layer: BELayer, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A plain nn.Linear / nn.Conv1d / nn.Conv2d of ``layer``'s shape holding these tensors."""
    kwargs = {"bias": bias is not None, "device": weight.device, "dtype": weight.dtype}
    if isinstance(layer, BELinear):
        plain = skip_init(nn.Linear, layer.in_features, layer.out_features, **kwargs)
    else:
        cls = nn.Conv1d if layer.nd == 1 else nn.Conv2d
        plain = skip_init(
            cls,
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            **kwargs,
        )
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    plain.weight.requires_grad_(layer.weight.requires_grad)
    if bias is not None and layer.bias is not None:
        plain.bias.requires_grad_(layer.bias.requires_grad)
    plain.train(layer.training)
    return plain


def _replace_modules(
    root: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None]
) -> nn.Module:
    """Replace, in place, every submodule for which ``convert(path, module)`` is not None.

    Attribute names are kept, so state-dict keys keep their prefixes. A module reachable
    under several paths (weight tying) is converted once and the result shared. Returns
    the new root (``convert`` may replace ``root`` itself, path ``""``).
    """
    done: dict[int, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        # Not named_children(): it skips a module already seen under another name.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if id(child) in done:
                setattr(module, name, done[id(child)])
                continue
            new = convert(path, child)
            if new is None:
                done[id(child)] = child
                visit(child, path)
            else:
                done[id(child)] = new
                setattr(module, name, new)

    new_root = convert("", root)
    if new_root is not None:
        return new_root
    visit(root, "")
    return root


def _be_layers(module: nn.Module) -> list[BELayer]:
    """The BatchEnsemble layers of ``module`` in ``modules()`` order."""
    return [mod for mod in module.modules() if isinstance(mod, BELinear | BEConv)]


def _check_supported(module: nn.Module) -> None:
    """Raise UnsupportedLayerError unless every parametrised layer can be BatchEnsembled."""
    n_wrappable = 0
    for path, mod in module.named_modules():
        if isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d):
            n_wrappable += 1
            if isinstance(mod, nn.Conv1d | nn.Conv2d) and (
                mod.groups != 1 or mod.padding_mode != "zeros"
            ):
                raise UnsupportedLayerError(
                    f"layer {path or '<root>'!r} ({type(mod).__name__}, groups={mod.groups}, "
                    f"padding_mode={mod.padding_mode!r}) is not supported by BatchEnsemble: "
                    "only groups=1 convolutions with zero padding get fast weights"
                )
            continue
        if isinstance(mod, _SHARED_PARAMETRISED):
            continue
        if any(True for _ in mod.parameters(recurse=False)):
            raise UnsupportedLayerError(
                f"layer {path or '<root>'!r} of type {type(mod).__name__} has parameters "
                "but no BatchEnsemble form; supported: nn.Linear, nn.Conv1d, nn.Conv2d "
                "(given fast weights) and BatchNorm/LayerNorm/GroupNorm (shared)"
            )
    if n_wrappable == 0:
        raise UnsupportedLayerError(
            f"{type(module).__name__} has no nn.Linear, nn.Conv1d or nn.Conv2d layer, so "
            "BatchEnsemble has nothing to give fast weights to"
        )


class BatchEnsemble(nn.Module):
    """M-member BatchEnsemble of an architecture, run on a batch tiled M times.

    Holds a deep copy of ``module`` (attribute :attr:`module`) in which every nn.Linear,
    nn.Conv1d and nn.Conv2d is replaced by :class:`BELinear` / :class:`BEConv` under the
    same attribute name: ``module.state_dict()`` keys become e.g. ``features.0.weight``,
    ``features.0.r``, ``features.0.s`` (``self.state_dict()`` prefixes them with
    ``module.``). Other layers are shared by the members and see the whole tiled batch;
    BatchNorm in train mode uses statistics over all ``M*B`` rows. With all fast weights
    one (their initial value) every member equals ``module``.

    The wrapped network must use its layers as modules (a ``forward`` that reads
    ``self.fc.weight`` directly bypasses the fast weights).

    Parameters
    ----------
    module : nn.Module
        The architecture and its initial slow weights; not modified.
    m : int
        Ensemble size ``M >= 1`` (``M = 1`` is the plain network).

    Attributes
    ----------
    m : int
    module : nn.Module
        The copy with BatchEnsemble layers.

    Raises
    ------
    InvalidParameterError
        If ``m`` is not an integer ``>= 1``.
    UnsupportedLayerError
        If ``module`` has no Linear/Conv layer, a grouped or non-zero-padded convolution,
        or another parametrised layer type (e.g. nn.Conv3d, nn.ConvTranspose2d,
        nn.Embedding, nn.LSTM); the message names the layer's path.
    """

    def __init__(self, module: nn.Module, m: int) -> None:
        super().__init__()
        self.m = _check_m(m)
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"BatchEnsemble wraps an nn.Module, got {type(module).__name__}"
            )
        _check_supported(module)

        def to_be(_path: str, mod: nn.Module) -> nn.Module | None:
            if isinstance(mod, nn.Linear):
                return BELinear(mod, self.m)
            if isinstance(mod, nn.Conv1d | nn.Conv2d):
                return BEConv(mod, self.m)
            return None

        self.module = _replace_modules(copy.deepcopy(module), to_be)
        self.training = self.module.training

    def forward(self, x: Tensor) -> Tensor:
        """All members on a tiled batch.

        Parameters
        ----------
        x : Tensor, shape (M*B, *input_shape)
            Rows ``[i*B:(i+1)*B]`` are member ``i``'s inputs (see :func:`tile`).

        Returns
        -------
        Tensor, shape (M*B, C)
            Rows ``[i*B:(i+1)*B]`` are member ``i``'s logits.
        """
        _check_tiled(x, self.m, "BatchEnsemble")
        return self.module(x)

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits on the same inputs.

        Parameters
        ----------
        x : Tensor, shape (B, *input_shape)

        Returns
        -------
        Tensor, shape (M, B, C)
            ``out[i]`` are member ``i``'s logits.
        """
        return untile(self(tile(x, self.m)), self.m)

    def fast_parameters(self) -> list[nn.Parameter]:
        """The fast weights ``r`` and ``s`` of every BatchEnsemble layer (layer order)."""
        out: list[nn.Parameter] = []
        for layer in _be_layers(self.module):
            out += [layer.r, layer.s]
        return out

    def slow_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not a fast weight (weights, biases, norm affines)."""
        fast = {id(p) for p in self.fast_parameters()}
        return [p for p in self.parameters() if id(p) not in fast]

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as a plain network of the original architecture.

        Each Linear/Conv layer holds ``W ∘ (s_i r_iᵀ)`` (broadcast over the kernel
        dimensions) and bias ``b ∘ s_i``; every other layer (BatchNorm with its running
        statistics included) is copied, and train/eval modes are kept. In eval mode
        ``member(i)(x)`` equals ``member_logits(x)[i]`` up to float rounding (in train
        mode a BatchNorm would normalise over ``B`` instead of ``M*B`` rows).

        Parameters
        ----------
        i : int
            Member index in ``[0, M)``.

        Returns
        -------
        nn.Module
            Independent of this ensemble (new parameters, no fast weights).
        """
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.m:
            raise InvalidParameterError(
                f"member index must be an integer in [0, {self.m}), got {i!r}"
            )
        return collapse(
            self,
            lambda layer: effective_weights(
                layer.weight, layer.bias, torch.outer(layer.s[i], layer.r[i]), layer.s[i]
            ),
        )


def collapse(
    be: BatchEnsemble,
    layer_weights: Callable[[BELayer], tuple[Tensor, Tensor | None]],
) -> nn.Module:
    """A plain copy of ``be``'s architecture with each BatchEnsemble layer folded.

    Parameters
    ----------
    be : BatchEnsemble
    layer_weights : callable
        ``layer_weights(layer) -> (weight (out, in, *kernel), bias (out,) or None)`` for
        each :class:`BELinear` / :class:`BEConv` (typically via :func:`effective_weights`);
        called under ``torch.no_grad``.

    Returns
    -------
    nn.Module
        Deep copy of ``be.module`` with plain nn.Linear / nn.Conv1d / nn.Conv2d layers
        under the same names; other layers (and their buffers and modes) copied.
    """
    if not isinstance(be, BatchEnsemble):
        raise InvalidParameterError(
            f"collapse takes a BatchEnsemble, got {type(be).__name__}; "
            "wrap a network with BatchEnsemble(module, m) first"
        )

    def to_plain(_path: str, mod: nn.Module) -> nn.Module | None:
        if not isinstance(mod, BELinear | BEConv):
            return None
        with torch.no_grad():
            weight, bias = layer_weights(mod)
        return _plain_layer(mod, weight.detach(), None if bias is None else bias.detach())

    return _replace_modules(copy.deepcopy(be.module), to_plain)
