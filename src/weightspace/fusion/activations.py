"""Record the outputs of named modules on a batch of samples (forward hooks).

OTFusion's activation-based ground metric and CLAFusion's layer representation both use
the *pre-activations* of ``t`` samples (CLAFusion §3.1 "Layer representation", App. B):
the output of a layer, or of the BatchNorm that follows it, before the ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.device import module_device
from weightspace.errors import InvalidParameterError


@torch.no_grad()
def capture(
    model: nn.Module, x: torch.Tensor, paths: Sequence[str], batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Outputs of the modules at ``paths`` on inputs ``x``, in eval mode.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (N, *input_shape)
        Samples, moved to the model's device batch by batch.
    paths : sequence of str
        Module paths (``model.get_submodule`` names).
    batch_size : int

    Returns
    -------
    dict path -> Tensor (N, *output_shape)
        On the CPU, float32. The model's train/eval mode is restored afterwards.
    """
    modules = dict(model.named_modules())
    missing = [p for p in paths if p not in modules]
    if missing:
        raise InvalidParameterError(f"model has no modules {missing}; known: {sorted(modules)}")
    device = module_device(model)
    outputs: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    hooks = []
    for p in dict.fromkeys(paths):

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, key: str = p) -> None:
            outputs[key].append(out.detach().float().cpu())

        hooks.append(modules[p].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {p: torch.cat(v) for p, v in outputs.items()}


def neuron_matrix(out: torch.Tensor) -> torch.Tensor:
    """Rows = neurons (channels), columns = samples x positions.

    Parameters
    ----------
    out : Tensor (N, C) or (N, C, *spatial)

    Returns
    -------
    Tensor (C, N * prod(spatial))
    """
    return out.transpose(0, 1).reshape(out.shape[1], -1)
