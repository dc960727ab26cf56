"""Typed settings from plain mappings: the one way a parameters block becomes a config.

Every method's configuration is a frozen dataclass whose defaults are the only defaults
in the project. :func:`from_mapping` builds one from a nested mapping (a Kedro parameters
block, a checkpoint's JSON metadata), recursing into nested dataclasses, turning lists
into tuples where the field is a tuple, checking scalar types, and refusing unknown keys
with the dotted path of the key and the keys that are allowed, so a misspelling fails
before any work starts::

    >>> from_mapping(D2NWGConfig, {"vae": {"latnet_dim": 4}}, "d2nwg_heads.generator")
    InvalidParameterError: unknown key 'd2nwg_heads.generator.vae.latnet_dim'; allowed: ...
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from weightspace.errors import InvalidParameterError

T = TypeVar("T")

_SCALARS = (bool, int, float, str)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(tp: type, value: Any, path: str) -> Any:
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, int | float) and not isinstance(value, bool)
        if tp is float
        else isinstance(value, int) and not isinstance(value, bool)
        if tp is int
        else isinstance(value, str)
    )
    if not ok:
        raise InvalidParameterError(
            f"'{path}' must be a {tp.__name__}, got {value!r} ({type(value).__name__})"
        )
    return float(value) if tp is float else value


def _convert(tp: Any, value: Any, path: str, base: Any = None) -> Any:
    """``value`` as type ``tp`` (nested dataclasses, tuples, scalars; others as given).

    ``base`` is the field's default: a nested mapping overrides only the keys it names.
    """
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise InvalidParameterError(f"'{path}' must not be empty (null)")
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if isinstance(value, inner):
            return value
        if not isinstance(value, Mapping):
            raise InvalidParameterError(
                f"'{path}' must be a mapping of {inner.__name__} fields, got {value!r}"
            )
        return from_mapping(inner, value, path, base=base if isinstance(base, inner) else None)
    origin = typing.get_origin(inner)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InvalidParameterError(f"'{path}' must be a list, got {value!r}")
        args = typing.get_args(inner)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if inner in _SCALARS:
        return _scalar(inner, value, path)
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def from_mapping(
    cls: type[T], data: Mapping[str, Any] | None, path: str = "", base: T | None = None
) -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys are an error.

    Keys that ``data`` leaves out keep their default — the owner's default: a nested
    config whose owner declares ``vae: ChunkVAEConfig = field(default_factory=lambda:
    ChunkVAEConfig(beta=1e-4))`` keeps ``beta=1e-4`` when ``data`` sets only
    ``vae.latent_dim``.

    Parameters
    ----------
    cls : dataclass type
    data : mapping or None
        ``None`` or ``{}`` gives ``cls()`` (every default).
    path : str
        Dotted location of ``data`` in the user's parameters, used in error messages.
    base : cls, optional
        The instance whose values ``data`` overrides (else the field defaults).

    Raises
    ------
    InvalidParameterError
        An unknown key (named with its dotted path and the allowed keys), a value of the
        wrong type, or whatever ``cls.__post_init__`` rejects.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise InvalidParameterError(f"'{path or cls.__name__}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(repr(_join(path, str(k))) for k in unknown)
        raise InvalidParameterError(
            f"unknown key {names} for {cls.__name__}; allowed keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        k: _convert(
            hints[k], v, _join(path, k),
            getattr(base, k) if base is not None else _default(fields[k]),
        )
        for k, v in data.items()
    }  # fmt: skip
    if base is not None:
        kwargs = {**{k: getattr(base, k) for k in fields}, **kwargs}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise InvalidParameterError(f"'{path or cls.__name__}': {exc}") from exc


def to_mapping(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (inverse of :func:`from_mapping`)."""
    return dataclasses.asdict(config)


__all__ = ["from_mapping", "to_mapping"]
