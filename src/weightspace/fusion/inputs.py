"""The checks every fusion entry point runs on its inputs before any work.

:func:`otfusion`, :func:`clafusion` and :func:`vanilla_average` all start with
:func:`check_fusion_inputs`, so one kind of mistake gets one wording wherever it is made:

- fewer than two models (fusing one model would return a copy of it; an empty list
  would fail deep inside with a bare ``IndexError``);
- a NaN or infinity in any parameter or floating-point buffer of any model: averaging
  would spread it into the fused model (a NaN in the output layer silently gives NaN
  logits), so the error names the model index and the parameter (and its layer);
- models whose layer types or activations differ (a Tanh network averaged with a ReLU
  network gives a model that is neither): the error names both models and both types;
- samples ``x`` containing NaN or inf (the activation-based costs would be non-finite).

Structural compatibility (family, input and output sizes, depths, kernels) is checked
afterwards by :func:`weightspace.fusion.structure.check_compatible` for the two OT-based
methods, and by the state-dict comparison of :func:`vanilla_average`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from weightspace.errors import (
    ArchitectureMismatchError,
    InvalidParameterError,
    NonFiniteWeightsError,
)

__all__ = ["check_finite_samples", "check_fusion_inputs"]

MIN_MODELS = 2
"""Fusion combines at least two models."""


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every module without children, in registration order."""
    return [(p or "<model>", m) for p, m in model.named_modules() if not any(m.children())]


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == nn.modules.activation.__name__


def _layer_of(model: nn.Module, key: str) -> str:
    """``"layer '2' (Linear)"`` for the state-dict key ``"2.weight"``."""
    path = key.rpartition(".")[0]
    modules = dict(model.named_modules())
    kind = type(modules[path]).__name__ if path in modules else "?"
    return f"layer '{path or '<model>'}' ({kind})"


def _check_finite(method: str, k: int, model: nn.Module) -> None:
    for key, value in model.state_dict().items():
        if not value.is_floating_point() and not value.is_complex():
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(value.numel() - int(finite.sum()) - n_nan)
        raise NonFiniteWeightsError(
            f"{method}: model {k} has non-finite values in '{key}' ({_layer_of(model, key)}): "
            f"{n_nan} NaN and {n_inf} inf of {value.numel()}; fusion would spread them into "
            "the fused model. Retrain that model or leave it out"
        )


def _check_same_layer_types(method: str, models: Sequence[nn.Module], same_depth: bool) -> None:
    """Equal activations everywhere; with ``same_depth`` equal layer types position-wise."""
    ref = _leaves(models[0])
    ref_acts = {type(m).__name__: p for p, m in ref if _is_activation(m)}
    for k, model in enumerate(models[1:], start=1):
        leaves = _leaves(model)
        if same_depth and len(leaves) == len(ref):
            for (p0, m0), (p, m) in zip(ref, leaves, strict=True):
                if type(m0) is not type(m):
                    raise ArchitectureMismatchError(
                        f"{method}: model {k}'s layer '{p}' is a {type(m).__name__} but model "
                        f"0's layer '{p0}' is a {type(m0).__name__}; fusion combines models "
                        "with the same layer types and activations"
                    )
        acts = {type(m).__name__: p for p, m in leaves if _is_activation(m)}
        if ref_acts and acts and set(acts) != set(ref_acts):
            mine = sorted(set(acts) - set(ref_acts)) or sorted(acts)
            theirs = sorted(set(ref_acts) - set(acts)) or sorted(ref_acts)
            raise ArchitectureMismatchError(
                f"{method}: model {k} uses {'/'.join(mine)} activations (layer "
                f"'{acts[mine[0]]}') but model 0 uses {'/'.join(theirs)} (layer "
                f"'{ref_acts[theirs[0]]}'); fusion combines models with the same activations"
            )


def check_finite_samples(method: str, x: torch.Tensor | None) -> None:
    """Refuse samples with NaN or inf (their activations would make every cost NaN)."""
    if x is not None and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InvalidParameterError(
            f"{method}: the samples x contain NaN or inf; pass finite inputs"
        )


def check_fusion_inputs(
    method: str,
    models: Iterable[nn.Module],
    *,
    same_depth: bool,
    x: torch.Tensor | None = None,
) -> list[nn.Module]:
    """Check what every fusion method needs of its models; returns them as a list.

    Parameters
    ----------
    method : str
        The entry point's name, used in messages (``"otfusion"``, ...).
    models : sequence of nn.Module
    same_depth : bool
        The models must have the same layers up to widths (OTFusion, vanilla averaging):
        layer types are then compared position by position. CLAFusion passes False and
        only the set of activation types is compared.
    x : Tensor, optional
        Samples the method will run the models on.

    Raises
    ------
    InvalidParameterError
        Fewer than two models, something that is not an ``nn.Module``, or samples with
        NaN or inf.
    NonFiniteWeightsError
        A NaN or inf in a model (the message names the model index and the parameter).
    ArchitectureMismatchError
        Different layer types or activations (the message names both models).
    """
    if isinstance(models, nn.Module) or not hasattr(models, "__iter__"):
        raise InvalidParameterError(
            f"{method} takes a list of models, got a {type(models).__name__}"
        )
    models = list(models)
    if len(models) < MIN_MODELS:
        got = "an empty list" if not models else "1 model"
        raise InvalidParameterError(
            f"{method} needs >= {MIN_MODELS} models to fuse, got {got}; fusing a single "
            "model would only return a copy of it"
        )
    for k, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"{method}: model {k} is a {type(model).__name__}, not a torch nn.Module"
            )
    for k, model in enumerate(models):
        _check_finite(method, k, model)
    _check_same_layer_types(method, models, same_depth)
    check_finite_samples(method, x)
    return models
