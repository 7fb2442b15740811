"""Group commit: checkpoints of concurrent runs share transactions, on a real SQLite file and
on real PostgreSQL; one run's conflict or error stays its own; a process killed inside or
right after a group's transaction leaves all of the group's checkpoints or none."""

from __future__ import annotations

import importlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import asyncpg
import pytest
import sqlalchemy as sa

from effects import Call, ConflictError, computation
from effects.durable import DurableRunner, RunStatus
from effects.durable._log import LogEntry, make_entry
from effects.durable._store import LogRows, RunRow, Store

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"
RUNS = 20
STEPS = 10


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A real SQLite file, or a fresh database on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    else:
        yield request.getfixturevalue("pg_database_url")


def row(run_id: str) -> RunRow:
    return RunRow(run_id, "t.flow", 1, "{}", "running", None, None, None, None, None, 1,
                  "me", None, False, 1.0, 1.0)  # fmt: skip


def entry(seq: int) -> LogEntry:
    return make_entry(seq, "t.Effect", "fp", {"n": seq}, "done", None)


class Commits:
    """Counts the transactions that wrote checkpoints: on SQLite the COMMITs the store's
    checkpoint connection executed (its statement trace), on PostgreSQL the distinct
    transaction ids (`xmin`) of the log rows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sqlite = 0
        if store._fast is not None:
            assert store._fast.db is not None
            store._fast.db.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        if statement == "COMMIT":
            self.sqlite += 1

    async def count(self) -> tuple[int, int]:
        """(transactions, log rows) written so far."""
        async with self.store.engine.connect() as conn:
            rows = await conn.scalar(sa.text("SELECT count(*) FROM effects_log"))
            if self.store.dialect == "sqlite":
                return self.sqlite, rows
            xids = await conn.scalar(sa.text("SELECT count(DISTINCT xmin::text) FROM effects_log"))
        return xids, rows


async def trivial(i: int) -> int:
    """An external effect that takes no time: its checkpoint is all the work."""
    return i


class Gate:
    """Holds every run at its first effect until `expected` runs arrived (their starts, one
    insert each, are spread out; from then on they all run at once)."""

    expected = 0
    arrived = 0
    open: anyio.Event | None = None

    @classmethod
    def reset(cls, expected: int) -> None:
        cls.expected, cls.arrived, cls.open = expected, 0, anyio.Event()


async def gate() -> None:
    """The first effect of `trivial_flow`: wait until all runs are there."""
    assert Gate.open is not None
    Gate.arrived += 1
    if Gate.arrived == Gate.expected:
        Gate.open.set()
    await Gate.open.wait()


@computation(name="group.trivial", version=1)
def trivial_flow(steps: int) -> Generator[Any, Any, int]:
    """After the gate, `steps` trivial external effects, each checkpointed before the next."""
    yield Call(gate)
    total = 0
    for i in range(steps):
        total += yield Call(trivial, i)
    return total


async def test_concurrent_runs_share_commits(url: str) -> None:
    """20 runs of 10 external effects each, started at once: every effect is checkpointed
    before its run goes on, and the 200 checkpoints take far fewer transactions."""
    Gate.reset(RUNS)
    async with DurableRunner(url, owner="w") as runner:
        commits = Commits(runner.store)
        runs: dict[str, Any] = {}

        async def one(k: int) -> None:
            runs[f"g-{k}"] = await runner.start(trivial_flow(STEPS), run_id=f"g-{k}")

        async with anyio.create_task_group() as tg:
            for k in range(RUNS):
                tg.start_soon(one, k)
        assert {r.status for r in runs.values()} == {RunStatus.DONE}
        assert {r.outcome.value for r in runs.values()} == {sum(range(STEPS))}
        transactions, rows = await commits.count()
        assert rows == RUNS * (STEPS + 1)
        # One transaction per checkpoint would be 220 (plus the final writes on SQLite).
        assert transactions <= rows // 2, (transactions, rows)
        for k in range(RUNS):
            log = await runner.get_log(f"g-{k}")
            assert [e.seq for e in log.entries] == list(range(STEPS + 1))


async def test_one_runs_conflict_or_error_leaves_the_others_committed(url: str) -> None:
    """Five checkpoints committed as one group: one with a stale revision gets ConflictError,
    one whose log row already exists gets its integrity error, both writing nothing; the
    other three commit (in one transaction)."""
    store = await Store.open(url)
    try:
        ids = [f"r{k}" for k in range(6)]
        stored = {}
        for run_id in ids:
            await store.insert(row(run_id), lease=30)
            stored[run_id] = LogRows(run_id)
        # r4's entry 0 is in the store already, but its LogRows do not know it.
        await store.checkpoint("r4", revision=1, owner="me", changes={},
                               log=LogRows("r4").diff([entry(0)]))  # fmt: skip
        assert store._group is not None
        before = store._group.groups
        results: dict[str, Any] = {}

        async def checkpoint(run_id: str, revision: int) -> None:
            diff = stored[run_id].diff([entry(0), entry(1)])
            try:
                results[run_id] = await store.checkpoint(
                    run_id, revision=revision, owner="me", changes={"status": "running"},
                    log=diff, lease=30,
                )  # fmt: skip
            except Exception as err:
                results[run_id] = err

        async with anyio.create_task_group() as tg:
            # r0 commits alone at once; the others arrive while it is in flight and make
            # the next group, in which r3 is stale and r4 breaks the log's primary key.
            for run_id in ids:
                tg.start_soon(checkpoint, run_id, {"r3": 7, "r4": 2}.get(run_id, 1))
        assert store._group.groups - before == 2
        assert isinstance(results["r3"], ConflictError)
        assert "expected revision 7, found revision 1" in str(results["r3"])
        error = results["r4"]
        assert isinstance(error, sqlite3.IntegrityError | asyncpg.UniqueViolationError), error
        for run_id in ("r0", "r1", "r2", "r5"):
            assert results[run_id] == (2, False)
        for run_id in ids:
            got, entries = await store.load(run_id)
            if run_id in ("r3", "r4"):
                assert got.revision == {"r3": 1, "r4": 2}[run_id]
                assert [e.seq for e in entries] == ([] if run_id == "r3" else [0])
            else:
                assert (got.revision, [e.seq for e in entries]) == (2, [0, 1])
    finally:
        await store.aclose()


GROUP_KILL_POINTS = [
    (db, point)
    for db in ("sqlite", "postgresql")
    for point in ("group-written:1", "group-committed:1")
]


@pytest.mark.parametrize(("db", "kill_at"), GROUP_KILL_POINTS)
async def test_a_process_killed_at_a_group_commit_keeps_all_or_none(
    request: pytest.FixtureRequest, tmp_path: Path, flows: ModuleType,
    forked: Callable[..., bool], db: str, kill_at: str,
) -> None:  # fmt: skip
    """Four runs checkpoint in groups in a worker process that SIGKILLs itself inside its
    first group's transaction (statements written, not committed) or right after its commit
    (no run told yet). Then every run of the group is at the revision it read (none written)
    or one past it (all written); recovery finishes the four runs with each effect applied
    once, and none attempted more than twice."""
    runs, steps = 4, 6
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        if db == "sqlite"
        else request.getfixturevalue("pg_database_url")
    )
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    assert forked("--db", url, "--counter", counter, "--owner", "w1", "--action", "group",
                  "--run-id", "g", "--runs", str(runs), "--steps", str(steps),
                  "--kill-at", kill_at)  # fmt: skip
    with closing(sqlite3.connect(counter)) as c:
        group = c.execute("SELECT run, revision FROM groups").fetchall()
    assert len(group) >= 2
    ids = [f"g-{k}" for k in range(runs)]
    async with DurableRunner(url, handlers=flows.HANDLERS, owner="w1") as runner:
        after_kill = {run_id: (await runner.get(run_id)).revision for run_id in ids}
        written = 1 if kill_at.startswith("group-committed") else 0
        assert {after_kill[run_id] - revision for run_id, revision in group} == {written}
        recovered = await runner.recover()
        assert sorted(r.id for r in recovered) == ids
        assert {r.status for r in recovered} == {RunStatus.DONE}
        assert {r.outcome.value for r in recovered} == {sum(range(steps))}  # type: ignore[union-attr]
    attempts, applied = flows.read_counter(counter)
    keys = [key for key, _ in applied]
    assert len(keys) == len(set(keys)) == runs * steps
    assert max(Counter(key for key, _ in attempts).values()) <= 2


async def test_a_lone_runs_checkpoint_commits_inline_unless_the_lock_is_taken(
    tmp_path: Path,
) -> None:
    """On SQLite (WAL, synchronous=NORMAL) a run's write that follows its own previous one
    (its creation, then checkpoints) is committed in the event loop's thread, without waiting
    for a lock: while another connection holds the write lock, it waits on the connection's
    thread instead (the loop goes on), and commits once the lock is free."""
    path = tmp_path / "runs.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        assert store._fast is not None
        await store.insert(row("r1"), lease=30)
        rows = LogRows("r1")
        log = [entry(0)]
        revision, _ = await store.checkpoint("r1", revision=1, owner="me", changes={},
                                             log=rows.diff(log))  # fmt: skip
        log.append(entry(1))
        revision, _ = await store.checkpoint("r1", revision=revision, owner="me", changes={},
                                             log=rows.diff(log))  # fmt: skip
        assert store._fast.inline_commits == 2  # the creation went through the thread

        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        done: list[tuple[int, bool]] = []

        async def third() -> None:
            log.append(entry(2))
            done.append(await store.checkpoint("r1", revision=revision, owner="me",
                                               changes={}, log=rows.diff(log)))  # fmt: skip

        async with anyio.create_task_group() as tg:
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()  # the checkpoint waits for the lock, the loop runs
            assert done == []
            holder.execute("COMMIT")
        holder.close()
        assert done == [(4, False)]
        assert store._fast.inline_commits == 2  # the third went through the thread
        _, entries = await store.load("r1")
        assert [e.seq for e in entries] == [0, 1, 2]
    finally:
        await store.aclose()


async def test_runs_created_together_a_taken_id_fails_alone(url: str) -> None:
    """Runs created at the same moment are created in one group; one whose id is taken gets
    ConflictError, the others exist."""
    store = await Store.open(url)
    try:
        await store.insert(row("taken"), lease=30)
        assert store._group is not None
        before = store._group.groups
        errors: dict[str, Exception] = {}

        async def create(run_id: str) -> None:
            try:
                await store.insert(row(run_id), lease=30)
            except ConflictError as err:
                errors[run_id] = err

        async with anyio.create_task_group() as tg:
            for run_id in ("first", "a", "taken", "b"):  # "first" alone, then a group
                tg.start_soon(create, run_id)
        assert store._group.groups - before == 2
        assert list(errors) == ["taken"]
        assert "already exists" in str(errors["taken"])
        for run_id in ("first", "a", "b"):
            got = await store.get(run_id)
            assert (got.revision, got.lease_owner) == (1, "me")
            assert got.lease_expires is not None
    finally:
        await store.aclose()
