"""Crashes: a worker process SIGKILLs itself at an exact point of a durable run; a new runner
recovers the run and every side effect turns out performed exactly once."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from effects import Cancelled, InterruptedEffect, Throw
from effects.durable import DurableRunner, Queue, RunStatus

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite, asyncpg) run on asyncio only."""
    return "asyncio"


WORKERS = Path(__file__).parent / "workers"
STEPS = 10
BONUS = 100
EXPECTED = sum(range(STEPS)) + BONUS


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


def worker(*args: str, expect_kill: bool = False) -> dict[str, Any]:
    """Run the worker to its end (or its SIGKILL) and return its JSON report."""
    done = subprocess.run(
        [sys.executable, str(WORKERS / "worker.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if expect_kill:
        assert done.returncode == -signal.SIGKILL, done.stderr
        return {}
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


KILL_POINTS = [f"{when}:{i}" for i in range(STEPS) for when in ("before", "after")]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
async def test_recover_after_sigkill_performs_each_effect_once(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None], kill_at: str
) -> None:
    """Killed at any of 20 points (before or after each external effect, in the first step or
    in the step after the answer), the run is finished by `recover()` in another process:
    every effect is applied exactly once and only the one in flight at the kill ran twice."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    common = ("--db", url(tmp_path), "--counter", counter, "--run-id", "r1", "--owner", "w1")
    forked(*common, "--action", "start", "--answer", str(BONUS), "--kill-at", kill_at)

    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="w1") as runner:
        before = await runner.get("r1")
        assert before.status is RunStatus.RUNNING
        recovered = await runner.recover()
        assert [r.id for r in recovered] == ["r1"]
        run = recovered[0]
        if run.status is RunStatus.SUSPENDED:  # killed in the first step
            assert int(kill_at.partition(":")[2]) < STEPS // 2
            run = await runner.resume("r1", BONUS)
        assert run.status is RunStatus.DONE, run.outcome
        assert run.outcome is not None
        assert run.outcome.value == EXPECTED  # type: ignore[union-attr]
        log = await runner.get_log("r1")
        assert all(e.status == "done" for e in log.entries)
        assert await runner.recover() == []  # nothing left to do

    attempts, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == list(range(STEPS))
    assert len({key for key, _ in applied}) == STEPS
    keys = [key for key, _ in attempts]
    repeated = {k for k in keys if keys.count(k) > 1}
    when, _, n = kill_at.partition(":")
    if when == "after":
        # Done but not checkpointed when the process died: the only effect that may run again,
        # with the same idempotency key (so `applied` still holds it once).
        assert repeated == {applied[int(n)][0]}
    else:
        assert repeated == set()


async def test_recover_of_an_interrupted_at_most_once_effect_fails_the_run(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None]
) -> None:
    """Killed inside an at-most-once effect (after its write-ahead checkpoint), the run is not
    retried: recovery fails it with `InterruptedEffect`, and the effect ran once."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    forked("--db", url(tmp_path), "--counter", counter, "--run-id", "c1", "--owner", "w1",
           "--action", "start", "--flow", "charge", "--kill-at", "charge")  # fmt: skip

    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="w1") as runner:
        log = await runner.get_log("c1")
        assert [e.status for e in log.entries] == ["done", "pending"]
        [run] = await runner.recover()
        assert run.status is RunStatus.FAILED
        assert isinstance(run.outcome, Throw)
        assert isinstance(run.outcome.error, InterruptedEffect)
        assert "at-most-once" in str(run.outcome.error)
        stored = await runner.get("c1")
        assert isinstance(stored.outcome, Throw)
        assert isinstance(stored.outcome.error, InterruptedEffect)
    attempts, _ = flows.read_counter(counter)
    assert [k for k, _ in attempts].count("charge") == 1


CANCEL_KILL_POINTS = [
    (action, point)
    for action in ("cancel", "cancel-running")
    for point in ("before:99", "after:99", "before:98", "after:98")
]


@pytest.mark.parametrize(("action", "kill_at"), CANCEL_KILL_POINTS)
async def test_recover_finishes_an_interrupted_cancellation(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None], action: str, kill_at: str
) -> None:
    """Killed while a cancellation's cleanup runs (two external effects, 99 then 98), the run
    is not resumed as if nothing had happened: the cancel was committed before the cleanup
    began, recovery finishes the cleanup from its checkpoints and the run ends `cancelled`
    with its reason. A cleanup effect that completed before the kill is not performed again;
    only the one in flight may be (with the same key). Cancelled at its prompt (`cancel`) or
    while a step waits in a slow effect in the same process (`cancel-running`), where the
    interrupted effect is not performed again either."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    forked("--db", url(tmp_path), "--counter", counter, "--run-id", "x1", "--owner", "w1",
           "--action", action, "--flow", "blocking", "--kill-at", kill_at)  # fmt: skip
    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="w1") as runner:
        stopped = await runner.get("x1")
        assert (stopped.status, stopped.cancel_requested) == (RunStatus.RUNNING, True)
        [run] = await runner.recover()
        assert run.status is RunStatus.CANCELLED
        assert run.outcome == Cancelled("stop")
        assert await runner.recover() == []
    attempts, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == [0, 99, 98]
    keys = [key for key, _ in attempts]
    repeated = {k for k in set(keys) if keys.count(k) > 1}
    when, _, n = kill_at.partition(":")
    in_flight = {key for key, i in applied if i == int(n)}
    assert repeated == (in_flight if when == "after" else set())
    # The slow effect ran once: cancelled at the prompt, it had completed; cancelled while
    # running, it was interrupted, and recovery delivers the cancellation there again.
    assert keys.count("block") == 1


async def test_at_most_once_effect_completes_normally_without_a_crash(
    tmp_path: Path, flows: ModuleType
) -> None:
    """Without a crash the at-most-once effect runs once and its entry ends up done."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    report = worker("--db", url(tmp_path), "--counter", counter, "--run-id", "c2",
                    "--action", "start", "--flow", "charge")  # fmt: skip
    assert report["status"] == "done"
    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS) as runner:
        log = await runner.get_log("c2")
        assert [e.status for e in log.entries] == ["done", "done"]


async def test_recover_leaves_runs_of_live_owners_alone(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None]
) -> None:
    """A running run leased by another owner whose lease has not expired is not taken over;
    the same owner (a restarted process with a stable owner id) takes it at once."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    forked("--db", url(tmp_path), "--counter", counter, "--run-id", "r2", "--owner", "w1",
           "--action", "start", "--kill-at", "before:2")  # fmt: skip
    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="other") as runner:
        assert await runner.recover() == []
        assert (await runner.get("r2")).lease_owner == "w1"
    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="w1") as runner:
        [run] = await runner.recover()
        assert run.status is RunStatus.SUSPENDED  # the first step ends at the Yield
        run = await runner.resume("r2", BONUS)
        assert run.status is RunStatus.DONE


async def test_recover_takes_over_an_expired_lease(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None]
) -> None:
    """With a short lease, another owner recovers the run once the lease has expired."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    forked("--db", url(tmp_path), "--counter", counter, "--run-id", "r3", "--owner", "w1",
           "--action", "start", "--kill-at", "after:0")  # fmt: skip
    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="w2") as runner:
        # Expire the dead worker's lease the way time would (no sleeping in tests).
        await _expire_leases(runner)
        [run] = await runner.recover()
        assert run.status is RunStatus.SUSPENDED
    _, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == list(range(STEPS // 2))


async def _expire_leases(runner: DurableRunner) -> None:
    from effects.durable import _schema

    async with runner.store.engine.begin() as conn:
        await conn.execute(_schema.runs.update().values(lease_expires=0.0))


async def test_worker_kill_points_are_deterministic(tmp_path: Path, flows: ModuleType) -> None:
    """The kill hook fires exactly where asked: after effect 3, four effects were applied."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    worker("--db", url(tmp_path), "--counter", counter, "--run-id", "r4",
           "--action", "start", "--kill-at", "after:3", expect_kill=True)  # fmt: skip
    _, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == [0, 1, 2, 3]


# -- queued runs on PostgreSQL: workers killed, another finishes ----------------------------

QUEUE = "crash"
QUEUE_LIMIT = 2  # the queue's concurrency: runs executing at once, across all processes
QUEUED_RUNS = 5
LEASE = 1.0  # seconds: short, so that the finishing worker takes over soon after the kill
QUEUE_KILL_POINTS = ["claimed", "before:0", "after:0", "before:1", "after:1"]


@pytest.mark.parametrize("kill_at", QUEUE_KILL_POINTS)
async def test_a_worker_killed_in_a_queued_run_another_finishes_it(
    pg_database_url: str, tmp_path: Path, flows: ModuleType, forked: Callable[..., bool],
    kill_at: str,
) -> None:  # fmt: skip
    """A worker process serving a limited queue SIGKILLs itself right after claiming a run,
    or before/after either of a run's two external effects; another worker on the same
    PostgreSQL takes the run over once its lease expires and finishes every run. Each effect
    is applied exactly once, no more runs than the queue's limit ever executed at once, and
    each dedup id still names one run."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    queue = Queue(QUEUE, concurrency=QUEUE_LIMIT)
    names = [f"job-{i}" for i in range(QUEUED_RUNS)]
    async with DurableRunner(
        pg_database_url, handlers=flows.HANDLERS, owner="finisher", lease=LEASE
    ) as runner:
        ids = [
            (await runner.enqueue(flows.queued_flow(counter, n), queue=QUEUE, dedup_id=n)).id
            for n in names
        ]
        assert forked(
            "--db", pg_database_url, "--counter", counter, "--owner", "doomed", "--action",
            "work", "--queue", QUEUE, "--queue-concurrency", str(QUEUE_LIMIT), "--lease",
            str(LEASE), "--kill-at", kill_at,
        )  # fmt: skip
        held = [r for r in await runner.list("running") if r.lease_owner == "doomed"]
        assert held  # the dead worker still holds the run it was killed in
        if kill_at == "claimed":
            assert flows.read_queued(counter) == []  # killed before its first step

        await flows.finish_queue(runner, ids, queue)
        for run_id in ids:
            run = await runner.get(run_id)
            assert run.outcome is not None
            assert run.outcome.value == 1  # type: ignore[union-attr]
        # A retried enqueue of a finished job still finds its one run.
        again = await runner.enqueue(flows.queued_flow(counter, "job-0"), queue=QUEUE,
                                     dedup_id="job-0")  # fmt: skip
        assert again.id == ids[0]

    rows = flows.check_queued_effects(counter, names)
    assert flows.peak_overlap(flows.executions(rows)) <= QUEUE_LIMIT


async def test_a_process_killed_after_an_enqueue_committed_its_retry_finds_the_run(
    pg_database_url: str, tmp_path: Path, flows: ModuleType, forked: Callable[..., bool]
) -> None:
    """A process SIGKILLs itself right after its enqueue with a dedup id committed (its caller
    never heard back). The retried enqueue, from another process, gets that same run; a worker
    then killed between the run's two effects leaves it to another, which finishes it: one run
    for the dedup id, each effect applied once."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    common = ("--db", pg_database_url, "--counter", counter, "--lease", str(LEASE))
    assert forked(*common, "--owner", "client", "--action", "enqueue", "--queue", QUEUE,
                  "--dedup-id", "order-7", "--kill-at", "enqueued")  # fmt: skip
    queue = Queue(QUEUE, concurrency=QUEUE_LIMIT)
    async with DurableRunner(
        pg_database_url, handlers=flows.HANDLERS, owner="finisher", lease=LEASE
    ) as runner:
        (queued,) = await runner.list("queued")
        assert queued.dedup_id == "order-7"
        retried = await runner.enqueue(
            flows.queued_flow(counter, "order-7"), queue=QUEUE, dedup_id="order-7"
        )
        assert retried.id == queued.id
        assert forked(*common, "--owner", "doomed", "--action", "work", "--queue", QUEUE,
                      "--queue-concurrency", str(QUEUE_LIMIT), "--kill-at", "before:1")  # fmt: skip
        await flows.finish_queue(runner, [queued.id], queue)
        runs = [r for r in await runner.list() if r.dedup_id == "order-7"]
        assert [r.id for r in runs] == [queued.id]
    flows.check_queued_effects(counter, ["order-7"])
