"""Convert between a list of ``N`` state dicts and one *stacked* dict.

A stacked dict ``{name: Tensor (N, *shape)}`` holds ``N`` models of one architecture
with a leading model dimension, the layout :func:`torch.func.functional_call` under
``vmap`` consumes and :func:`~weightspace.weights.vectorize.unvectorize` returns. The
vectorization functions accept either form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    InvalidParameterError,
    ShapeError,
)
from weightspace.weights.spec import ParameterSpec

StateDict = Mapping[str, torch.Tensor]
StackedParams = Mapping[str, torch.Tensor]


def stack_state_dicts(
    state_dicts: Sequence[StateDict], spec: ParameterSpec | None = None
) -> dict[str, torch.Tensor]:
    """Stack ``N`` state dicts of one architecture into ``{name: Tensor (N, *shape)}``.

    Parameters
    ----------
    state_dicts : sequence of mapping
        ``N`` state dicts with the same keys and shapes.
    spec : ParameterSpec, optional
        Keep only the spec's tensors (in spec order). Without it every key of the first
        state dict is stacked, integer buffers included.

    Returns
    -------
    dict of str to Tensor
        Each value has shape ``(N, *shape)``.

    Raises
    ------
    EmptyZooError
        If ``state_dicts`` is empty.
    CheckpointMismatchError
        Naming the first model whose keys or shapes differ.
    """
    sds = as_state_dict_list(state_dicts)
    names = spec.names if spec is not None else tuple(sds[0])
    if spec is not None:
        check_models_match_spec(sds, spec, strict=False)
    else:
        keys0 = set(sds[0])
        for i, sd in enumerate(sds):
            if set(sd) != keys0:
                missing = sorted(keys0 - set(sd))
                extra = sorted(set(sd) - keys0)
                raise CheckpointMismatchError(
                    f"model {i} has different keys than model 0: missing {missing[:10]}, "
                    f"extra {extra[:10]}. All state dicts must come from the same "
                    f"architecture; remove or rebuild model {i}"
                )
    out = {}
    for name in names:
        try:
            out[name] = torch.stack([sd[name] for sd in sds])
        except RuntimeError as exc:
            shapes = {tuple(sd[name].shape) for sd in sds}
            first_bad = next(i for i, sd in enumerate(sds) if sd[name].shape != sds[0][name].shape)
            raise CheckpointMismatchError(
                f"tensor {name!r} has different shapes across models {sorted(shapes)}: model "
                f"{first_bad} has {tuple(sds[first_bad][name].shape)}, model 0 has "
                f"{tuple(sds[0][name].shape)}. All models must share one architecture config"
            ) from exc
    return out


def state_dicts(stacked: StackedParams, clone: bool = True) -> list[dict[str, torch.Tensor]]:
    """Split a stacked dict ``{name: (N, *shape)}`` into ``N`` state dicts.

    Parameters
    ----------
    stacked : mapping of str to Tensor
        Tensors with the same leading model dimension ``N``.
    clone : bool
        Give every returned tensor its own memory (so that saving one model does not
        save the whole stack). With ``False`` the tensors are views of ``stacked``.

    Returns
    -------
    list of dict
        ``N`` state dicts ``{name: Tensor (*shape)}``.
    """
    if not stacked:
        raise EmptyZooError("the stacked dict holds no tensors, so there are no models to split")
    sizes = {name: t.shape[0] if t.dim() > 0 else None for name, t in stacked.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ShapeError(
            f"stacked tensors must share one leading model dimension, got {sizes}; build them "
            "with stack_state_dicts or unvectorize"
        )
    n_models = next(iter(sizes.values()))
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(n_models)]
    for name, tensor in stacked.items():
        for i, part in enumerate(tensor.unbind(0)):
            out[i][name] = part.clone() if clone else part
    return out


def as_state_dict_list(state_dicts: Sequence[StateDict]) -> list[StateDict]:
    """Return the state dicts as a list; raise if there are none or one is not a mapping."""
    sds = list(state_dicts)
    if not sds:
        raise EmptyZooError(
            "no state dicts given: the zoo (or the selection from it) is empty; check the "
            "filters that chose the checkpoints"
        )
    for i, sd in enumerate(sds):
        if not isinstance(sd, Mapping):
            raise InvalidParameterError(
                f"item {i} is a {type(sd).__name__}, not a state dict (mapping of str to Tensor)"
            )
    return sds


def check_models_match_spec(sds: list[StateDict], spec: ParameterSpec, strict: bool) -> None:
    """Check every model cheaply; name the first one that does not match."""
    spec.check_state_dict(sds[0], strict=strict)
    names = spec.names
    keys0 = sds[0].keys()
    shapes0 = [sds[0][name].shape for name in names]
    for i, sd in enumerate(sds[1:], start=1):
        same_keys = sd.keys() == keys0
        if same_keys and all(sd[n].shape == s for n, s in zip(names, shapes0, strict=True)):
            continue
        try:
            spec.check_state_dict(sd, strict=strict)
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f"model {i}: {exc}") from exc
