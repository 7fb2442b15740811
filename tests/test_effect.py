"""Effect: frozen, slotted, value-equal requests with a declared result type."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

import pytest

from effects import Effect, handler, result_type, run


class User:
    def __init__(self, name: str) -> None:
        self.name = name


class GetUser(Effect[User]):
    user_id: int


class Greet(Effect[str]):
    name: str
    punctuation: str = "!"
    counter: ClassVar[int] = 0


class LoudGreet(Greet):
    volume: int = 11


def test_fields_and_defaults() -> None:
    """Fields come from annotations, defaults from class values, ClassVars are not fields."""
    g = Greet("ada")
    assert (g.name, g.punctuation) == ("ada", "!")
    assert Greet.__effect_fields__ == ("name", "punctuation")
    assert Greet("ada", punctuation="?").punctuation == "?"


def test_value_equality_and_hash() -> None:
    """Effects compare and hash by type and field values."""
    assert GetUser(1) == GetUser(1)
    assert GetUser(1) != GetUser(2)
    assert hash(GetUser(1)) == hash(GetUser(1))
    assert Greet("a") != LoudGreet("a")
    assert {GetUser(1), GetUser(1)} == {GetUser(1)}


def test_frozen_and_slotted() -> None:
    """Fields cannot be assigned and instances carry no __dict__."""
    u = GetUser(1)
    with pytest.raises(AttributeError):
        u.user_id = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        u.other = 3  # type: ignore[attr-defined]
    assert not hasattr(u, "__dict__")


def test_subclass_inherits_fields() -> None:
    """A subclass adds its fields after the inherited ones."""
    lg = LoudGreet("bob", "?", 3)
    assert (lg.name, lg.punctuation, lg.volume) == ("bob", "?", 3)
    assert repr(lg) == "LoudGreet(name='bob', punctuation='?', volume=3)"


def test_field_order_error() -> None:
    """A field without default after one with a default is rejected, like dataclasses."""
    with pytest.raises(TypeError, match="without a default"):

        class Bad(Effect[int]):
            a: int = 1
            b: int


def test_result_type_from_generic_parameter() -> None:
    """The declared result type is readable, also with postponed annotations."""
    assert result_type(GetUser) is User
    assert result_type(Greet) is str
    assert result_type(LoudGreet) is str


def test_typed_yield_from_and_plain_yield() -> None:
    """`yield from eff` and `yield eff` both deliver the handler's answer."""

    def comp() -> Generator[Any, Any, tuple[str, str]]:
        u = yield from GetUser(7)
        s = yield Greet(u.name)
        return u.name, s

    h = handler({GetUser: lambda e: User(f"u{e.user_id}"), Greet: lambda e: e.name + "!"})
    assert run(comp(), h) == ("u7", "u7!")


def test_match_args() -> None:
    """Effects destructure in match statements."""
    match Greet("x", "?"):
        case Greet(name, punct):
            assert (name, punct) == ("x", "?")
        case _:
            pytest.fail("no match")
