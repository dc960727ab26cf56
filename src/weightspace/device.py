"""Device selection: ``"auto"`` picks CUDA when present."""

from __future__ import annotations

import torch

from weightspace.errors import InvalidParameterError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... into a :class:`torch.device`.

    ``"auto"`` gives ``cuda`` when a GPU is visible, else ``cpu``. Asking for CUDA on a
    machine without one raises :class:`InvalidParameterError` instead of failing later.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidParameterError(
                f"invalid device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'"
            ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"device {device!r} asked for CUDA but no GPU is visible; use device: auto or cpu"
        )
    return dev


def module_device(module: torch.nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """Device of a module's first parameter (else first buffer, else ``default``)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device(default)
