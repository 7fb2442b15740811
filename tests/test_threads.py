"""Worker threads of plain `Call` functions (`effects._threads`): on asyncio the pool of this
process, on trio anyio's threads; the same semantics either way."""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import warnings
from collections.abc import Generator
from typing import Any

import anyio
import anyio.to_thread
import pytest

from effects import Call, arun
from effects._threads import POOL_THREADS, run_in_thread, to_loop

pytestmark = pytest.mark.anyio

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("TAG", default="unset")


async def test_a_call_sees_the_callers_context_and_not_its_async_library(
    anyio_backend: str,
) -> None:
    """The function runs in a copy of the caller's context (context variables such as the
    idempotency key reach it), in a thread where no async library runs."""
    import sniffio

    def probe() -> tuple[str, str | None, int]:
        try:
            library: str | None = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = None
        return TAG.get(), library, threading.get_ident()

    TAG.set("from the task")
    tag, library, thread = await arun(Call(probe))
    assert (tag, library) == ("from the task", None)
    assert thread != threading.get_ident()


async def test_to_loop_runs_on_the_loop_thread(anyio_backend: str) -> None:
    """`to_loop` hands work back to the event loop from a Call's thread, on both backends;
    from a thread that is neither it is a RuntimeError."""
    loop_thread = threading.get_ident()

    def in_call() -> int:
        return to_loop(threading.get_ident)

    assert await arun(Call(in_call)) == loop_thread
    foreign: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(foreign, lambda: to_loop(int)))
    t.start()
    await anyio.to_thread.run_sync(t.join)
    assert len(foreign) == 1
    assert isinstance(foreign[0], RuntimeError)


def _catch(errors: list[BaseException], fn: Any) -> None:
    try:
        fn()
    except BaseException as err:
        errors.append(err)


async def test_many_blocking_calls_share_the_pool_without_deadlock(anyio_backend: str) -> None:
    """More blocking functions than threads: at most `POOL_THREADS` (anyio's limit on trio is
    the same) run at once, the others wait for a thread, and all complete."""
    lock = threading.Lock()
    running = peak = 0
    gate = threading.Event()

    def blocking(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == POOL_THREADS:
                gate.set()
        assert gate.wait(10)
        with lock:
            running -= 1
        return i

    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await run_in_thread(lambda: blocking(i)))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(POOL_THREADS + 20):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(POOL_THREADS + 20))
    assert peak == POOL_THREADS


async def test_a_cancelled_call_waits_for_its_function_unless_abandoned(
    anyio_backend: str,
) -> None:
    """Cancelled while its function runs: the caller is released only once the function
    returned; with `abandon` (a Call's timeout) at once, the thread finishing unobserved."""
    for abandon in (False, True):
        started, release = threading.Event(), threading.Event()
        events: list[str] = []

        def blocking(
            events: list[str] = events,
            release: threading.Event = release,
            started: threading.Event = started,
        ) -> None:
            started.set()
            assert release.wait(10)
            events.append("returned")

        async def call(
            abandon: bool = abandon, blocking: Any = blocking, events: list[str] = events
        ) -> None:
            try:
                await run_in_thread(blocking, abandon=abandon)
            finally:
                events.append("caller released")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await anyio.to_thread.run_sync(started.wait)
                tg.cancel_scope.cancel()
                if abandon:
                    await anyio.wait_all_tasks_blocked()
                    assert events == ["caller released"]
                release.set()
        if not abandon:
            assert events == ["returned", "caller released"]


def steps() -> Generator[Any, Any, list[int]]:
    out = []
    for i in range(3):
        out.append((yield Call(lambda i=i: i * 2)))
    return out


async def test_calls_in_a_computation(anyio_backend: str) -> None:
    assert await arun(steps()) == [0, 2, 4]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_pool_of_its_own() -> None:
    """A process forked after Calls ran (a pre-forking server) runs its own Calls: the pool
    inherited from the parent, whose threads the child does not have, is not used."""
    assert anyio.run(arun, Call(int, "1")) == 1  # the parent's pool exists now
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock the child:
        # what this test checks does not.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            signal.alarm(5)  # a child that hangs dies, and says nothing
            value = anyio.run(arun, Call(int, "7"))
            os.write(write, str(value).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    assert got == "7"
