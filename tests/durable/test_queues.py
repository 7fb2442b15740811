"""Durable queues: enqueue, dedup, priority, cancel, limits across real worker processes
(`python -m effects worker`), takeover after kill -9, rate limits, SQLite on one host."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import anyio
import pytest
import sqlalchemy as sa

from effects import Cancelled, ConfigurationError, ConflictError
from effects.durable import DurableRunner, Queue, RunStatus
from effects.durable._store import Store

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite, asyncpg) run on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The workers' computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("queue_flows")


@contextmanager
def worker(db: str, *args: str, block: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A `python -m effects worker` process serving until the block ends (then SIGTERM)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKERS), env.get("PYTHONPATH")]))
    env["QUEUE_FLOWS_BLOCK"] = "1" if block else "0"
    process = subprocess.Popen(
        [sys.executable, "-m", "effects", "worker", "--db", db, "--import", "queue_flows", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "worker OWNER serving ..." once it claims
        if "serving" not in line:
            process.kill()
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"the worker did not start: {line!r} {err}")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("the worker did not stop on SIGTERM") from None


async def until(check: Callable[[], Awaitable[bool]], within: float = 40.0) -> None:
    """Poll `check` until true (the deadline is a safety net, not the expected wait)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "gave up waiting"
        await anyio.sleep(0.05)


def read(path: Path) -> list[tuple[str, str, int, int]]:
    """The lines the runs' calls recorded: (key, kind, pid, time_ns)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, kind, pid, t = line.split()
        out.append((key, kind, int(pid), int(t)))
    return out


def max_overlap(records: list[tuple[str, str, int, int]]) -> int:
    """The most runs between their recorded start and end at any one time."""
    events = sorted(
        (t, 1 if kind == "start" else -1) for _, kind, _, t in records if kind in ("start", "end")
    )
    # Ends sort before starts at equal times (-1 < 1): touching intervals do not overlap.
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


async def count(runner: DurableRunner, status: str) -> int:
    return len(await runner.list(status))


# -- in one process --------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_claim_takes_by_priority_skips_what_it_is_told_and_announces(
    pg_database_url: str, flows: ModuleType, driver: str
) -> None:
    """One claim statement (its text on asyncpg, SQLAlchemy's on psycopg): the queued runs of
    the queue and of the computations named, by priority then age, none of `skip`, each
    taken under the owner's lease (by the database's clock) and announced with a NOTIFY."""
    from effects.durable._queues import claim

    url = sa.make_url(pg_database_url).set(drivername=f"postgresql+{driver}")
    async with DurableRunner(url.render_as_string(hide_password=False), timers=False) as r:
        low = await r.enqueue(flows.job("x", "low"), queue="q", priority=5)
        skipped = await r.enqueue(flows.job("x", "skipped"), queue="q", priority=0)
        high = await r.enqueue(flows.job("x", "high"), queue="q", priority=1)
        await r.enqueue(flows.job("x", "other queue"), queue="elsewhere", priority=0)
        store = r.store
        import asyncpg  # type: ignore[import-untyped]

        heard: list[str] = []
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        listener = await asyncpg.connect(dsn)
        try:
            await listener.add_listener("effects_runs", lambda *a: heard.append(a[-1]))
            got = await claim(
                store,
                Queue("q"),
                owner="me",
                lease=30.0,
                want=5,
                names=[low.name],
                skip=[skipped.id],
                stale=False,
            )
            assert [row.id for row in got.fresh] == [high.id, low.id]
            for row in got.fresh:
                assert (row.status, row.lease_owner, row.revision) == ("running", "me", 2)
                assert row.claimed_at is not None
                assert row.lease_expires is not None
                assert 29 < row.lease_expires - row.claimed_at <= 30.5
            # Nothing left for these names but the skipped run; another name finds nothing.
            again = await claim(
                store, Queue("q"), owner="me", lease=30.0, want=5, names=[low.name], stale=False
            )
            assert [row.id for row in again.fresh] == [skipped.id]
            none = await claim(
                store, Queue("q"), owner="me", lease=30.0, want=5, names=["nope"], stale=False
            )
            assert none.fresh == []

            async def three() -> bool:
                return len(heard) >= 3

            await until(three)
            assert set(heard) == {f"{high.id}:2", f"{low.id}:2", f"{skipped.id}:2"}
        finally:
            await listener.close()


async def test_dedup_returns_the_same_run(pg_database_url: str, flows: ModuleType) -> None:
    async with DurableRunner(pg_database_url, timers=False) as runner:
        first = await runner.enqueue(flows.job("x", "a"), queue="imports", dedup_id="order-1")
        assert first.status is RunStatus.QUEUED
        assert (first.queue, first.dedup_id) == ("imports", "order-1")
        again = await runner.enqueue(flows.job("x", "b"), queue="imports", dedup_id="order-1")
        assert again.id == first.id
        assert again.args == first.args
        # Concurrent enqueues with one dedup id: one run.
        ids: set[str] = set()

        async def one(i: int) -> None:
            run = await runner.enqueue(flows.job("x", str(i)), queue="imports", dedup_id="o-2")
            ids.add(run.id)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
        assert len(ids) == 1
        # The same dedup id on another queue is another run.
        other = await runner.enqueue(flows.job("x", "c"), queue="exports", dedup_id="order-1")
        assert other.id != first.id
        assert await count(runner, "queued") == 3


async def test_priority_order_and_visibility(
    pg_database_url: str, flows: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "records"
    async with DurableRunner(pg_database_url, timers=False) as runner:
        order = [(5, "p5a"), (1, "p1a"), (3, "p3"), (1, "p1b"), (0, "p0"), (5, "p5b")]
        for priority, key in order:
            await runner.enqueue(flows.job(str(path), key), queue="q", priority=priority)
        queued = await runner.list("queued")
        assert [r.priority for r in queued] == [p for p, _ in order]
        async with anyio.create_task_group() as tg:
            # One at a time: the starts are in claim order.
            await tg.start(functools.partial(runner.work, ["q"], concurrency=1))
            await until(lambda: _all_done(runner, 6))
            tg.cancel_scope.cancel()
    starts = [key for key, kind, _, _ in read(path) if kind == "start"]
    assert starts == ["p0", "p1a", "p1b", "p3", "p5a", "p5b"]


async def _all_done(runner: DurableRunner, n: int) -> bool:
    return await count(runner, "done") == n


async def test_cancel_of_a_queued_run_runs_nothing(
    pg_database_url: str, flows: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "records"
    async with DurableRunner(pg_database_url, timers=False) as runner:
        doomed = await runner.enqueue(flows.job(str(path), "doomed"), queue="q")
        cancelled = await runner.cancel(doomed.id, "not needed")
        assert cancelled.status is RunStatus.CANCELLED
        assert cancelled.outcome == Cancelled("not needed")
        later = await runner.enqueue(flows.job(str(path), "later"), queue="q")
        with pytest.raises(ConflictError, match="queued"):
            await runner.resume(later.id, 1)
        async with anyio.create_task_group() as tg:
            await tg.start(runner.work, ["q"])
            await until(lambda: _all_done(runner, 1))
            tg.cancel_scope.cancel()
        assert (await runner.get(doomed.id)).status is RunStatus.CANCELLED
        assert (await runner.get_log(doomed.id)).entries == []
    assert [key for key, *_ in read(path)] == ["later", "later"]


async def test_an_idle_worker_is_woken_by_the_enqueue(
    pg_database_url: str, flows: ModuleType, tmp_path: Path
) -> None:
    """LISTEN/NOTIFY, not polling: a worker polling once a minute claims a run enqueued by
    another runner (another store connection) at once."""
    path = tmp_path / "records"
    async with DurableRunner(pg_database_url, timers=False) as worker_side:
        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(worker_side.work, ["q"], poll=60.0))
            async with DurableRunner(pg_database_url, timers=False) as web:
                run = await web.enqueue(flows.job(str(path), "a"), queue="q")
                async with web.subscribe(run.id) as updates:
                    # A poll would take 60 s, the look for dead workers 7.5 s (lease / 4).
                    with anyio.fail_after(5):
                        statuses = [u.status async for u in updates]
            tg.cancel_scope.cancel()
    # (The worker may claim it before the subscription reads it the first time.)
    assert statuses[-1] is RunStatus.DONE


async def test_queue_definitions_are_checked(pg_database_url: str, flows: ModuleType) -> None:
    with pytest.raises(ConfigurationError):
        Queue("q", concurrency=0)
    with pytest.raises(ConfigurationError):
        Queue("q", rate_limit=(1, 0))
    async with DurableRunner(pg_database_url, timers=False) as runner:
        with pytest.raises(ConfigurationError):
            await runner.enqueue(flows.job("x", "a"), queue="q", priority=2**40)
        with pytest.raises(ConfigurationError):
            await runner.work([])


async def test_rate_limit(pg_database_url: str, flows: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "records"
    period = 0.5
    queue = Queue("rated", rate_limit=(3, period))
    async with DurableRunner(pg_database_url, timers=False) as runner:
        for i in range(9):
            await runner.enqueue(flows.job(str(path), str(i)), queue=queue)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            await tg.start(runner.work, [queue])
            await until(lambda: _all_done(runner, 9))
            tg.cancel_scope.cancel()
        elapsed = time.monotonic() - started
    store = await Store.open(pg_database_url)
    try:
        async with store.engine.connect() as conn:
            claimed = sorted(
                (await conn.execute(sa.text("SELECT claimed_at FROM effects_runs"))).scalars()
            )
    finally:
        await store.aclose()
    # Never more than 3 starts within any period (by the database's clock)...
    for a, b in zip(claimed, claimed[3:], strict=False):
        assert b - a >= period - 1e-6, claimed
    # ...and the worker woke when the window moved, not a poll later.
    assert 2 * period <= elapsed < 2 * period + 1.5


# -- worker processes ------------------------------------------------------------------------


# ~45 s on a loaded two-core machine: the 60 s default left no margin.
@pytest.mark.timeout(180)
async def test_global_limit_across_two_workers_1000_runs(
    pg_database_url: str, flows: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "records"
    n = 1000
    async with DurableRunner(pg_database_url, timers=False) as runner:
        for i in range(n):
            await runner.enqueue(flows.job(str(path), str(i)), queue="imports")
        spec = "imports,concurrency=5"
        with (
            worker(pg_database_url, "--queue", spec, "--concurrency", "5") as a,
            worker(pg_database_url, "--queue", spec, "--concurrency", "5") as b,
        ):
            await until(lambda: _all_done(runner, n), within=50)
        statuses = Counter(r.status for r in await runner.list())
    assert statuses == {RunStatus.DONE: n}
    records = read(path)
    kinds = defaultdict(list)
    for key, kind, _, _ in records:
        kinds[key].append(kind)
    # Every run executed exactly once: one start and one end each.
    assert len(kinds) == n
    assert all(v == ["start", "end"] for v in kinds.values())
    assert max_overlap(records) <= 5
    assert max_overlap(records) >= 2  # the limit is what held them, not a lack of workers
    assert {pid for _, _, pid, _ in records} == {a.pid, b.pid}  # both workers took part


async def test_per_worker_limit(pg_database_url: str, flows: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "records"
    n = 60
    async with DurableRunner(pg_database_url, timers=False) as runner:
        spec = "q,worker_concurrency=2"
        # Both workers serve first (idle: woken by the enqueues' notifications).
        with worker(pg_database_url, "--queue", spec), worker(pg_database_url, "--queue", spec):
            for i in range(n):
                await runner.enqueue(flows.job(str(path), str(i)), queue="q")
            await until(lambda: _all_done(runner, n))
    records = read(path)
    by_pid: dict[int, list[tuple[str, str, int, int]]] = defaultdict(list)
    for r in records:
        by_pid[r[2]].append(r)
    assert len(by_pid) == 2
    assert all(max_overlap(rs) <= 2 for rs in by_pid.values())
    assert len([r for r in records if r[1] == "start"]) == n


async def test_kill_9_of_a_worker_another_takes_over(
    pg_database_url: str, flows: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "records"
    async with DurableRunner(pg_database_url, timers=False) as runner:
        run = await runner.enqueue(flows.side_effect(str(path), "job"), queue="q")
        with worker(pg_database_url, "--queue", "q", "--lease", "1", block=True) as doomed:

            async def blocked() -> bool:
                return any(kind == "blocked" for _, kind, _, _ in read(path))

            await until(blocked)
            doomed.kill()  # SIGKILL in the middle of the run's step
            doomed.wait()
        assert (await runner.get(run.id)).status is RunStatus.RUNNING
        with worker(pg_database_url, "--queue", "q", "--lease", "1"):
            await until(lambda: _all_done(runner, 1))
        finished = await runner.get(run.id)
    assert finished.status is RunStatus.DONE
    kinds = Counter(kind for _, kind, _, _ in read(path))
    # The completed effect ran once; the call in flight at the kill ran again (elsewhere).
    assert kinds == {"effect": 1, "blocked": 1, "end": 1}


async def test_sqlite_within_one_host(flows: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "records"
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    n = 40
    async with DurableRunner(db, timers=False) as runner:
        first = await runner.enqueue(flows.job(str(path), "0"), queue="q", dedup_id="d")
        assert (await runner.enqueue(flows.job(str(path), "x"), queue="q", dedup_id="d")).id == (
            first.id
        )
        for i in range(1, n):
            await runner.enqueue(flows.job(str(path), str(i)), queue="q")
        doomed = await runner.enqueue(flows.job(str(path), "doomed"), queue="q", priority=9)
        await runner.cancel(doomed.id)
        spec = "q,concurrency=2"
        with (
            worker(db, "--queue", spec, "--poll", "0.05"),
            worker(db, "--queue", spec, "--poll", "0.05"),
        ):
            await until(lambda: _all_done(runner, n))
        assert (await runner.get(doomed.id)).status is RunStatus.CANCELLED
    records = read(path)
    assert Counter(kind for _, kind, _, _ in records) == {"start": n, "end": n}
    assert max_overlap(records) <= 2


# -- the command line ------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKERS), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "effects", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    "spec",
    ["q,bogus=1", "q,concurrency=x", "q,concurrency=0", "q,rate=5", "q,rate=0/1", ","],
)
def test_worker_refuses_a_bad_queue_spec(spec: str, tmp_path: Path) -> None:
    done = cli("worker", "--db", str(tmp_path / "runs.db"), "--queue", spec)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--queue" in done.stderr


async def test_runs_list_and_show_a_queued_run(flows: ModuleType, tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    async with DurableRunner(f"sqlite+aiosqlite:///{db}", timers=False) as runner:
        run = await runner.enqueue(flows.job("x", "a"), queue="imports", dedup_id="d", priority=3)
    listed = cli("runs", "list", "--db", db, "--status", "queued")
    assert listed.returncode == 0, listed.stderr
    assert run.id in listed.stdout
    assert "queued" in listed.stdout
    shown = cli("runs", "show", "--db", db, run.id)
    assert "imports (priority 3), dedup id d" in shown.stdout
