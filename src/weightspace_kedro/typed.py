"""Typed settings at the pipeline boundary: a parameters block becomes a frozen config.

Nodes never pass raw parameter dicts to the library. The first node of a pipeline turns
its ``params:<block>`` into the library's frozen dataclass with :func:`typed_settings`;
a misspelled key, a wrong type or a value out of range fails there, in seconds, with the
dotted key and the parameters file to edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from weightspace.config import from_mapping
from weightspace.errors import InvalidParameterError

T = TypeVar("T")


def typed_settings(cls: type[T], params: Mapping[str, Any] | None, key: str, pipeline: str) -> T:
    """``cls`` built from the parameters block ``key`` of ``parameters_<pipeline>.yml``.

    Raises
    ------
    InvalidParameterError
        Naming the offending key and the file (``conf/base`` or the ``--env`` folder's
        override) to fix.
    """
    try:
        return from_mapping(cls, params, key)
    except InvalidParameterError as exc:
        raise InvalidParameterError(
            f"{exc} (in conf/<env>/parameters_{pipeline}.yml; conf/base holds the defaults, "
            "conf/test and conf/gpu only overrides)"
        ) from exc
