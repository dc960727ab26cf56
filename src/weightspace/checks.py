"""Argument checks shared by the library: one wording for one kind of mistake."""

from __future__ import annotations

import math

from weightspace.errors import InvalidParameterError

__all__ = ["positive_number"]


def positive_number(name: str, value: object, hint: str = "") -> float:
    """Return ``value`` as a float if it is a finite number ``> 0`` (not a bool), else raise.

    Raises
    ------
    InvalidParameterError
        ``"<name> must be a finite number > 0, got <value>[; <hint>]"``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        tail = f"; {hint}" if hint else ""
        raise InvalidParameterError(f"{name} must be a finite number > 0, got {value!r}{tail}")
    return float(value)
