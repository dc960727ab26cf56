"""Layer balancing for CLAFusion (Nguyen et al., §3.2 "Layer balancing methods").

Cross-layer alignment maps the ``n`` hidden layers (or blocks) of a shallower model B
onto ``n`` of the ``m`` layers of a deeper model A. Before layer-wise fusion the two must
have equal depths, which §3.2 obtains in one of two ways:

- **Add layers into model B** (:func:`add_identity_layer`, :func:`balance_by_adding`):
  insert a layer ``l'`` with identity weights after layer ``l``. Its input is a ReLU
  output ``x >= 0``, so ``ReLU(I x) = x`` and the function is unchanged. For CNNs
  ("Balancing the number of layers for CNN") a VGG gets a convolution with identity
  kernels (and an identity BatchNorm), a ResNet a block whose two convolutions are zero
  so that only the identity shortcut remains: ``relu(x + 0) = x``.
- **Merge layers in model A** (MLPs only): :mod:`weightspace.fusion.merge`.

This module holds the first way and the mapping checks both share. Every function
returns a new module (the input is deep-copied, never changed); new layers get the dtype
and device of the model's parameters and its training mode.
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Sequence

import torch
from torch import nn

from weightspace.device import module_device
from weightspace.errors import InvalidParameterError, UnsupportedLayerError
from weightspace.fusion.structure import describe, family_of
from weightspace.nets.resnet import BasicBlock

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _like(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype of the model's parameters (default dtype without any) and its device."""
    param = next(model.parameters(), None)
    dtype = torch.get_default_dtype() if param is None else param.dtype
    return dtype, module_device(model)


def _finish(new: nn.Module, model: nn.Module) -> nn.Module:
    """Move a freshly built module to the model's dtype/device and training mode."""
    dtype, device = _like(model)
    return new.to(device=device, dtype=dtype).train(model.training)


def children(seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the direct children, in order."""
    return list(seq.named_children())


def index_of(seq: nn.Sequential, name: str) -> int:
    """Position of the child called ``name``."""
    names = [n for n, _ in children(seq)]
    return names.index(name)


def _relu_end(seq: nn.Sequential, start: int) -> int:
    """Index just past the ReLU that closes the layer at ``start`` (skipping a BatchNorm)."""
    mods = [m for _, m in children(seq)]
    k = start + 1
    if k < len(mods) and isinstance(mods[k], _BN):
        k += 1
    if k >= len(mods) or not isinstance(mods[k], nn.ReLU):
        raise UnsupportedLayerError(
            f"layer {start} of the stack is not followed by a ReLU; identity layers can "
            "only be inserted where their input is a ReLU output (CLAFusion §3.2)"
        )
    return k + 1


def _inserted(seq: nn.Sequential, at: int, new: Sequence[nn.Module]) -> nn.Sequential:
    """A new Sequential with ``new`` inserted before position ``at`` (indices renumber)."""
    mods = [m for _, m in children(seq)]
    return nn.Sequential(*mods[:at], *new, *mods[at:])


def _identity_linear(width: int, bias: bool) -> nn.Linear:
    """``Linear(width, width)`` with identity weight and zero bias."""
    lin = nn.Linear(width, width, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(width))
        if lin.bias is not None:
            lin.bias.zero_()
    return lin


def _identity_conv(ref: nn.Conv1d | nn.Conv2d, channels: int) -> nn.Module:
    """A conv like ``ref`` (nd, kernel size) with ``C -> C`` identity kernels (centre tap 1)."""
    kernel = tuple(int(k) for k in ref.kernel_size)
    if any(k % 2 == 0 for k in kernel):
        raise UnsupportedLayerError(
            f"cannot build an identity kernel of even size {kernel}: it has no centre tap"
        )
    new = type(ref)(
        channels,
        channels,
        kernel,
        padding=tuple(k // 2 for k in kernel),
        bias=ref.bias is not None,
    )
    idx = torch.arange(channels)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[(idx, idx, *(k // 2 for k in kernel))] = 1.0
        if new.bias is not None:
            new.bias.zero_()
    return new


def _unit_variance(eps: float, dtype: torch.dtype) -> torch.Tensor:
    """A running variance ``v`` (about ``1 - eps``) with ``sqrt(v + eps) == 1`` in ``dtype``."""
    v = torch.tensor(1.0 - eps, dtype=dtype)
    one = torch.tensor(1.0, dtype=dtype)
    for _ in range(4):
        total = v + torch.tensor(eps, dtype=dtype)
        if torch.sqrt(total) == one:
            break
        v = torch.nextafter(v, -one if total > one else 2 * one)
    return v


def _identity_bn(ref: nn.Module, channels: int, dtype: torch.dtype) -> nn.Module:
    """A BatchNorm like ``ref`` that is the identity in eval mode."""
    bn = type(ref)(channels, eps=ref.eps, momentum=ref.momentum)
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(_unit_variance(bn.eps, dtype).item())
        bn.num_batches_tracked.zero_()
    return bn


def _zero_block(ref: BasicBlock) -> BasicBlock:
    """A stride-1 ``BasicBlock`` with zero convs and zero ``bn2``: ``x -> relu(x)``."""
    nd = 1 if isinstance(ref.conv1, nn.Conv1d) else 2
    channels = int(ref.conv2.out_channels)
    norm = "batch" if isinstance(ref.bn2, _BN) else "none"
    block = BasicBlock(nd, channels, channels, 1, norm)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
        for bn, scale in ((block.bn1, 1.0), (block.bn2, 0.0)):
            if isinstance(bn, _BN):
                bn.weight.fill_(scale)
                bn.bias.zero_()
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
    return block


def _unit_paths(model: nn.Module) -> list[str]:
    return [u for g in describe(model).align_groups for u in g.units]


def _bad_after(after: str, valid: Sequence[str]) -> InvalidParameterError:
    return InvalidParameterError(
        f"cannot add an identity layer after {after!r}: it is not a unit of this model; "
        f"valid unit paths are {list(valid)}"
    )


# --------------------------------------------------------------------------------------
# adding identity layers
# --------------------------------------------------------------------------------------


def _insert_mlp(model: nn.Sequential, after: str) -> nn.Sequential:
    if after not in describe(model).align_groups[0].units:
        raise _bad_after(after, _unit_paths(model))
    k = index_of(model, after)
    lin = model[k]
    identity = _identity_linear(lin.out_features, lin.bias is not None)
    new = _finish(nn.Sequential(identity, nn.ReLU()), model)
    return _inserted(model, _relu_end(model, k), list(new))


def _insert_vgg_conv(model: nn.Module, k: int) -> None:
    conv = model.features[k]
    channels = int(conv.out_channels)
    new: list[nn.Module] = [_identity_conv(conv, channels)]
    nxt = model.features[k + 1] if k + 1 < len(model.features) else None
    if isinstance(nxt, _BN):
        new.append(_identity_bn(nxt, channels, _like(model)[0]))
    new.append(nn.ReLU())
    new = list(_finish(nn.Sequential(*new), model))
    model.features = _inserted(model.features, _relu_end(model.features, k), new)


def _insert_vgg_head(model: nn.Module, k: int) -> None:
    head = model.classifier
    if isinstance(head[k], nn.Flatten):
        first = next(m for m in head if isinstance(m, nn.Linear))
        width, bias, at = int(first.in_features), first.bias is not None, k + 1
    else:
        width, bias, at = int(head[k].out_features), head[k].bias is not None, _relu_end(head, k)
    new = _finish(nn.Sequential(_identity_linear(width, bias), nn.ReLU()), model)
    model.classifier = _inserted(head, at, list(new))


def _insert_vgg(model: nn.Module, after: str) -> nn.Module:
    valid = _unit_paths(model)
    if isinstance(model.classifier[0], nn.Flatten):
        valid.append("classifier.0")
    if after not in valid:
        raise _bad_after(after, valid)
    part, name = after.split(".", 1)
    if part == "features":
        _insert_vgg_conv(model, index_of(model.features, name))
    else:
        _insert_vgg_head(model, index_of(model.classifier, name))
    return model


def _insert_resnet(model: nn.Module, after: str) -> nn.Module:
    if after not in _unit_paths(model):
        raise _bad_after(after, _unit_paths(model))
    k = index_of(model.layers, after.split(".", 1)[1])
    block = _finish(_zero_block(model.layers[k]), model)
    model.layers = _inserted(model.layers, k + 1, [block])
    return model


def _insert(model: nn.Module, after: str) -> nn.Module:
    """Insert one identity layer into ``model`` itself (Sequential MLPs are rebuilt)."""
    family = family_of(model)
    if family == "mlp":
        return _insert_mlp(model, after)
    if family == "vgg":
        return _insert_vgg(model, after)
    return _insert_resnet(model, after)


def add_identity_layer(model: nn.Module, after: str) -> nn.Module:
    """Insert one function-preserving layer after unit ``after`` (§3.2, "Add layers").

    Parameters
    ----------
    model : nn.Module
        An MLP (``nn.Sequential`` of ``[Flatten,] Linear, ReLU, ..., Linear``), a
        :class:`~weightspace.nets.vgg.VGG` or a :class:`~weightspace.nets.resnet.ResNet`.
    after : str
        A unit path from ``describe(model).align_groups``: a hidden Linear of an MLP
        (``"1"``), a VGG conv (``"features.0"``) or classifier hidden Linear
        (``"classifier.1"``), ``"classifier.0"`` (the VGG head's Flatten: the new layer
        becomes the first hidden layer of the head), or a ResNet block (``"layers.0"``).

    Returns
    -------
    nn.Module
        A new model computing the same function (in eval mode): after the ReLU that
        follows ``after`` an identity ``Linear(p, p)`` + ReLU (MLP, VGG head), an identity
        ``p -> p`` conv [+ identity BatchNorm] + ReLU (VGG features), or a
        ``BasicBlock(c, c)`` with zero convs and zero ``bn2`` (ResNet). MLP results are
        new ``nn.Sequential`` objects whose indices renumber.

    Raises
    ------
    InvalidParameterError
        ``after`` is not a unit path (the message lists the valid ones).
    UnsupportedLayerError
        The model is not of a supported family.
    """
    return _insert(copy.deepcopy(model), after)


def _as_index(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidParameterError(f"{what} must be an integer, got {value!r}") from None


def check_mapping(mapping: Sequence[int], n: int, m: int, where: str) -> list[int]:
    """Validate a strictly increasing map of ``n`` units into ``m`` deeper units."""
    idx = [_as_index(v, f"{where} entries") for v in mapping]
    if len(idx) != n:
        raise InvalidParameterError(
            f"{where} has {len(idx)} entries but the model has {n} units there: give one "
            "deeper-model unit index per unit"
        )
    if any(b <= a for a, b in itertools.pairwise(idx)):
        raise InvalidParameterError(f"{where} must be strictly increasing, got {idx}")
    if idx and (idx[0] < 0 or idx[-1] >= m):
        raise InvalidParameterError(
            f"{where} = {idx} must lie in [0, {m - 1}] for a deeper model of {m} units"
        )
    return idx


def _insertion_plan(
    model: nn.Module, mappings: Sequence[Sequence[int]], depths: Sequence[int]
) -> list[tuple[int, int, int]]:
    """``(group, unit index or -1 for the group start, number of layers)`` per insertion."""
    structure = describe(model)
    groups = structure.align_groups
    if len(mappings) != len(groups) or len(depths) != len(groups):
        raise InvalidParameterError(
            f"the model has {len(groups)} alignment groups (depths {structure.depths}) but "
            f"got {len(mappings)} mappings and {len(depths)} depths; give one per group"
        )
    plan: list[tuple[int, int, int]] = []
    for g, (group, mapping, depth) in enumerate(zip(groups, mappings, depths, strict=True)):
        n, m = len(group.units), _as_index(depth, f"depths[{g}]")
        if m < n:
            raise InvalidParameterError(
                f"depths[{g}] = {m} is smaller than the model's {n} units in group {g}: "
                "balance_by_adding deepens the shallower model"
            )
        idx = check_mapping(mapping, n, m, f"mappings[{g}]")
        plan += _group_plan(structure.family, g, len(groups), idx, m)
    return plan


def _group_plan(family: str, g: int, n_groups: int, idx: list[int], m: int) -> list:
    if not idx:
        if m and not (family == "vgg" and g == n_groups - 1):
            raise InvalidParameterError(
                f"alignment group {g} of this {family} has no units, so identity layers "
                "have no ReLU output to follow; only a VGG classifier head may be empty"
            )
        return [(g, -1, m)] if m else []
    if idx[0] != 0:
        raise InvalidParameterError(
            f"mappings[{g}][0] must be 0, got {idx[0]}: the first units must be matched "
            "(an identity layer before them would see non-ReLU inputs)"
        )
    gaps = [b - a - 1 for a, b in itertools.pairwise(idx)] + [m - 1 - idx[-1]]
    return [(g, j, k) for j, k in enumerate(gaps) if k]


def balance_by_adding(
    model: nn.Module, mappings: Sequence[Sequence[int]], depths: Sequence[int]
) -> nn.Module:
    """Deepen a model with identity layers to match a cross-layer alignment (§3.2).

    Parameters
    ----------
    model : nn.Module
        The shallower model (MLP, VGG or ResNet).
    mappings : sequence of sequence of int
        One per alignment group ``g`` of ``describe(model)``: the strictly increasing
        0-based indices in the deeper model of this model's ``n_g`` units; the first
        must be 0.
    depths : sequence of int
        ``m_g``, the deeper model's unit count in each group (``m_g >= n_g``).

    Returns
    -------
    nn.Module
        A new model with the same function and ``describe(result).depths ==
        tuple(depths)``: ``mappings[g][j+1] - mappings[g][j] - 1`` identity layers follow
        unit ``j`` and ``m_g - 1 - mappings[g][-1]`` the last unit; an empty VGG head
        group gets ``m_g`` layers after its Flatten.

    Raises
    ------
    InvalidParameterError
        Wrong number of groups, malformed mappings, ``mappings[g][0] != 0``, or
        layers requested for an empty group other than a VGG head.
    """
    plan = _insertion_plan(model, mappings, depths)
    out = copy.deepcopy(model)
    for g, j, count in reversed(plan):
        units = describe(out).align_groups[g].units
        after = units[j] if j >= 0 else "classifier.0"
        for _ in range(count):
            out = _insert(out, after)
    return out
