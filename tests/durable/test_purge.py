"""Retention: `DurableRunner.purge` and `python -m effects runs purge` remove old runs with their
logs, task trees and output, one transaction per batch; active runs only when asked for, runs a
process executes never."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from effects import Call, ConfigurationError, Yield, computation
from effects.durable import DurableRunner, RunStatus
from effects.tasks import Print

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"
DAY = 86400.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    pg: str = request.getfixturevalue("pg_database_url")
    return pg


def worker(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a worker script of tests/durable/workers to its end (or its SIGKILL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), *sys.path])}
    return subprocess.run(
        [sys.executable, str(WORKERS / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def fail(reason: str) -> None:
    raise RuntimeError(reason)


@computation(name="purge.printing", version=1)
def printing(outcome: str) -> Generator[Any, Any, str]:
    """Prints (a task tree with output), then ends as told: done, failed, waiting."""
    yield Print("working on", outcome)
    if outcome == "failed":
        yield Call(fail, "broken")
    if outcome == "waiting":
        answer: str = yield Yield("go?", input=str)
        return answer
    return outcome


async def rows(url: str) -> dict[str, dict[str, int]]:
    """For each run id: how many rows of it each table holds."""
    async with DurableRunner(url) as runner:
        async with runner.store.engine.connect() as conn:
            out: dict[str, dict[str, int]] = {}
            for table, column in (
                ("effects_runs", "id"),
                ("effects_log", "run_id"),
                ("effects_task_trees", "run_id"),
            ):
                result = await conn.execute(
                    sa.text(f"SELECT {column}, count(*) FROM {table} GROUP BY {column}")
                )
                for run_id, n in result:
                    out.setdefault(run_id, {})[table] = n
    return out


async def age(url: str, run_ids: list[str], seconds: float) -> None:
    """Make runs look last changed `seconds` ago (their `updated_at`, as a clock would)."""
    async with DurableRunner(url) as runner:
        async with runner.store.engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE effects_runs SET updated_at = :t WHERE id = :i"),
                [{"t": time.time() - seconds, "i": i} for i in run_ids],
            )


async def make_runs(url: str) -> None:
    async with DurableRunner(url) as runner:
        for run_id, status in (
            ("done", RunStatus.DONE),
            ("failed", RunStatus.FAILED),
            ("waiting", RunStatus.SUSPENDED),
            ("recent-done", RunStatus.DONE),
        ):
            run = await runner.start(printing(run_id.removeprefix("recent-")), run_id=run_id)
            assert run.status is status
        cancelled = await runner.start(printing("waiting"), run_id="cancelled")
        await runner.cancel(cancelled.id, "no")
    await age(url, ["done", "failed", "waiting", "cancelled"], 40 * DAY)


async def test_purge_removes_old_finished_runs_with_everything(url: str) -> None:
    """Old finished runs go with their log rows and task trees (output); recent runs and
    suspended runs stay; a dry run counts without removing; suspended runs go only when
    asked for by name."""
    await make_runs(url)
    before = await rows(url)
    assert set(before) == {"done", "failed", "waiting", "recent-done", "cancelled"}
    assert all(counts.get("effects_task_trees") == 1 for counts in before.values()), before

    async with DurableRunner(url) as runner:
        assert await runner.purge(older_than=30 * DAY, dry_run=True) == 3
        assert await rows(url) == before
        assert await runner.purge(older_than=50 * DAY) == 0
        assert await runner.purge(older_than=30 * DAY, batch=2) == 3
        with pytest.raises(ConfigurationError, match="older_than=-1 is not a duration"):
            await runner.purge(older_than=-1)
    after = await rows(url)
    assert after == {k: before[k] for k in ("waiting", "recent-done")}

    async with DurableRunner(url) as runner:
        assert await runner.purge(older_than=30 * DAY, status="suspended") == 1
        assert [r.id for r in await runner.list()] == ["recent-done"]
    assert await rows(url) == {"recent-done": before["recent-done"]}


async def test_a_run_executing_is_never_purged(url: str, flows: ModuleType, tmp_path: Path) -> None:
    """A `running` run whose lease is live (its process died a moment ago, or runs it) is kept
    even when running runs are asked for; once its lease expired it may go."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    done = worker("worker.py", "--db", url, "--counter", counter, "--run-id", "r1",
                  "--action", "start", "--kill-at", "before:1", "--lease", "600")  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    await age(url, ["r1"], 40 * DAY)
    async with DurableRunner(url) as runner:
        assert (await runner.get("r1")).status is RunStatus.RUNNING
        assert await runner.purge(older_than=DAY) == 0  # not finished
        assert await runner.purge(older_than=DAY, status=RunStatus.RUNNING) == 0  # leased
        async with runner.store.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE effects_runs SET lease_expires = 0"))
        assert await runner.purge(older_than=DAY, status=["running"]) == 1
        assert await runner.list() == []


async def test_purge_cli(tmp_path: Path) -> None:
    """`runs purge --older-than 30d [--dry-run] [--status S]`: a count, one line; bad
    durations are usage errors."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    await make_runs(url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "effects", "runs", "purge", "--db", url, *args],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip

    dry = cli("--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would purge 3 run(s) (cancelled, done, failed) last changed")
    done = cli("--older-than", "30d", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["purged"], data["dry_run"]) == (3, False)
    waiting = cli("--older-than", "4w", "--status", "suspended")
    assert waiting.stdout.startswith("purged 1 run(s) (suspended)")
    bad = cli("--older-than", "a month")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "python -m effects runs purge: error: argument --older-than: 'a month' is not a "
        "duration (a number and a unit: 90s, 30m, 12h, 30d, 2w) (see --help)"
    ]


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM effects_log", "DELETE FROM effects_task_trees", "DELETE FROM effects_runs"],
)
async def test_kill_mid_purge_leaves_whole_batches(url: str, statement: str) -> None:
    """Killed (-9) inside the second batch's transaction (one run per batch), after any of its
    statements: the first run is gone with all its rows, the second is whole, log and tree
    included."""
    await make_runs(url)
    before = await rows(url)
    done = worker("ops_worker.py", "--db", url, "--action", "purge", "--older-than",
                  str(30 * DAY), "--batch", "1", "--kill-sql", statement,
                  "--kill-nth", "2")  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    after = await rows(url)
    gone = set(before) - set(after)
    assert len(gone) == 1
    assert gone <= {"done", "failed", "cancelled"}
    assert after == {k: v for k, v in before.items() if k not in gone}
    async with DurableRunner(url) as runner:
        assert await runner.purge(older_than=30 * DAY) == 2


async def test_followers_of_a_purged_run_stop(url: str) -> None:
    """A `subscribe` of a waiting run ends when the run is purged: by another runner (another
    process: PostgreSQL NOTIFY) or, on SQLite, which notifies no other process, by this one."""
    await make_runs(url)
    async with DurableRunner(url) as watcher, DurableRunner(url) as operator:
        purger = operator if url.startswith("postgresql") else watcher
        async with watcher.subscribe("waiting") as runs:
            first = await runs.__anext__()
            assert first.status is RunStatus.SUSPENDED
            assert await purger.purge(older_than=30 * DAY, status="suspended") == 1
            with anyio.fail_after(20):
                rest = [run async for run in runs]  # ends: no more changes will come
            assert rest == []
