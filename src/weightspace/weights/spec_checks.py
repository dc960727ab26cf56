"""Check a state dict against a :class:`~weightspace.weights.spec.ParameterSpec`.

:func:`check_state_dict` is what :meth:`ParameterSpec.check_state_dict` runs: it names
every missing, unexpected and wrongly shaped (or typed) key in one
:class:`~weightspace.errors.CheckpointMismatchError`, with a hint on how to fix it, for
one model's state dict or for a stack of ``N`` models (tensors ``(N, *shape)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from weightspace.errors import CheckpointMismatchError

if TYPE_CHECKING:
    from weightspace.weights.spec import ParamEntry, ParameterSpec

__all__ = ["check_state_dict"]

_MAX_LISTED = 10


def check_state_dict(
    spec: ParameterSpec,
    state_dict: Mapping[str, torch.Tensor],
    *,
    stacked: bool = False,
    strict: bool = True,
) -> int | None:
    """Check that a state dict has exactly ``spec``'s tensors with its shapes.

    Parameters
    ----------
    spec : ParameterSpec
        The expected layout.
    state_dict : mapping of str to Tensor
        One model's tensors, or with ``stacked=True`` tensors of shape
        ``(N, *shape)`` holding ``N`` models.
    stacked : bool
        Expect a leading model dimension (the same ``N`` on every tensor).
    strict : bool
        Also reject floating-point keys that the spec does not have. Integer
        tensors (``num_batches_tracked``) are never reported.

    Returns
    -------
    int or None
        ``N`` when ``stacked``, else ``None``.

    Raises
    ------
    CheckpointMismatchError
        Naming every missing, unexpected and wrongly shaped key.
    """
    missing = [name for name in spec.names if name not in state_dict]
    unexpected = _unexpected(spec, state_dict) if strict else []
    wrong, n_models = _wrong_entries(spec, state_dict, stacked)
    if not (missing or unexpected or wrong):
        return n_models
    parts = []
    if missing:
        parts.append(f"missing keys {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listing(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes or dtypes {_listing(wrong)}")
    hint = _hint(spec, state_dict, stacked, bool(unexpected), bool(wrong))
    raise CheckpointMismatchError(
        f"state dict does not match the parameter spec ({len(spec.entries)} entries, "
        f"fingerprint {spec.fingerprint[:12]}): {'; '.join(parts)}. {hint}"
    )


def _unexpected(spec: ParameterSpec, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Floating-point keys of ``state_dict`` that ``spec`` does not list."""
    known = set(spec.names)
    return [
        name
        for name, t in state_dict.items()
        if name not in known and isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def _wrong_entries(
    spec: ParameterSpec, state_dict: Mapping[str, torch.Tensor], stacked: bool
) -> tuple[list[str], int | None]:
    """Problems of the present keys (shape, model count, dtype) and the model count ``N``.

    ``N`` is the leading size of the first well-shaped tensor when ``stacked``, else None.
    """
    wrong: list[str] = []
    n_models: int | None = None
    for entry in spec.entries:
        tensor = state_dict.get(entry.name)
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            wrong.append(f"{entry.name}: expected a Tensor, got {type(tensor).__name__}")
            continue
        problem, n_models = _shape_problem(entry, tuple(tensor.shape), stacked, n_models)
        if problem:
            wrong.append(problem)
        if not tensor.is_floating_point():
            wrong.append(f"{entry.name}: expected a floating-point tensor, got {tensor.dtype}")
    return wrong, n_models


def _shape_problem(
    entry: ParamEntry, got: tuple[int, ...], stacked: bool, n_models: int | None
) -> tuple[str | None, int | None]:
    """What is wrong with shape ``got`` for ``entry`` (None if nothing), and the model count.

    With ``stacked`` the shape must be ``(N, *entry.shape)`` with the ``N`` of the
    earlier tensors; the first such tensor fixes ``N``.
    """
    if not stacked:
        ok = got == entry.shape
        return (None if ok else f"{entry.name}: expected {entry.shape}, got {got}"), n_models
    if len(got) != len(entry.shape) + 1 or got[1:] != entry.shape:
        return f"{entry.name}: expected (N, {_dims(entry.shape)}), got {got}", n_models
    if n_models is None:
        return None, got[0]
    if got[0] != n_models:
        return f"{entry.name}: has {got[0]} models, earlier tensors have {n_models}", n_models
    return None, n_models


def _hint(
    spec: ParameterSpec,
    state_dict: Mapping[str, torch.Tensor],
    stacked: bool,
    unexpected: bool,
    wrong: bool,
) -> str:
    """How to fix a mismatch, given which kinds of problems were found."""
    hint = (
        "Fix: load weights of the architecture this spec was built from (same "
        "architecture config), or rebuild the spec with ParameterSpec.from_module on the "
        "model you are loading"
    )
    if unexpected:
        hint += "; pass strict=False to ignore extra keys (e.g. buffers of a spec built "
        hint += "with include_buffers=False)"
    if stacked and wrong and _looks_unstacked(spec, state_dict):
        hint += (
            "; the tensors look like ONE model's state dict: wrap it in a list, or use "
            "module_to_vector"
        )
    return hint


def _looks_unstacked(spec: ParameterSpec, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether every present tensor has the single-model shape of its entry."""
    tensors = [state_dict.get(e.name) for e in spec.entries]
    return all(
        isinstance(t, torch.Tensor) and tuple(t.shape) == e.shape
        for t, e in zip(tensors, spec.entries, strict=True)
        if t is not None
    )


def _listing(items: list[str]) -> str:
    """``[a, b, ...]`` with at most ``_MAX_LISTED`` items and a count of the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def _dims(shape: tuple[int, ...]) -> str:
    """``"3, 4"`` for shape ``(3, 4)``."""
    return ", ".join(str(s) for s in shape)
