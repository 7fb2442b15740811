"""Leases and owners: a run's step is never executed by two processes at once while both
live — not during a long plain `Call`, not between two processes given the same `owner`, not
when the hosts' clocks disagree."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
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


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, db: str) -> str:
    """The same test on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return db
    pg: str = request.getfixturevalue("pg_database_url")
    return pg


CALLS: list[str] = []
GATES: dict[str, anyio.Event] = {}
STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    GATES.clear()
    STARTED.clear()
    RELEASE.clear()


def blocking_call(name: str) -> str:
    """A plain function that blocks its thread until the test releases it."""
    CALLS.append(name)
    STARTED.set()
    assert RELEASE.wait(20), "never released"
    return name


async def wait_gate(name: str) -> str:
    """An async effect that completes when the test opens gate `name`."""
    CALLS.append(name)
    await GATES[name].wait()
    return name


@computation(name="leases.gated", version=1)
def gated(name: str) -> Generator[Any, Any, str]:
    result: str = yield Call(wait_gate, name)
    return result


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


@contextmanager
def host_clock(offset: float) -> Iterator[None]:
    """This process's wall clock (`time.time`) shifted by `offset` seconds meanwhile, as on a
    host whose clock is wrong; the database's clock is untouched."""
    real = time.time
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: real() + offset)
        yield


async def test_leases_are_judged_by_the_database_clock(url: str) -> None:
    """A runner on a host whose clock is 40 s behind writes leases that are live all the
    same, and a runner on a host 40 s ahead sees live leases as live: `recover()` takes
    neither run and `cancel()` only flags it. (By the hosts' clocks, both leases of 30 s would
    look expired.)"""
    GATES["ahead"], GATES["behind"] = anyio.Event(), anyio.Event()
    async with DurableRunner(url, owner="a") as a, DurableRunner(url, owner="late") as late:
        await a.start(gated("ahead"), run_id="r1", wait=False)
        with host_clock(-40):
            await late.start(gated("behind"), run_id="r2", wait=False)
        with host_clock(+40), anyio.fail_after(10):
            async with DurableRunner(url, owner="b") as b:
                assert await b.recover() == []
                flagged = await b.cancel("r1", "stop")
                assert (flagged.status, flagged.cancel_requested) == (RunStatus.RUNNING, True)
                assert flagged.lease_owner == "a"
        GATES["ahead"].set()
        GATES["behind"].set()
        with anyio.fail_after(10):
            for runner, run_id in ((a, "r1"), (late, "r2")):
                async with runner.subscribe(run_id) as updates:
                    async for run in updates:
                        last = run
                # r1's flag reaches its owner at the checkpoint after the call (which ends
                # the run, done); either way each step ran in its own runner only.
                assert last.status in (RunStatus.DONE, RunStatus.CANCELLED)
    assert sorted(CALLS) == ["ahead", "behind"]
