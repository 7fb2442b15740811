"""`DurableRunner.watch` and `watch_tasks`: following runs and their task trees with callbacks
(no task per follower), in this process on SQLite and across runners on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import anyio
import pytest

from effects import Output, Yield, computation, task
from effects.durable import DurableRunner, Run, RunStatus
from effects.tasks import TaskSnapshot

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@computation(name="tests.watch.asks", version=1)
def asks() -> Generator[Any, Any, str]:
    def body() -> Generator[Any, Any, str]:
        yield Output("before the question")
        answer: str = yield Yield("name?")
        yield Output(f"hello {answer}")
        return answer

    return (yield from task("Ask", body()))


async def until(check: Callable[[], bool]) -> None:
    """Poll `check` (the callbacks come from the runner's own work) with a deadline."""
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await anyio.sleep(0.01)


async def test_a_watch_follows_a_run_to_its_end(tmp_path: Path) -> None:
    """Each newer snapshot once, in order, the final one last; then the watch is closed and
    no longer registered; an older snapshot offered later is not handed over."""
    seen: list[Run] = []
    trees: list[TaskSnapshot] = []
    async with DurableRunner(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}") as runner:
        watch = runner.watch("w1", seen.append)
        tree_watch = runner.watch_tasks("w1", trees.append)
        first = await runner.start(asks(), run_id="w1")
        assert first.status is RunStatus.SUSPENDED
        watch.offer(first)
        done = await runner.resume("w1", "Ada")
        assert done.status is RunStatus.DONE
        await until(lambda: watch.closed)
        assert seen[-1].status is RunStatus.DONE
        assert [r.revision for r in seen] == sorted({r.revision for r in seen})
        assert RunStatus.SUSPENDED in [r.status for r in seen]
        watch.offer(first)  # older: ignored
        assert seen[-1].status is RunStatus.DONE
        assert "w1" not in runner._subscribers
        await until(lambda: tree_watch.ended)
        assert "w1" not in runner._task_subscribers
    lines = [line.text for line in trees[-1].node(1).lines]
    assert lines == ["before the question", "hello Ada"]


async def test_a_closed_watch_hears_nothing(tmp_path: Path) -> None:
    """`close()` stops the callbacks at once."""
    seen: list[Run] = []
    async with DurableRunner(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}") as runner:
        watch = runner.watch("w2", seen.append)
        await runner.start(asks(), run_id="w2")
        count = len(seen)
        watch.close()
        await runner.resume("w2", "Bob")
        assert len(seen) == count
        assert "w2" not in runner._subscribers


async def test_watches_see_another_runners_changes(pg_database_url: str) -> None:
    """On PostgreSQL a watch in one runner gets the snapshots and task trees committed by
    another (LISTEN/NOTIFY), up to the end of the run."""
    seen: list[Run] = []
    trees: list[TaskSnapshot] = []
    async with (
        DurableRunner(pg_database_url, owner="a") as a,
        DurableRunner(pg_database_url, owner="b") as b,
    ):
        watch = b.watch("w3", seen.append)
        tree_watch = b.watch_tasks("w3", trees.append)
        await a.start(asks(), run_id="w3")
        await until(lambda: any(r.status is RunStatus.SUSPENDED for r in seen))
        await a.resume("w3", "Cy")
        await until(lambda: watch.closed and tree_watch.ended)
    assert seen[-1].status is RunStatus.DONE
    assert [line.text for line in trees[-1].node(1).lines] == ["before the question", "hello Cy"]
