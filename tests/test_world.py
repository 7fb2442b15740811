"""Fresh, Random, Clock and Call (sync and async, retry, timeout)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import pytest

from effects import (
    AsyncComputation,
    AsyncHandlerError,
    Call,
    Cancelled,
    Clock,
    ConfigurationError,
    Fresh,
    Random,
    Retry,
    arun,
    run,
)
from effects.testing import AdvancingClock


def test_fresh_uuid4_and_uuid7() -> None:
    """Fresh gives new uuids; version 7 ids are time-ordered."""
    a, b = run(Fresh.uuid(), Fresh()), run(Fresh.uuid(), Fresh())
    assert isinstance(a, uuid.UUID)
    assert a != b
    assert a.version == 4
    ids = [run(Fresh.uuid(), Fresh(version=7)) for _ in range(50)]
    assert all(i.version == 7 for i in ids)
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)


def test_seeded_random_is_reproducible() -> None:
    """Random(seed) gives the same sequence in every run."""

    def comp() -> Generator[Any, Any, list[Any]]:
        return [
            (yield Random.random()),
            (yield Random.randint(1, 6)),
            (yield Random.choice("abc")),
        ]

    assert run(comp(), Random(7)) == run(comp(), Random(7))
    values = run(comp(), Random(7))
    assert 0 <= values[0] < 1
    assert 1 <= values[1] <= 6
    assert values[2] in "abc"


def test_real_clock_now_is_utc() -> None:
    """Clock.now() is timezone-aware UTC."""
    now = run(Clock.now(), Clock())
    assert now.tzinfo is UTC
    assert abs(datetime.now(UTC) - now) < timedelta(seconds=5)


@pytest.mark.anyio
async def test_clock_sleep_under_async_runner(anyio_backend: str) -> None:
    """Clock.sleep awaits under the async runner."""
    with anyio.fail_after(5):
        assert await arun(Clock.sleep(0), Clock()) is None


def test_call_sync_function() -> None:
    """Call runs a plain function with its arguments; a result that is a generator stays a
    value."""
    assert run(Call(lambda a, b=0: a + b, 1, b=2)) == 3
    gen = (i for i in range(1))
    assert run(Call(lambda: gen)) is gen


def test_call_retry_with_backoff() -> None:
    """Failures are retried per the policy; the last failure propagates."""
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "up"

    assert run(Call(flaky, retry=Retry(attempts=3, backoff=0))) == "up"
    attempts.clear()
    with pytest.raises(ConnectionError):
        run(Call(flaky, retry=Retry(attempts=2, backoff=0)))
    assert len(attempts) == 2
    assert list(Retry(attempts=4, backoff=1, factor=2, max_delay=3).delays()) == [1, 2, 3]


def test_call_retry_only_listed_errors() -> None:
    """Errors not listed in Retry.on are not retried."""
    attempts: list[int] = []

    def bad() -> None:
        attempts.append(1)
        raise ValueError("not retried")

    with pytest.raises(ValueError, match="not retried"):
        run(Call(bad, retry=Retry(attempts=5, backoff=0, on=(ConnectionError,))))
    assert len(attempts) == 1


def test_call_async_function_needs_async_runner() -> None:
    """An async function under the sync runner is a clear error."""

    async def f() -> int:
        return 1

    with pytest.raises(AsyncHandlerError):
        run(Call(f))


def test_call_timeout_needs_async_runner() -> None:
    """A timeout under the sync runner is a configuration error, not a silent no-op."""
    with pytest.raises(ConfigurationError, match="async runner"):
        run(Call(lambda: 1, timeout=1))


@pytest.mark.anyio
async def test_call_async_with_retry_and_timeout(anyio_backend: str) -> None:
    """Async functions are awaited; a timeout raises TimeoutError and can be retried."""
    calls: list[int] = []

    async def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            await anyio.sleep_forever()
        return "fast"

    with anyio.fail_after(5):
        assert await arun(Call(slow_then_fast, timeout=0.05, retry=Retry(backoff=0))) == "fast"
        with pytest.raises(TimeoutError):
            await arun(Call(anyio.sleep_forever, timeout=0.01))


@pytest.mark.anyio
async def test_call_sync_function_with_timeout_in_worker_thread(anyio_backend: str) -> None:
    """A plain function with a timeout runs in a worker thread under the async runner."""
    with anyio.fail_after(5):
        assert await arun(Call(lambda x: x * 2, 21, timeout=5)) == 42


def test_advancing_clock() -> None:
    """The advancing test clock moves by its tick and by sleeps, never by real time."""
    clock = AdvancingClock(tick=timedelta(seconds=1))

    def comp() -> Generator[Any, Any, tuple[datetime, datetime]]:
        a = yield Clock.now()
        yield Clock.sleep(60)
        b = yield Clock.now()
        return a, b

    a, b = run(comp(), clock)
    assert b - a == timedelta(seconds=61)


@pytest.mark.anyio
async def test_call_plain_function_runs_in_a_worker_thread(anyio_backend: str) -> None:
    """Under the async runner a plain function blocks a worker thread, not the event loop:
    another task goes on while it runs (here: it is that task that lets the call return)."""
    loop_thread = threading.get_ident()
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def blocking() -> str:
        seen.append(threading.get_ident())
        started.set()
        # Without a worker thread this would block the loop, and with it the task below.
        assert release.wait(10)
        return "returned"

    async def other_task() -> None:
        await anyio.to_thread.run_sync(started.wait)
        release.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            assert await arun(Call(blocking)) == "returned"
    assert len(seen) == 1
    assert seen[0] != loop_thread


@pytest.mark.anyio
async def test_cancelling_a_plain_call_waits_for_its_thread(anyio_backend: str) -> None:
    """A cancelled AsyncComputation whose step runs a plain function reports `Cancelled` only
    once the function has returned: a thread cannot be interrupted, and the step must not end
    while its call still runs (documented)."""
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def blocking() -> None:
        started.set()
        assert release.wait(10)
        events.append("returned")

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Call(blocking)
        finally:
            events.append("cleanup")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            runner = await AsyncComputation.start(comp(), task_group=tg, messages=True)
            await anyio.to_thread.run_sync(started.wait)
            await runner.cancel("stop")
            # The cancel is requested, the thread still runs: nothing may be reported yet.
            await anyio.wait_all_tasks_blocked()
            assert events == []
            release.set()
            outcomes = [m.outcome async for m in runner]
    assert events == ["returned", "cleanup"]
    assert type(outcomes[-1]) is Cancelled
