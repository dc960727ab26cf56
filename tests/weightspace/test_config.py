"""Typed settings from mappings: nesting, tuples, scalar checks, unknown keys, defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from weightspace.config import from_mapping, to_mapping
from weightspace.errors import InvalidParameterError


@dataclass(frozen=True)
class Inner:
    a: int = 1
    b: float = 0.5
    c: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=lambda: Inner(b=0.25))
    maybe: Inner | None = None
    name: str = "x"


def test_partial_nested_override_keeps_the_owners_default():
    out = from_mapping(Outer, {"inner": {"a": 3}})
    assert out.inner == Inner(a=3, b=0.25)  # b from Outer's default, not Inner's 0.5
    assert from_mapping(Outer, None) == Outer()
    assert from_mapping(Outer, {"maybe": {"c": [4]}}).maybe == Inner(c=(4,))
    assert from_mapping(Outer, to_mapping(out)) == out


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"inner": {"z": 1}}, r"unknown key 'cfg\.inner\.z'.*allowed keys: \['a', 'b', 'c'\]"),
        ({"inner": {"a": "3"}}, r"'cfg\.inner\.a' must be a int"),
        ({"inner": {"a": True}}, r"'cfg\.inner\.a' must be a int"),
        ({"inner": {"c": 5}}, r"'cfg\.inner\.c' must be a list"),
        ({"inner": 3}, r"'cfg\.inner' must be a mapping"),
        ({"name": None}, r"'cfg\.name' must not be empty"),
    ],
)
def test_bad_values_are_named_with_their_path(data, match):
    with pytest.raises(InvalidParameterError, match=match):
        from_mapping(Outer, data, "cfg")


def test_ints_are_accepted_as_floats():
    assert from_mapping(Inner, {"b": 2}).b == 2.0
