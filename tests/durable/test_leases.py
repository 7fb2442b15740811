"""Leases and owners: a run's step is never executed by two processes at once while both
live — not during a long plain `Call`, not between two processes given the same `owner`, not
when the hosts' clocks disagree."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from effects import Call, Done, computation
from effects.durable import DurableRunner, RunStatus

pytestmark = pytest.mark.anyio

LEASE = 0.3  # seconds: short, so that a blocked heartbeat would let the lease expire at once


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only."""
    return "asyncio"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


CALLS: list[str] = []
STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    STARTED.clear()
    RELEASE.clear()


def blocking_call(name: str) -> str:
    """A plain function that blocks its thread until the test releases it."""
    CALLS.append(name)
    STARTED.set()
    assert RELEASE.wait(20), "never released"
    return name


@computation(name="leases.slow", version=1)
def slow() -> Generator[Any, Any, str]:
    result: str = yield Call(blocking_call, "slow")
    return result


def in_other_loop(fn: Callable[[], Any]) -> Any:
    """Run `fn()` (a coroutine function) on an event loop of its own in a worker thread: a
    second process as far as the event loop is concerned."""
    return anyio.to_thread.run_sync(lambda: anyio.run(fn, backend="asyncio"))


async def test_a_long_plain_call_keeps_its_lease(db: str) -> None:
    """A plain `Call` that blocks longer than the lease runs in a worker thread: the runner's
    heartbeat goes on renewing the lease, and another runner's `recover()` leaves the run
    alone; the call runs once."""
    seen: list[float | None] = []

    async def other() -> list[Any]:
        async with DurableRunner(db, owner="b", lease=LEASE) as b:
            with anyio.fail_after(10):
                # Watch the lease being renewed while the call blocks (polling: the renewals
                # happen in another event loop).
                while len(set(seen)) < 3:
                    seen.append((await b.store.get("r1")).lease_expires)
                    await anyio.sleep(LEASE / 10)
            recovered = await b.recover()
            RELEASE.set()
            return recovered

    async with DurableRunner(db, owner="a", lease=LEASE) as a:
        await a.start(slow(), run_id="r1", wait=False)
        await anyio.to_thread.run_sync(STARTED.wait)
        try:
            assert await in_other_loop(other) == []
        finally:
            RELEASE.set()
        async with a.subscribe("r1") as updates:
            async for run in updates:
                last = run
    assert last.status is RunStatus.DONE
    assert last.outcome == Done("slow")
    assert CALLS == ["slow"]
