"""Runners: run/arun to a value, start/astart to an outcome, one-shot Suspend.resume."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import anyio
import anyio.lowlevel
import pydantic
import pytest

from effects import (
    AsyncHandlerError,
    Done,
    Effect,
    Handler,
    InvalidInput,
    MissingHandlerError,
    ResumeError,
    State,
    Suspend,
    Throw,
    UnhandledSuspension,
    Yield,
    arun,
    astart,
    handler,
    run,
    start,
    with_handler,
)


class Fetch(Effect[str]):
    key: str


def wizard() -> Generator[Any, Any, dict[str, Any]]:
    name = yield Yield("name?")
    yield State.put(name)
    age = yield Yield("age?")
    stored = yield State.get()
    return {"name": stored, "age": age}


def test_yield_resume_chain() -> None:
    """Each Yield suspends with its prompt; resume continues to the next one, then Done."""
    first = start(wizard(), State(None))
    assert isinstance(first, Suspend)
    assert first.value == "name?"
    second = first.resume("ada")
    assert isinstance(second, Suspend)
    assert second.value == "age?"
    assert second.resume(36) == Done({"name": "ada", "age": 36})


def test_resume_is_one_shot() -> None:
    """A second resume of the same suspension is a clear error."""
    s = start(wizard(), State(None))
    assert isinstance(s, Suspend)
    s.resume("x")
    with pytest.raises(ResumeError, match="already resumed"):
        s.resume("y")


def test_report_cannot_resume() -> None:
    """A reported copy of a suspension carries the prompt but cannot resume."""
    s = start(wizard(), State(None))
    assert isinstance(s, Suspend)
    report = s.report()
    assert report.value == "name?"
    with pytest.raises(ResumeError):
        report.resume("x")


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_yield_input_validation_keeps_suspension() -> None:
    """Invalid input raises InvalidInput with pydantic's errors; the suspension stays usable."""

    def comp() -> Generator[Any, Any, Person]:
        return (yield Yield("who?", input=Person))

    s = start(comp())
    assert isinstance(s, Suspend)
    assert s.input is Person
    with pytest.raises(InvalidInput) as info:
        s.resume({"name": "ada", "age": "old"})
    assert isinstance(info.value, ValueError)
    assert info.value.errors[0]["loc"] == ("age",)
    assert s.resumable
    assert s.resume({"name": "ada", "age": "36"}) == Done(Person(name="ada", age=36))


def test_run_returns_value_and_raises_original() -> None:
    """run returns the value; an uncaught exception is raised as itself."""
    assert run(Fetch("a"), handler({Fetch: lambda e: e.key * 2})) == "aa"
    err = KeyError("nope")

    def boom(e: Fetch) -> str:
        raise err

    with pytest.raises(KeyError) as info:
        run(Fetch("a"), handler({Fetch: boom}))
    assert info.value is err


def test_run_refuses_suspension() -> None:
    """run() on a computation that suspends says to use start()."""
    with pytest.raises(UnhandledSuspension, match="start"):
        run(wizard(), State(None))


def test_throw_outcome_keeps_traceback() -> None:
    """A native exception becomes Throw(error) with the original object and traceback."""

    def comp() -> Generator[Any, Any, None]:
        yield Fetch("x")
        raise ValueError("bad")

    out = start(comp(), handler({Fetch: lambda e: ""}))
    assert isinstance(out, Throw)
    assert isinstance(out.error, ValueError)
    assert str(out.error) == "bad"
    assert out.error.__traceback__ is not None


def test_missing_handler_names_effect_and_scope() -> None:
    """The error names the effect and lists the handlers in scope."""
    with pytest.raises(MissingHandlerError) as info:
        run(Fetch("k"), State(0))
    msg = str(info.value)
    assert "Fetch(key='k')" in msg
    assert "State" in msg


def test_missing_handler_is_catchable_in_computation() -> None:
    """A missing handler is thrown at the yield, where try/except can catch it."""

    def comp() -> Generator[Any, Any, str]:
        try:
            yield Fetch("k")
        except MissingHandlerError:
            return "caught"
        return "no"

    assert run(comp()) == "caught"


def test_handler_key_error_is_not_missing_handler() -> None:
    """A handler raising KeyError is reported as that KeyError, not as a missing handler."""

    def lookup(e: Fetch) -> str:
        return {}[e.key]  # type: ignore[no-any-return]

    with pytest.raises(KeyError) as info:
        run(Fetch("k"), handler({Fetch: lookup}))
    assert not isinstance(info.value, MissingHandlerError)


def test_async_handler_under_sync_runner() -> None:
    """An awaitable from a handler under the sync runner raises a clear error."""

    async def fetch(e: Fetch) -> str:
        return "x"

    with pytest.raises(AsyncHandlerError, match="arun"):
        run(Fetch("k"), handler({Fetch: fetch}))


@pytest.mark.anyio
async def test_arun_awaits_async_handlers(anyio_backend: str) -> None:
    """arun awaits what async handlers return, on asyncio and trio."""

    async def fetch(e: Fetch) -> str:
        await anyio.lowlevel.checkpoint()
        return e.key.upper()

    def comp() -> Generator[Any, Any, str]:
        a = yield Fetch("a")
        b = yield from Fetch("b")
        return a + b

    with anyio.fail_after(5):
        assert await arun(comp(), handler({Fetch: fetch})) == "AB"


@pytest.mark.anyio
async def test_astart_aresume(anyio_backend: str) -> None:
    """astart/aresume drive suspensions with async handlers in between."""

    async def fetch(e: Fetch) -> str:
        await anyio.lowlevel.checkpoint()
        return "v"

    def comp() -> Generator[Any, Any, str]:
        answer = yield Yield("q")
        fetched = yield Fetch(answer)
        return f"{answer}:{fetched}"

    with anyio.fail_after(5):
        s = await astart(comp(), handler({Fetch: fetch}))
        assert isinstance(s, Suspend)
        assert await s.aresume("a") == Done("a:v")


@pytest.mark.anyio
async def test_async_handler_exception_thrown_into_computation(anyio_backend: str) -> None:
    """An exception raised by an awaited handler is catchable at the yield."""

    async def fetch(e: Fetch) -> str:
        raise LookupError(e.key)

    def comp() -> Generator[Any, Any, str]:
        try:
            yield Fetch("z")
        except LookupError as err:
            return f"caught {err}"
        return "no"

    assert await arun(comp(), handler({Fetch: fetch})) == "caught z"


def test_used_generator_is_rejected() -> None:
    """Running a finished generator again is a clear error, not a silent None."""
    gen = wizard()
    start(gen, State(None))
    with pytest.raises(TypeError, match="already started"):
        start(gen, State(None))


@pytest.mark.anyio
async def test_dropped_suspension_runs_cleanup_hooks_innermost_first() -> None:
    """A `Suspend` dropped without resume or cancel still exits its handler scopes: their
    `cleanup` hooks run, innermost first (sync and async runners alike); `output` does not."""
    events: list[str] = []

    class Tracked(Handler):
        def __init__(self, name: str) -> None:
            self.name = name

        def output(self, value: Any) -> Any:
            events.append(f"output {self.name}")
            return value

        def cleanup(self) -> None:
            events.append(f"cleanup {self.name}")

    def comp() -> Generator[Any, Any, Any]:
        return (yield from with_handler(Yield("?"), Tracked("inner")))

    sync = start(comp(), Tracked("outer"))
    assert isinstance(sync, Suspend)
    assert events == []
    del sync
    assert events == ["cleanup inner", "cleanup outer"]

    events.clear()
    suspended = await astart(comp(), Tracked("outer"))
    assert isinstance(suspended, Suspend)
    assert events == []
    del suspended
    assert events == ["cleanup inner", "cleanup outer"]
