"""Throw, catch, try_catch and bracket."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from effects import (
    Done,
    Effect,
    Err,
    Ok,
    State,
    Suspend,
    Throw,
    Writer,
    Yield,
    bracket,
    catch,
    handler,
    run,
    start,
    try_catch,
)


class Step(Effect[None]):
    name: str


def test_throw_effect_raises_at_yield() -> None:
    """yield Throw(err) raises err where it was yielded."""

    def comp() -> Generator[Any, Any, str]:
        try:
            yield Throw(ValueError("boom"))
        except ValueError as err:
            return str(err)
        return "no"

    assert run(comp()) == "boom"


def test_uncaught_throw_is_the_outcome() -> None:
    """An uncaught Throw ends the run with Throw(error), the same object."""
    err = ValueError("x")
    out = start(Throw(err))
    assert isinstance(out, Throw)
    assert out.error is err


def test_nested_catch_inner_first_rethrow_reaches_outer() -> None:
    """The inner catch sees the error first; a rethrow reaches the outer one."""
    seen: list[str] = []

    def failing() -> Generator[Any, Any, str]:
        yield Step("fail")
        raise KeyError("k")

    def inner_recover(err: Exception) -> Generator[Any, Any, str]:
        seen.append(f"inner:{type(err).__name__}")
        yield Step("rethrow")
        raise RuntimeError("wrapped") from err

    def outer_recover(err: Exception) -> str:
        seen.append(f"outer:{err}")
        return "recovered"

    comp = catch(catch(failing(), inner_recover), outer_recover)
    assert run(comp, handler({Step: lambda e: None})) == "recovered"
    assert seen == ["inner:KeyError", "outer:wrapped"]


def test_uncaught_after_catch_becomes_outcome() -> None:
    """An error the catch does not handle (its recovery raises) becomes Throw."""

    def recover(err: Exception) -> str:
        raise TypeError("again")

    out = start(catch(Throw(ValueError()), recover))
    assert isinstance(out, Throw)
    assert isinstance(out.error, TypeError)


def test_try_catch() -> None:
    """try_catch returns Ok(value) or Err(exception)."""
    err = ValueError("e")
    assert run(try_catch(State.get()), State(3)) == Ok(3)
    assert run(try_catch(Throw(err))) == Err(err)


def test_state_before_throw_visible_in_recovery() -> None:
    """State changes made before a throw are visible to the recovery."""

    def comp() -> Generator[Any, Any, Any]:
        yield State.put(1)
        yield Throw(ValueError())

    def recover(err: Exception) -> Generator[Any, Any, Any]:
        return (yield State.get())

    assert run(catch(comp(), recover), State(0)) == 1


def _resource(name: str, log: list[str]) -> Any:
    def acquire() -> Generator[Any, Any, str]:
        yield Writer.tell(f"acquire {name}")
        log.append(f"acquire {name}")
        return name

    def release(res: str) -> Generator[Any, Any, None]:
        yield Writer.tell(f"release {res}")
        log.append(f"release {res}")

    return acquire(), release


def test_bracket_releases_once_lifo_on_success() -> None:
    """Nested brackets release innermost first, exactly once, and may perform effects."""
    log: list[str] = []
    a_acq, a_rel = _resource("a", log)
    b_acq, b_rel = _resource("b", log)

    def use_a(a: str) -> Any:
        return bracket(b_acq, lambda b: State.get(), b_rel)

    result, told = run(bracket(a_acq, use_a, a_rel), Writer(), State("v"))
    assert result == "v"
    assert log == ["acquire a", "acquire b", "release b", "release a"]
    assert told == log


def test_bracket_releases_on_exception() -> None:
    """The release runs once when use raises, and the error propagates."""
    log: list[str] = []
    acq, rel = _resource("r", log)

    def use(r: str) -> Any:
        return Throw(RuntimeError("use failed"))

    out = start(bracket(acq, use, rel), Writer())
    assert isinstance(out, Throw)
    assert str(out.error) == "use failed"
    assert log == ["acquire r", "release r"]


def test_bracket_releases_on_cancel() -> None:
    """Cancelling at a suspension inside use releases innermost first."""
    log: list[str] = []
    a_acq, a_rel = _resource("a", log)
    b_acq, b_rel = _resource("b", log)

    def use_b(b: str) -> Any:
        return Yield("waiting")

    comp = bracket(a_acq, lambda a: bracket(b_acq, use_b, b_rel), a_rel)
    s = start(comp, Writer())
    assert isinstance(s, Suspend)
    assert s.cancel("bye").__class__.__name__ == "Cancelled"
    assert log == ["acquire a", "acquire b", "release b", "release a"]


def test_bracket_with_plain_release_function() -> None:
    """release may be a plain function."""
    released: list[str] = []
    out = start(bracket(State.get(), lambda s: Yield(s), released.append), State("res"))
    assert isinstance(out, Suspend)
    assert out.resume("done") == Done("done")
    assert released == ["res"]


def test_catch_does_not_catch_cancellation() -> None:
    """catch handles Exceptions only; a cancellation passes through it."""
    recovered: list[Exception] = []

    def recover(err: Exception) -> str:
        recovered.append(err)
        return "recovered"

    s = start(catch(Yield("?"), recover))
    assert isinstance(s, Suspend)
    assert type(s.cancel("x")).__name__ == "Cancelled"
    assert recovered == []


@pytest.mark.parametrize("value", [ValueError("stored"), iter([1])])
def test_state_holding_exception_or_generator_is_a_value(value: Any) -> None:
    """A State holding an exception or a generator returns it as a plain value."""
    assert run(State.get(), State(value)) is value
