"""Task trees of durable runs across processes and restarts: the runner's stored copy
(`effects_task_trees`), `task_tree`, `subscribe_tasks`, the output bound, NOTIFY payloads, and
takeover after kill -9 without duplicated output."""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import sys
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from anyio.streams.buffered import BufferedByteReceiveStream

from effects import Output, Progress, Yield, computation, task
from effects.durable import DurableRunner, RunStatus
from effects.durable._task_store import TASKS_CHANNEL, TaskTrees
from effects.tasks import TaskSnapshot

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The workers' computation, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    module = importlib.import_module("task_flows")
    monkeypatch.setattr(module, "GATE", None)
    return module


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


def texts(tree: TaskSnapshot | None, node: int = 1) -> list[str]:
    assert tree is not None
    return [line.text for line in tree.node(node).lines]


def all_lines(tree: TaskSnapshot) -> list[tuple[int, str]]:
    return sorted((line.seq, line.text) for n in tree.nodes for line in n.lines)


@computation(name="tests.task_trees.asks", version=1)
def asks() -> Generator[Any, Any, str]:
    def body() -> Generator[Any, Any, str]:
        yield Output("before the question")
        answer: str = yield Yield("name?")
        return answer

    return (yield from task("Ask", body()))


@computation(name="tests.task_trees.plain", version=1)
def plain() -> Generator[Any, Any, str]:
    answer: str = yield Yield("name?")
    return answer


@computation(name="tests.task_trees.fails", version=1)
def fails() -> Generator[Any, Any, None]:
    def body() -> Generator[Any, Any, None]:
        yield Progress(1, 4)
        yield Output("about to fail")
        raise ValueError("bad row 7")

    yield from task("Load", body())


@computation(name="tests.task_trees.huge", version=1)
def huge(tasks: int, lines: int, width: int) -> Generator[Any, Any, int]:
    def one(i: int) -> Generator[Any, Any, None]:
        for j in range(lines):
            yield Output(f"{i}.{j} " + "x" * width)

    for i in range(tasks):
        yield from task(f"task {i} " + "t" * width, one(i))
    return tasks


# -- one process: persistence, bounds, final statuses (SQLite) ----------------------------


async def test_finished_tree_and_bounded_output_survive_a_restart(
    sqlite_url: str, flows: ModuleType
) -> None:
    """N+k lines with `task_lines=N`: the stored tree keeps the last N and counts k dropped;
    after the runner is gone, a new one reads the finished run's tree, its root completed."""
    async with DurableRunner(sqlite_url, task_lines=4) as first:
        run = await first.start(flows.numbered(7))
        assert run.status is RunStatus.DONE
    async with DurableRunner(sqlite_url) as second:
        tree = await second.task_tree(run.id)
        assert tree is not None
        assert tree.root.status == "completed"
        assert tree.node(1).title == "Count"
        assert tree.node(1).status == "completed"
        assert texts(tree) == ["line 3", "line 4", "line 5", "line 6"]
        assert tree.node(1).dropped == 3
        assert (tree.node(1).current, tree.node(1).total) == (7, 7)
        # A finished run's subscription yields the stored tree once and ends.
        assert [t.version async for t in second.subscribe_tasks(run.id)] == [tree.version]


async def test_root_follows_a_failed_or_cancelled_run_in_the_store(sqlite_url: str) -> None:
    """The stored tree's root ends as the run did: failed with the run's error, or cancelled
    (with the task left open at the question), after a restart too."""
    async with DurableRunner(sqlite_url) as first:
        failed = await first.start(fails())
        assert failed.status is RunStatus.FAILED
        asked = await first.start(asks())
        assert asked.status is RunStatus.SUSPENDED
        waiting = await first.task_tree(asked.id)
        assert waiting is not None
        assert (waiting.root.status, waiting.node(1).status) == ("running", "running")
        assert texts(waiting) == ["before the question"]
    async with DurableRunner(sqlite_url) as second:
        cancelled = await second.cancel(asked.id, "no")
        assert cancelled.status is RunStatus.CANCELLED
    async with DurableRunner(sqlite_url) as third:
        tree = await third.task_tree(failed.id)
        assert tree is not None
        assert (tree.root.status, tree.root.error) == ("failed", "ValueError: bad row 7")
        assert (tree.node(1).status, tree.node(1).error) == ("failed", "ValueError: bad row 7")
        assert texts(tree) == ["about to fail"]
        tree = await third.task_tree(asked.id)
        assert tree is not None
        assert (tree.root.status, tree.node(1).status) == ("cancelled", "cancelled")
        assert texts(tree) == ["before the question"]


async def test_runs_without_tasks_store_no_tree(sqlite_url: str) -> None:
    """A computation that reports no task, progress or output gets no stored tree (no write
    per run); its subscription ends at once once the run is finished."""
    async with DurableRunner(sqlite_url) as runner:
        run = await runner.start(plain())
        run = await runner.resume(run.id, "ada")
        assert run.status is RunStatus.DONE
    async with DurableRunner(sqlite_url) as runner:
        assert await runner.task_tree(run.id) is None
        assert [t async for t in runner.subscribe_tasks(run.id)] == []
        async with runner.store.engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM effects_task_trees")) == 0


async def test_a_writer_that_lost_the_run_cannot_replace_its_tree(
    sqlite_url: str, flows: ModuleType
) -> None:
    """The store refuses a copy from a writer that neither holds the lease nor committed the
    run's current revision (a process whose run was taken over)."""
    async with DurableRunner(sqlite_url, owner="a") as runner:
        run = await runner.start(flows.numbered(2))
        trees = TaskTrees(runner.store)
        before = await trees.load(run.id)
        assert await trees.save(run.id, "{}", owner="zombie", revision=run.revision - 1) is None
        assert (await trees.load(run.id)).version == before.version
        assert await trees.save(run.id, "{}", owner="zombie", revision=run.revision) is not None


# -- several processes (PostgreSQL) ---------------------------------------------------------


async def until(trees: Any, done: Any) -> TaskSnapshot:
    """Read `trees` until a tree satisfies `done`; return it."""
    async for tree in trees:
        if done(tree):
            return tree
    raise AssertionError("the subscription ended first")


@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
async def test_a_subscriber_on_another_runner_sees_the_tree_live(
    store: str, request: pytest.FixtureRequest, flows: ModuleType
) -> None:
    """A run executing on runner B (its own connections) publishes progress and output; a
    subscriber on runner A sees them while the run waits, then the finished tree. On
    PostgreSQL by NOTIFY, on SQLite by reading the followed runs every `follow_poll`."""
    url = request.getfixturevalue("pg_database_url" if store == "postgresql" else "sqlite_url")
    flows.GATE = anyio.Event()
    async with (
        DurableRunner(url, owner="a") as a,
        DurableRunner(url, owner="b") as b,
    ):
        run = await b.start(flows.numbered(6, 3), wait=False)
        with anyio.fail_after(20):
            async with a.subscribe_tasks(run.id) as trees:
                held = await until(trees, lambda t: len(t.nodes) > 1 and len(t.node(1).lines) == 3)
                assert held.root.status == "running"
                assert held.node(1).current == 3
                assert run.id not in a._steps  # only the store (and NOTIFY) bring it here
                flows.GATE.set()
                seen = [t async for t in trees]
    final = seen[-1]
    assert final.root.status == "completed"
    assert texts(final) == [f"line {i}" for i in range(6)]


def worker_argv(url: str, run_id: str, owner: str, *args: str) -> list[str]:
    code = "import sys, task_flows; task_flows.cli(sys.argv[1:])"
    return [sys.executable, "-c", code, "--db", url, "--run-id", run_id, "--owner", owner, *args]


def worker_env() -> dict[str, str]:
    paths = [str(WORKERS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


async def test_a_run_in_another_process_streams_here_and_survives_restarts(
    pg_database_url: str, flows: ModuleType
) -> None:
    """A run executing in a real second process publishes its tree; this process sees it live
    (at the gate, then to the end); after both runners are gone a third reads the finished
    tree and its last N lines."""
    run_id = "tasks-process-1"
    argv = worker_argv(pg_database_url, run_id, "b", "--lines", "8", "--hold", "5")
    async with (
        await anyio.open_process(argv, env=worker_env()) as worker,
        DurableRunner(pg_database_url, owner="a") as a,
    ):
        assert worker.stdout is not None
        assert worker.stdin is not None
        out = BufferedByteReceiveStream(worker.stdout)
        with anyio.fail_after(30):
            assert await out.receive_until(b"\n", 1000) == b"held"
            async with a.subscribe_tasks(run_id) as trees:
                held = await until(trees, lambda t: len(t.nodes) > 1 and len(t.node(1).lines) == 5)
                await worker.stdin.send(b"go\n")
                final = await until(trees, lambda t: t.root.finished)
            report = json.loads(await out.receive_until(b"\n", 1000))
            assert await worker.wait() == 0
    assert texts(held) == [f"line {i}" for i in range(5)]
    assert report == {"status": "done", "id": run_id}
    assert final.root.status == "completed"
    assert texts(final) == [f"line {i}" for i in range(8)]
    async with DurableRunner(pg_database_url, owner="c") as c:
        stored = await c.task_tree(run_id)
    assert stored == final


async def test_notify_payload_stays_small_for_a_huge_tree(
    pg_database_url: str, postgres_url: str
) -> None:
    """A tree of ~0.9 MB reaches a subscriber on another runner: the notification carries only
    `run_id:version` (PostgreSQL refuses payloads of 8,000 bytes and more)."""
    import asyncpg  # type: ignore[import-untyped]

    payloads: list[str] = []
    raw = await asyncpg.connect(
        sa.make_url(pg_database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    try:
        await raw.add_listener(TASKS_CHANNEL, lambda *args: payloads.append(args[3]))
        async with (
            DurableRunner(pg_database_url, owner="a") as a,
            DurableRunner(pg_database_url, owner="b") as b,
        ):
            run = await b.start(huge(100, 50, 150), wait=False)
            with anyio.fail_after(30):
                async with a.subscribe_tasks(run.id) as trees:
                    final = await until(trees, lambda t: t.root.finished)
    finally:
        await raw.close()
    assert len(final.nodes) == 101
    assert final.node(100).title.startswith("task 99 ")
    assert len(final.node(100).lines) == 50
    size = len(json.dumps(final.to_dict()))
    assert size > 900_000
    assert payloads
    assert all(len(p.encode()) < 8000 and p.startswith(f"{run.id}:") for p in payloads)


@pytest.mark.parametrize("taker", ["b", "c"])
async def test_kill_9_mid_run_then_takeover_in_another_process(
    pg_database_url: str, flows: ModuleType, taker: str
) -> None:
    """Process B runs the run to line 4 and is killed with SIGKILL while it waits; this
    process recovers it — as B's owner restarted, or as another owner once B's lease expired.
    The stored tree goes on from B's copy to the end, written by the taker; no output line
    appears twice in any tree a subscriber saw, and the final tree has each line once."""
    run_id = f"tasks-kill-{taker}"
    argv = worker_argv(pg_database_url, run_id, "b", "--lines", "8", "--hold", "4")
    async with DurableRunner(pg_database_url, owner="a") as a:
        async with await anyio.open_process(argv, env=worker_env()) as worker:
            assert worker.stdout is not None
            out = BufferedByteReceiveStream(worker.stdout)
            with anyio.fail_after(30):
                assert await out.receive_until(b"\n", 1000) == b"held"
                async with a.subscribe_tasks(run_id) as trees:
                    before = await until(
                        trees, lambda t: len(t.nodes) > 1 and len(t.node(1).lines) == 4
                    )
                os.kill(worker.pid, signal.SIGKILL)
                assert await worker.wait() == -signal.SIGKILL
        stored = await TaskTrees(a.store).load(run_id)
        assert stored.tree == before
        assert stored.run_status == "running"
        assert await writer(a, run_id) == "b"
        if taker != "b":
            # B's lease runs out (30 s by the database's clock): end it now instead of waiting.
            async with a.store.engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE effects_runs SET lease_expires = 0 WHERE id = :id"),
                    {"id": run_id},
                )
    # The restarted owner "b" (another process than the dead one) takes the run back at once;
    # another owner takes it once its lease has expired.
    async with (
        DurableRunner(pg_database_url, owner="watcher") as watcher,
        DurableRunner(pg_database_url, owner=taker) as b,
    ):
        with anyio.fail_after(30):
            async with watcher.subscribe_tasks(run_id) as trees:
                first = await trees.__anext__()
                assert first == before
                async with anyio.create_task_group() as tg:
                    tg.start_soon(b.recover)
                    seen = [t async for t in trees]
        assert (await b.get(run_id)).status is RunStatus.DONE
        assert await writer(b, run_id) == taker
    for tree in seen:
        lines = all_lines(tree)
        assert len({text for _, text in lines}) == len(lines), lines
    final = seen[-1]
    assert final.root.status == "completed"
    assert texts(final) == [f"line {i}" for i in range(8)]
    # The recovered tree was rebuilt from the log: B's lines keep their sequence numbers.
    assert final.node(1).lines[:4] == before.node(1).lines
    async with DurableRunner(pg_database_url, owner="c") as c:
        assert await c.task_tree(run_id) == final


async def writer(runner: DurableRunner, run_id: str) -> str | None:
    """The owner that wrote the run's stored tree last."""
    async with runner.store.engine.connect() as conn:
        owner = await conn.scalar(
            sa.text("SELECT owner FROM effects_task_trees WHERE run_id = :id"), {"id": run_id}
        )
    return None if owner is None else str(owner)


async def test_a_queued_run_worked_elsewhere_shows_its_tree(
    pg_database_url: str, flows: ModuleType
) -> None:
    """A run enqueued on runner A and executed by a worker (runner B's `work`) publishes its
    tree: A's subscriber sees it live at the gate and to the end."""
    flows.GATE = anyio.Event()
    async with (
        DurableRunner(pg_database_url, owner="a") as a,
        DurableRunner(pg_database_url, owner="b") as b,
    ):
        run = await a.enqueue(flows.numbered(5, 2), queue="imports")
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(functools.partial(b.work, ["imports"]))
                async with a.subscribe_tasks(run.id) as trees:
                    held = await until(
                        trees, lambda t: len(t.nodes) > 1 and len(t.node(1).lines) == 2
                    )
                    flows.GATE.set()
                    final = await until(trees, lambda t: t.root.finished)
                tg.cancel_scope.cancel()
    assert texts(held) == ["line 0", "line 1"]
    assert final.root.status == "completed"
    assert texts(final) == [f"line {i}" for i in range(5)]


async def test_a_damaged_stored_tree_reads_as_none(sqlite_url: str, flows: ModuleType) -> None:
    """A stored tree that is not a tree (edited by hand) does not break readers: no tree."""
    async with DurableRunner(sqlite_url) as runner:
        run = await runner.start(flows.numbered(2))
        async with runner.store.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE effects_task_trees SET tree = '{\"nodes\": 1}'"))
        assert await runner.task_tree(run.id) is None
        assert [t async for t in runner.subscribe_tasks(run.id)] == []


async def test_subscriptions_to_a_run_without_a_tree_end_with_the_run(
    pg_database_url: str, flows: ModuleType
) -> None:
    """A run that reports nothing: a subscription on its own runner and one on another runner
    yield nothing and end when the run ends."""
    async with (
        DurableRunner(pg_database_url, owner="a") as a,
        DurableRunner(pg_database_url, owner="b") as b,
    ):
        run = await b.start(plain())
        with anyio.fail_after(20):
            async with a.subscribe_tasks(run.id) as there, b.subscribe_tasks(run.id) as here:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(b.resume, run.id, "ada")
                    assert [t async for t in there] == []
                    assert [t async for t in here] == []
