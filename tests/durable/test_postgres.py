"""The same runner on PostgreSQL (asyncpg): guarded writes between processes, recovery after
SIGKILL, LISTEN/NOTIFY for subscribers in other processes, concurrent migration."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from anyio.streams.buffered import BufferedByteReceiveStream

from effects import ConflictError, Done
from effects.durable import DurableRunner, Run, RunStatus
from effects.durable._schema import SCHEMA_VERSION
from effects.durable._store import Store
from fixtures.postgres import PostgresServer

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"
STEPS = 10


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.fixture
def counter(tmp_path: Path, flows: ModuleType) -> str:
    path = str(tmp_path / "counter.db")
    flows.init_counter(path)
    return path


async def test_a_run_on_postgres(pg_database_url: str, flows: ModuleType, counter: str) -> None:
    """Start, suspend, cold resume in a new runner, finish: the same code as on SQLite."""
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as runner:
        run = await runner.start(flows.flow(STEPS, counter))
        assert run.status is RunStatus.SUSPENDED
        assert [r.id for r in await runner.list("suspended")] == [run.id]
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as runner:
        run = await runner.resume(run.id, 5)
        assert run.outcome == Done(sum(range(STEPS)) + 5)
        log = await runner.get_log(run.id)
    assert len(log.entries) == 2 * STEPS + 1
    _, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == list(range(STEPS))


async def test_two_processes_resume_the_same_run(
    pg_database_url: str, flows: ModuleType, counter: str
) -> None:
    """Two worker processes answer the same step at the same moment: exactly one wins, the
    other gets ConflictError, and the step's effects happen once."""
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as runner:
        run = await runner.start(flows.flow(STEPS, counter))
    args = [
        sys.executable, str(WORKERS / "worker.py"), "--db", pg_database_url,
        "--action", "resume", "--run-id", run.id, "--answer", "7",
        "--revision", str(run.revision), "--ready",
    ]  # fmt: skip
    with anyio.fail_after(30):
        async with (
            await anyio.open_process([*args, "--owner", "p1"]) as one,
            await anyio.open_process([*args, "--owner", "p2"]) as two,
        ):
            outputs = [BufferedByteReceiveStream(p.stdout) for p in (one, two)]  # type: ignore[arg-type]
            for out in outputs:
                assert await out.receive_until(b"\n", 100) == b"ready"
            for p in (one, two):  # both are up: let them race
                assert p.stdin is not None
                await p.stdin.send(b"go\n")
            reports = []
            for p, out in zip((one, two), outputs, strict=True):
                line = await out.receive_until(b"\n", 10_000)
                assert await p.wait() == 0
                reports.append(json.loads(line))
    assert sorted(next(iter(r)) for r in reports) == ["conflict", "status"]
    [won] = [r for r in reports if "status" in r]
    assert won["status"] == "done"
    attempts, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == list(range(STEPS))
    assert len(attempts) == STEPS


async def test_concurrent_resumes_from_two_runners(
    pg_database_url: str, flows: ModuleType, counter: str
) -> None:
    """Two runners in one process answer the same revision; PostgreSQL picks one."""
    async with (
        DurableRunner(pg_database_url, handlers=flows.HANDLERS, owner="a") as a,
        DurableRunner(pg_database_url, handlers=flows.HANDLERS, owner="b") as b,
    ):
        run = await a.start(flows.flow(2, counter))
        results: list[Run | BaseException] = []

        async def answer(r: DurableRunner) -> None:
            try:
                results.append(await r.resume(run.id, 1, revision=run.revision))
            except ConflictError as err:
                results.append(err)

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, a)
            tg.start_soon(answer, b)
    assert sorted(type(x).__name__ for x in results) == ["ConflictError", "Run"]
    _, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == [0, 1]


async def test_subscribers_see_changes_made_by_other_processes(
    pg_database_url: str, flows: ModuleType, counter: str
) -> None:
    """A subscriber follows a run that another runner (its own connections: the changes only
    reach it through NOTIFY) resumes to the end."""
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as other:
        run = await other.start(flows.flow(STEPS, counter))
    async with (
        DurableRunner(pg_database_url, handlers=flows.HANDLERS) as watcher,
        DurableRunner(pg_database_url, handlers=flows.HANDLERS) as other,
    ):
        seen: list[Run] = []
        with anyio.fail_after(20):
            async with watcher.subscribe(run.id) as updates:
                first = await updates.__anext__()
                assert first.status is RunStatus.SUSPENDED
                await other.resume(run.id, 1)
                async for update in updates:
                    seen.append(update)
    assert seen[-1].status is RunStatus.DONE
    assert [s.revision for s in seen] == sorted({s.revision for s in seen})


async def test_concurrent_migrations(pg_database_url: str) -> None:
    """Three processes' worth of stores open a fresh database at once; the schema is created
    once (the advisory lock serializes them)."""
    stores: list[Store] = []

    async def open_one() -> None:
        stores.append(await Store.open(pg_database_url))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(open_one)
    try:
        async with stores[0].engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT version FROM effects_schema_version"))).all()
        assert [r[0] for r in rows] == [SCHEMA_VERSION]
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize("kill_at", ["after:2", "before:7"])
async def test_recover_after_sigkill_on_postgres(
    pg_database_url: str, flows: ModuleType, counter: str, forked: Any, kill_at: str
) -> None:
    """A worker killed mid-run is recovered from PostgreSQL; effects applied once."""
    forked("--db", pg_database_url, "--counter", counter, "--run-id", "k1", "--owner", "w",
           "--action", "start", "--answer", "3", "--kill-at", kill_at)  # fmt: skip
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS, owner="w") as runner:
        [run] = await runner.recover()
        if run.status is RunStatus.SUSPENDED:
            run = await runner.resume(run.id, 3)
        assert run.outcome == Done(sum(range(STEPS)) + 3)
    _, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == list(range(STEPS))


async def test_subscriptions_survive_a_server_restart(
    postgres_server: PostgresServer, pg_database_url: str, flows: ModuleType, counter: str
) -> None:
    """After PostgreSQL restarts, the runner listens again (with backoff) and every
    subscription re-reads its run: a change made while the LISTEN was down arrives, and so do
    later changes, through NOTIFY again."""
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as other:
        first = await other.start(flows.flow(2, counter), run_id="first")
        second = await other.start(flows.flow(2, counter), run_id="second")
    async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as watcher:
        with anyio.fail_after(45):
            async with watcher.subscribe("first") as one, watcher.subscribe("second") as two:
                assert (await one.__anext__()).revision == first.revision
                assert (await two.__anext__()).revision == second.revision
                await anyio.to_thread.run_sync(postgres_server.restart)
                async with DurableRunner(pg_database_url, handlers=flows.HANDLERS) as other:
                    # Likely before the watcher is back: it learns of it by re-reading.
                    await other.resume("first", 1)
                    async for update in one:
                        last = update
                    assert last.status is RunStatus.DONE
                    # The watcher has re-read, so it listens again: this arrives by NOTIFY.
                    await other.resume("second", 1)
                    async for update in two:
                        last = update
                    assert last.status is RunStatus.DONE
