"""Leases and owners: a run's step is never executed by two processes at once while both
live — not during a long plain `Call`, not between two processes given the same `owner`, not
when the hosts' clocks disagree."""

from __future__ import annotations

import importlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from effects import Call, ConfigurationError, Done, Yield, computation
from effects.durable import DurableRunner, RunStatus

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"
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


def worker(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The test worker in a process of its own (see workers/worker.py)."""
    return subprocess.run(
        [sys.executable, str(WORKERS / "worker.py"), "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sql(db: str, statement: str, *params: Any) -> list[Any]:
    """Run SQL on the store file directly (as another host's runner would have written)."""
    path = db.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(statement, params).fetchall()


async def test_one_live_runner_per_owner(db: str) -> None:
    """While a runner holds owner "shop", another runner with that owner refuses to start,
    in this process and in another one; once it stops, the owner is free at once."""
    async with DurableRunner(db, owner="shop"):
        with pytest.raises(ConfigurationError, match="owner 'shop' is held by another Durable"):
            async with DurableRunner(db, owner="shop"):
                pass  # pragma: no cover
        other = await anyio.to_thread.run_sync(
            lambda: worker(db, "--action", "recover", "--owner", "shop")
        )
        assert other.returncode != 0
        message = f"owner 'shop' is held by process {os.getpid()} on {socket.gethostname()}"
        assert message in other.stderr
        async with DurableRunner(db, owner="shop-2"):  # another owner is fine
            pass
    other = await anyio.to_thread.run_sync(
        lambda: worker(db, "--action", "recover", "--owner", "shop")
    )
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout) == {"recovered": []}


async def test_a_dead_owner_on_another_host_blocks_until_its_claim_expires(db: str) -> None:
    """A claim by a process on another host (which this host cannot probe) keeps the owner
    until it expires by the database's clock; then a successor starts."""
    async with DurableRunner(db, owner="setup"):
        pass  # creates the schema
    sql(
        db,
        "INSERT INTO effects_owners VALUES ('shop', 'their-token', 'elsewhere', 4242, 0, "
        "(julianday('now') - 2440587.5) * 86400.0 + 30)",
    )
    with pytest.raises(ConfigurationError, match=r"process 4242 on elsewhere.*expires in 30 s"):
        async with DurableRunner(db, owner="shop"):
            pass  # pragma: no cover
    # Its heartbeat stopped 30 s ago (as far as the database's clock is concerned):
    sql(db, "UPDATE effects_owners SET expires = expires - 31 WHERE owner = 'shop'")
    async with DurableRunner(db, owner="shop") as runner:
        holder = await runner.store.owner_holder("shop")
        assert holder is not None
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    assert sql(db, "SELECT count(*) FROM effects_owners WHERE owner = 'shop'") == [(0,)]


async def test_a_runner_whose_owner_was_taken_stops_taking_work(db: str) -> None:
    """If another runner took this runner's owner (this one was frozen for longer than its
    lease), the heartbeat notices and the runner refuses further work."""
    async with DurableRunner(db, owner="shop", lease=LEASE) as runner:
        sql(db, "UPDATE effects_owners SET token = 'theirs', pid = 4242 WHERE owner = 'shop'")
        errors: list[str] = []
        with anyio.fail_after(10):
            while not errors:  # polled: the heartbeat runs in its own thread
                try:
                    await runner.list()
                except ConfigurationError as err:
                    errors.append(str(err))
                else:
                    await anyio.sleep(LEASE / 10)
        assert "owner 'shop' was taken by process 4242" in errors[0]
    # The claim is the other runner's: this one did not delete it on the way out.
    assert sql(db, "SELECT token FROM effects_owners") == [("theirs",)]


@computation(name="leases.loop_blocker", version=1)
def loop_blocker() -> Generator[Any, Any, str]:
    result: str = yield Call(block_the_loop)
    return result


async def block_the_loop() -> str:
    """An async function that blocks its event loop (a bug, but one that happens)."""
    CALLS.append("blocker")
    STARTED.set()
    assert RELEASE.wait(20), "never released"
    return "unblocked"


async def test_the_heartbeat_does_not_need_the_event_loop(db: str) -> None:
    """User code that blocks the runner's event loop for longer than the lease does not
    stop the lease heartbeat (it runs in a thread of its own): another runner's `recover()`
    leaves the run alone."""
    seen: list[float | None] = []
    found: list[list[Any]] = []

    async def other() -> None:
        async with DurableRunner(db, owner="b", lease=LEASE) as b:
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(STARTED.wait)
                while len(set(seen)) < 3:  # renewals while the loop of "a" is blocked
                    seen.append((await b.store.get("r1")).lease_expires)
                    await anyio.sleep(LEASE / 10)
            found.append(await b.recover())

    def other_process() -> None:
        try:
            anyio.run(other, backend="asyncio")
        finally:
            RELEASE.set()

    async with DurableRunner(db, owner="a", lease=LEASE) as a:
        # Started from a plain thread: the test's own event loop is about to be blocked.
        thread = threading.Thread(target=other_process)
        thread.start()
        run = await a.start(loop_blocker(), run_id="r1")
        await anyio.to_thread.run_sync(thread.join)
    assert found == [[]]
    assert run.outcome == Done("unblocked")
    assert CALLS == ["blocker"]


def heartbeats() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("effects-heartbeat-")]


async def test_the_heartbeat_thread_lives_with_its_runner(db: str) -> None:
    """A runner's heartbeat thread starts on entry and ends on exit; an in-memory SQLite store
    (which no other process, nor the heartbeat's own connection, can see) has none."""
    assert heartbeats() == []
    async with DurableRunner(db, owner="a"):
        assert heartbeats() == ["effects-heartbeat-a"]
    assert heartbeats() == []
    async with DurableRunner("sqlite+aiosqlite://", owner="m") as memory:
        assert heartbeats() == []
        run = await memory.start(slow_answer(), run_id="m1")
        assert (await memory.resume(run.id, 3)).outcome == Done(3)


@computation(name="leases.answer", version=1)
def slow_answer() -> Generator[Any, Any, int]:
    answer: int = yield Yield("number?", input=int)
    return answer


async def test_a_killed_holder_does_not_block_its_successor(
    db: str, tmp_path: Path, forked: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner killed with SIGKILL mid-step leaves its claim of owner "w" behind; on the same
    host its process is known dead, so a successor with that owner starts at once (without
    waiting for the claim to expire) and recovers the run."""
    monkeypatch.syspath_prepend(str(WORKERS))
    flows = importlib.import_module("crash_flows")
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    forked("--db", db, "--counter", counter, "--run-id", "k1", "--owner", "w",
           "--action", "start", "--answer", "3", "--kill-at", "after:2")  # fmt: skip
    [(pid, expires_in)] = sql(
        db,
        "SELECT pid, expires - (julianday('now') - 2440587.5) * 86400.0 FROM effects_owners "
        "WHERE owner = 'w'",
    )
    assert pid != os.getpid()
    assert expires_in > 5  # still live by the database's clock
    async with DurableRunner(db, handlers=flows.HANDLERS, owner="w") as runner:
        [run] = await runner.recover()
        assert run.id == "k1"
        assert sql(db, "SELECT pid FROM effects_owners WHERE owner = 'w'") == [(os.getpid(),)]
