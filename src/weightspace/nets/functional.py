"""Run one module template over a stacked batch of parameter sets.

``params[name]`` has shape ``(B, *shape)``; inputs have shape ``(B, N, *input_shape)``
(each model sees its own samples). This is :func:`torch.func.functional_call` under
:func:`torch.vmap`, the engine behind batched zoo training and evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call


def float_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point buffers (BatchNorm running statistics) of ``module``."""
    return {n: b for n, b in module.named_buffers() if b.is_floating_point()}


def stack_modules(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Stack parameters and float buffers of same-architecture modules: ``(B, *shape)``."""
    names = list(dict(modules[0].named_parameters())) + list(float_buffers(modules[0]))
    out = {}
    for name in names:
        out[name] = torch.stack([m.state_dict()[name].detach() for m in modules])
    return out


def batched_forward(
    template: nn.Module,
    stacked: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    shared_input: bool = False,
) -> torch.Tensor:
    """Logits of every model of a stack.

    Parameters
    ----------
    template : nn.Module
        Module of the architecture; its own tensors are ignored. Its ``training`` flag
        decides BatchNorm behaviour (``eval()`` uses the stacked running statistics).
    stacked : mapping name -> Tensor (B, *shape)
        Parameters and (float) buffers for B models.
    x : Tensor
        ``(B, N, *input_shape)`` or, with ``shared_input=True``, ``(N, *input_shape)``.

    Returns
    -------
    Tensor
        ``(B, N, n_classes)``.
    """

    def one(p: Mapping[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(template, dict(p), (xb,))

    in_dims = (0, None) if shared_input else (0, 0)
    return torch.vmap(one, in_dims=in_dims, randomness="error")(dict(stacked), x)
