"""Deterministic, batch-independent initialisation of a stack of models.

Draws the same distributions as PyTorch's default initialisers (Kaiming-uniform with
``a = sqrt(5)`` for ``Linear``/``ConvNd`` weights, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
the same bound for biases; BatchNorm weight 1, bias 0, running mean 0, running var 1), but
from the counter-based generator of :mod:`weightspace.zoo.rng`, so member ``seed`` gets the
same initial weights whatever batch it is trained in and on whatever device.
``init_scale`` multiplies the bound of the weights (not biases), the usual zoo
hyper-parameter (Schürholt et al. 2022, model zoos).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from weightspace.errors import InvalidParameterError
from weightspace.nets.functional import float_buffers
from weightspace.zoo.rng import STREAM_INIT, uniform

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def _owner_map(template: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    owners = {}
    for mod_name, mod in template.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = (mod, p_name)
        for b_name, _ in mod.named_buffers(recurse=False):
            owners[f"{mod_name}.{b_name}" if mod_name else b_name] = (mod, b_name)
    return owners


def init_stack(
    template: nn.Module,
    seeds: torch.Tensor,
    init_scale: torch.Tensor | float = 1.0,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Initial parameters and float buffers of ``B`` models.

    Parameters
    ----------
    template : nn.Module
        Module of the architecture (its own values are not used).
    seeds : LongTensor (B,)
        One seed per model.
    init_scale : Tensor (B,) or float
        Multiplier of the weight bound per model.
    device : device, optional
        Where to create the tensors (default: ``seeds.device``).

    Returns
    -------
    dict name -> Tensor (B, *shape)
        Parameters (in ``named_parameters`` order) then float buffers.
    """
    device = torch.device(device) if device is not None else seeds.device
    seeds = seeds.to(device=device, dtype=torch.int64)
    scale = torch.as_tensor(init_scale, dtype=torch.float32, device=device).expand(len(seeds))
    owners = _owner_map(template)
    names = [n for n, _ in template.named_parameters()] + list(float_buffers(template))
    out: dict[str, torch.Tensor] = {}
    for index, name in enumerate(names):
        mod, attr = owners[name]
        ref = getattr(mod, attr)
        shape = tuple(ref.shape)
        numel = math.prod(shape)
        if isinstance(mod, _AFFINE) and attr in ("weight", "bias"):
            fan_in = math.prod(mod.weight.shape[1:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            counter = torch.arange(numel, device=device)
            u = uniform(seeds[:, None], STREAM_INIT, index, counter[None, :])
            value = (2.0 * u - 1.0) * bound
            if attr == "weight":
                value = value * scale[:, None]
        elif isinstance(mod, _NORM) or attr in ("running_mean", "running_var"):
            fill = 1.0 if attr in ("weight", "running_var") else 0.0
            value = torch.full((len(seeds), numel), fill, device=device)
        else:
            raise InvalidParameterError(
                f"don't know how to initialise {name!r} of a {type(mod).__name__}; "
                "zoo training supports Linear, ConvNd and BatchNorm layers"
            )
        out[name] = value.reshape(len(seeds), *shape).to(ref.dtype)
    return out


def reinitialized(model: nn.Module, seed: int, init_scale: float = 1.0) -> nn.Module:
    """A deep copy of ``model`` with parameters and float buffers freshly initialised.

    The initialisation is the zoo's (:func:`init_stack` with one seed), so a seed here and
    the same seed in a zoo give the same starting weights.
    """
    fresh = copy.deepcopy(model)
    state = init_stack(fresh, torch.tensor([int(seed)]), float(init_scale))
    fresh.load_state_dict({k: v[0] for k, v in state.items()}, strict=False)
    return fresh
