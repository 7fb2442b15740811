"""Cancellation: a BaseException delivered at the suspension point; cleanup innermost first."""

from __future__ import annotations

import gc
import sys
from collections.abc import Generator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from effects import (
    Cancellation,
    Cancelled,
    Effect,
    Handler,
    Suspend,
    Throw,
    UnhandledSuspension,
    Yield,
    YieldDuringCancellation,
    arun,
    astart,
    handler,
    run,
    start,
    with_handler,
)


class Boom(Exception):
    pass


class Note(Effect[None]):
    text: str


def _recorder() -> tuple[list[str], Handler]:
    notes: list[str] = []
    return notes, handler({Note: lambda e: notes.append(e.text)})


def test_cancel_runs_finally_innermost_first_with_effects() -> None:
    """finally blocks run innermost first and may still perform effects."""
    notes, h = _recorder()

    def inner() -> Generator[Any, Any, None]:
        try:
            yield Yield("waiting")
        finally:
            yield Note("inner cleanup")

    def outer() -> Generator[Any, Any, None]:
        try:
            yield from inner()
        finally:
            yield Note("outer cleanup")

    s = start(outer(), h)
    assert isinstance(s, Suspend)
    assert s.cancel("user left") == Cancelled("user left")
    assert notes == ["inner cleanup", "outer cleanup"]


def test_cancellation_is_not_an_exception() -> None:
    """`except Exception` does not swallow a cancellation."""
    caught: list[BaseException] = []

    def comp() -> Generator[Any, Any, str]:
        try:
            yield Yield("?")
        except Exception as err:
            caught.append(err)
        return "swallowed"

    s = start(comp())
    assert isinstance(s, Suspend)
    assert s.cancel() == Cancelled(None)
    assert caught == []
    assert not issubclass(Cancellation, Exception)


def test_yield_during_cancellation_is_an_error() -> None:
    """Cleanup cannot wait for input: a Yield while cancelling raises a clear error."""

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Yield("first")
        finally:
            yield Yield("second")

    s = start(comp())
    assert isinstance(s, Suspend)
    out = s.cancel()
    assert isinstance(out, Throw)
    assert isinstance(out.error, YieldDuringCancellation)


def test_handler_cleanup_runs_on_cancel_in_scope_order() -> None:
    """Handler scopes are cleaned up innermost first after the computation's finally."""
    order: list[str] = []

    class Named(Handler):
        def __init__(self, name: str) -> None:
            self.name = name

        def cleanup(self) -> None:
            order.append(self.name)

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Yield("?")
        finally:
            order.append("finally")

    s = start(with_handler(comp(), Named("inner")), Named("outer"))
    assert isinstance(s, Suspend)
    s.cancel()
    assert order == ["finally", "inner", "outer"]


def test_abandoned_suspension_is_closed_quietly() -> None:
    """Dropping a suspension closes its generators without 'ignored GeneratorExit' noise."""
    closed: list[str] = []

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Yield("?")
        finally:
            closed.append("closed")
            yield Note("cannot run")  # no one answers: must not blow up

    s = start(comp(), _recorder()[1])
    assert isinstance(s, Suspend)
    del s
    assert closed == ["closed"]


def test_abandoned_suspension_with_nested_cleanups_is_closed_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nested `finally` blocks that perform effects (in one generator and across `yield from`)
    are all entered when a suspension is dropped, and nothing is left for the garbage
    collector to close noisily (found by tests/test_properties.py)."""
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
    closed: list[str] = []

    def inner() -> Generator[Any, Any, None]:
        try:
            try:
                yield Yield("?")
            finally:
                closed.append("inner 1")
                yield Note("cannot run")
        finally:
            closed.append("inner 2")
            yield Note("cannot run either")

    def comp() -> Generator[Any, Any, None]:
        try:
            yield from inner()
        finally:
            closed.append("outer")
            yield Note("nor this")

    s = start(comp(), _recorder()[1])
    assert isinstance(s, Suspend)
    del s
    gc.collect()
    assert closed == ["inner 1", "inner 2", "outer"]
    assert unraisable == []


def test_run_closes_a_computation_that_suspends_at_once() -> None:
    """`run` refuses a computation that suspends and closes it right away: its cleanup has
    run when `UnhandledSuspension` arrives, even while the exception (whose traceback holds
    the dropped run) is kept (found by tests/test_properties.py)."""
    closed: list[str] = []

    def comp() -> Generator[Any, Any, None]:
        try:
            try:
                yield Yield("?")
            finally:
                closed.append("inner")
                yield Note("cannot run")
        finally:
            closed.append("outer")

    with pytest.raises(UnhandledSuspension) as caught:
        run(comp(), _recorder()[1])
    assert caught.value.__traceback__ is not None
    assert closed == ["inner", "outer"]


def test_dropped_run_whose_cleanup_raises_still_closes_outer_scopes() -> None:
    """A `finally` that raises while an abandoned run is closed does not stop the outer frames
    and handler scopes from being closed; the error is reported once, as Python reports a
    failing generator cleanup (found by tests/test_properties.py)."""
    cleaned: list[str] = []

    class Tracked(Handler):
        def cleanup(self) -> None:
            cleaned.append("scope")

    def inner() -> Generator[Any, Any, None]:
        try:
            yield Yield("?")
        finally:
            raise Boom("cleanup failed")

    def outer() -> Generator[Any, Any, None]:
        try:
            yield inner()  # a frame of its own
        finally:
            cleaned.append("outer finally")

    s = start(with_handler(outer(), Tracked()))
    assert isinstance(s, Suspend)
    cont, _ = s._take(None, validate=False)
    with pytest.raises(Boom, match="cleanup failed"):
        cont.discard()
    assert cleaned == ["outer finally", "scope"]


@pytest.mark.anyio
async def test_task_group_cancel_unwinds_with_async_cleanup(anyio_backend: str) -> None:
    """Cancelling the task running arun unwinds the computation; cleanup may still await."""
    notes: list[str] = []
    started = anyio.Event()

    async def note(e: Note) -> None:
        await anyio.lowlevel.checkpoint()
        notes.append(e.text)

    async def wait_forever(e: Effect[Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    class Forever(Effect[None]):
        pass

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Forever()
        finally:
            yield Note("cleaned up")

    h = handler({Note: note, Forever: wait_forever})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(arun, comp(), h)
            await started.wait()
            tg.cancel_scope.cancel()
    assert notes == ["cleaned up"]


@pytest.mark.anyio
async def test_async_cancel_at_suspension(anyio_backend: str) -> None:
    """acancel delivers the cancellation at the suspension point under the async driver."""
    notes: list[str] = []

    async def note(e: Note) -> None:
        notes.append(e.text)

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Yield("?")
        finally:
            yield Note("async cleanup")

    s = await astart(comp(), handler({Note: note}))
    assert isinstance(s, Suspend)
    assert await s.acancel("r") == Cancelled("r")
    assert notes == ["async cleanup"]


def test_abandoned_suspension_runs_handler_cleanup() -> None:
    """Dropping a suspension still runs the cleanup hooks of its handler scopes."""
    cleaned: list[str] = []

    class Tracked(Handler):
        def cleanup(self) -> None:
            cleaned.append("cleanup")

    s = start(Yield("?"), Tracked())
    assert isinstance(s, Suspend)
    del s
    assert cleaned == ["cleanup"]
