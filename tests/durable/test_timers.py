"""The durable timer: `Clock.sleep` records its wake-up time before it waits, so a restarted run
sleeps only what is left; a long sleep releases the run (`sleeping`) and whichever runner is
open when it is due continues it."""

from __future__ import annotations

import gc
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from collections.abc import Generator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from effects import (
    Clock,
    ConflictError,
    Done,
    Suspend,
    Yield,
    computation,
    handler,
    start,
    with_handler,
)
from effects.durable import Checkpoint, DurableRunner, EffectLogger, Log, Run, RunStatus, _schema
from effects.durable._cli import main
from effects.testing import AdvancingClock

WORKERS = Path(__file__).parent / "workers"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(WORKERS))
    import timer_flows

    timer_flows.CLEANUPS.clear()
    return timer_flows


def napping() -> Generator[Any, Any, str]:
    yield Clock.sleep(10)
    return (yield Yield("awake"))


def _timer_entries(log: Log) -> list[Any]:
    return [e for e in log.entries if e.effect == "effects.durable.Timer"]


# -- the logger, with a fake clock ------------------------------------------------------------


def test_the_wake_up_time_is_checkpointed_before_the_sleep_begins() -> None:
    persisted: list[Log] = []
    clock = AdvancingClock(T0)
    out = start(
        with_handler(napping(), EffectLogger(checkpoints=True)),
        handler({Checkpoint: lambda e: persisted.append(e.log)}),
        clock,
    )
    assert type(out) is Suspend
    # The checkpoint taken before the sleep holds the timer as its last entry.
    (before,) = persisted
    assert [e.effect for e in before.entries] == ["effects.durable.Timer"]
    assert before.entries[0].result == {"wake_at": (T0 + timedelta(seconds=10)).timestamp()}
    assert clock.elapsed == timedelta(seconds=10)


def test_a_restart_during_the_sleep_sleeps_only_what_is_left() -> None:
    persisted: list[Log] = []
    start(
        with_handler(napping(), EffectLogger(checkpoints=True)),
        handler({Checkpoint: lambda e: persisted.append(e.log)}),
        AdvancingClock(T0),
    )
    cut_off = persisted[0]  # what the store holds if the process died during the sleep
    later = AdvancingClock(T0 + timedelta(seconds=4))
    out = start(with_handler(napping(), EffectLogger(cut_off)), later)
    assert type(out) is Suspend
    assert later.elapsed == timedelta(seconds=6)
    log: Log = out.data[EffectLogger]
    # The recorded deadline was reused, not set again.
    assert _timer_entries(log) == cut_off.entries
    assert [e.effect for e in log.entries] == [
        "effects.durable.Timer",
        "effects.Sleep",
        "effects.Yield",
    ]


def test_a_restart_after_the_deadline_does_not_sleep() -> None:
    persisted: list[Log] = []
    start(
        with_handler(napping(), EffectLogger(checkpoints=True)),
        handler({Checkpoint: lambda e: persisted.append(e.log)}),
        AdvancingClock(T0),
    )
    much_later = AdvancingClock(T0 + timedelta(hours=1))
    out = start(with_handler(napping(), EffectLogger(persisted[0])), much_later)
    assert type(out) is Suspend
    assert much_later.elapsed == timedelta(0)


def test_a_finished_sleep_replays_without_sleeping() -> None:
    out = start(with_handler(napping(), EffectLogger()), AdvancingClock(T0))
    assert type(out) is Suspend
    log = Log.model_validate_json(out.data[EffectLogger].model_dump_json())
    clock = AdvancingClock(T0 + timedelta(seconds=1))
    again = start(with_handler(napping(), EffectLogger(log)), clock)
    assert type(again) is Suspend
    assert clock.elapsed == timedelta(0)


def test_a_log_of_the_previous_version_with_a_plain_sleep_entry_still_replays() -> None:
    # Before durable timers a sleep was one entry, recorded when it was over.
    legacy = Log.model_validate(
        {
            "entries": [
                {
                    "seq": 0,
                    "effect": "effects.Sleep",
                    "fingerprint": '{"seconds":10}',
                    "args": {"seconds": 10},
                    "status": "done",
                },
                {
                    "seq": 1,
                    "effect": "effects.Yield",
                    "fingerprint": '{"value":"awake","input":null}',
                    "args": {"value": "awake", "input": None},
                    "status": "pending",
                },
            ]
        }
    )
    clock = AdvancingClock(T0)
    out = start(with_handler(napping(), EffectLogger(legacy)), clock)
    assert type(out) is Suspend
    assert out.value == "awake"
    assert clock.elapsed == timedelta(0)


def test_a_different_sleep_diverges_at_its_timer() -> None:
    out = start(with_handler(napping(), EffectLogger()), AdvancingClock(T0))
    log: Log = out.data[EffectLogger]  # type: ignore[union-attr]

    def other() -> Generator[Any, Any, str]:
        yield Clock.sleep(11)
        return (yield Yield("awake"))

    again = start(with_handler(other(), EffectLogger(log)), AdvancingClock(T0))
    assert type(again).__name__ == "Throw"
    assert again.error.position == 0  # type: ignore[union-attr]


# -- the runner -------------------------------------------------------------------------------


def _db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


@pytest.mark.anyio
async def test_a_long_sleep_releases_the_run_and_the_timer_loop_continues_it(
    tmp_path: Path, flows: ModuleType
) -> None:
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=0) as runner:
        run = await runner.start(flows.nap(1.0))  # checked below before it wakes, even under load
        assert run.status is RunStatus.SLEEPING
        assert run.outcome is None
        assert run.wake_at is not None
        assert run.lease_owner is None
        # Held by no process: no step object, and the computation's frames are gone.
        assert run.id not in runner._steps
        assert flows.CLEANUPS == ["finally"]  # dropped as in a shutdown: Python cleanup only
        stored = await runner.get(run.id)
        assert stored.status is RunStatus.SLEEPING
        assert stored.wake_at == run.wake_at
        with pytest.raises(ConflictError, match="sleeping until"):
            await runner.resume(run.id, None)
        with anyio.fail_after(10):
            async with runner.subscribe(run.id) as runs:
                async for seen in runs:
                    last = seen
        assert last.outcome == Done("woke")
        assert datetime.now(UTC) >= run.wake_at
        log = await runner.get_log(run.id)
        assert len(_timer_entries(log)) == 1


class Marker:
    """A local of the sleeping computation, to see whether anything still holds it."""


MARKERS: list[weakref.ref[Marker]] = []


@computation(name="timer_keeps_a_local")
def keeps_a_local() -> Generator[Any, Any, str]:
    local = Marker()
    MARKERS.append(weakref.ref(local))
    yield Clock.sleep(3600)
    return type(local).__name__


@pytest.mark.anyio
async def test_a_sleeping_run_holds_no_memory(tmp_path: Path) -> None:
    MARKERS.clear()
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=1) as runner:
        run = await runner.start(keeps_a_local())
        assert run.status is RunStatus.SLEEPING
        gc.collect()
        assert MARKERS[0]() is None
        assert runner._steps == {}
        cancelled = await runner.cancel(run.id, "no more")
        assert cancelled.status is RunStatus.CANCELLED


def test_the_cli_shows_a_sleeping_run_and_does_not_wake_it(
    tmp_path: Path, flows: ModuleType
) -> None:
    async def sleep_one() -> str:
        # No timer loop: under load it could wake the run before this runner closes.
        db = _db(tmp_path)
        async with DurableRunner(db, handlers=Clock(), sleep_in_memory=0, timers=False) as runner:
            run = await runner.start(flows.nap(0.01))
            assert run.status is RunStatus.SLEEPING
            return run.id

    run_id = anyio.run(sleep_one, backend="asyncio")
    out = io.StringIO()
    assert main(["runs", "show", "--db", _db(tmp_path), run_id, "--json"], out=out) == 0
    shown = json.loads(out.getvalue())["run"]
    assert shown["status"] == "sleeping"
    assert shown["wake_at"] is not None
    out = io.StringIO()
    assert main(["runs", "list", "--db", _db(tmp_path), "--status", "sleeping"], out=out) == 0
    assert run_id in out.getvalue()
    # The run was due while the CLI ran: a tool without the run's handlers leaves it alone.
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        (status,) = db.execute("SELECT status FROM effects_runs WHERE id = ?", (run_id,)).fetchone()
    assert status == "sleeping"


@pytest.mark.anyio
async def test_cancelling_a_sleeping_run_runs_its_cleanup(
    tmp_path: Path, flows: ModuleType
) -> None:
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=0) as runner:
        run = await runner.start(flows.nap(3600))
        assert run.status is RunStatus.SLEEPING
        flows.CLEANUPS.clear()
        run = await runner.cancel(run.id, "enough")
        assert run.status is RunStatus.CANCELLED
        assert flows.CLEANUPS == ["finally"]


@pytest.mark.anyio
async def test_a_short_sleep_stays_in_memory(tmp_path: Path, flows: ModuleType) -> None:
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=5) as runner:
        run = await runner.start(flows.nap(0.05))
        assert run.outcome == Done("woke")
        log = await runner.get_log(run.id)
    assert [e.effect for e in log.entries] == [
        "effects.Call",
        "effects.durable.Timer",
        "effects.Sleep",
        "effects.Call",
    ]


@pytest.mark.anyio
async def test_recover_continues_due_sleeping_runs(tmp_path: Path, flows: ModuleType) -> None:
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=0) as runner:
        run = await runner.start(flows.nap_then_ask(0.01))
        # Released, then due almost at once; recover() does what the timer loop would.
        assert run.status in (RunStatus.SLEEPING, RunStatus.SUSPENDED)
        await runner.recover()
        with anyio.fail_after(10):
            async with runner.subscribe(run.id) as runs:
                async for seen in runs:
                    if seen.status is RunStatus.SUSPENDED:
                        break
        run = await runner.resume(run.id, "yes")
        assert run.outcome == Done("yes")


# -- real processes ---------------------------------------------------------------------------


def _worker(tmp_path: Path, run_id: str, seconds: float, in_memory: float) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(WORKERS), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, timer_flows; timer_flows.cli(sys.argv[1:])",
            _db(tmp_path),
            run_id,
            str(seconds),
            str(in_memory),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stored_timer(path: Path, run_id: str) -> float | None:
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(path)) as db:
            rows = db.execute(
                "SELECT entry FROM effects_log WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
    except sqlite3.OperationalError:  # the worker has not created the tables yet
        return None
    for (text,) in rows:
        entry = json.loads(text)
        if entry["effect"] == "effects.durable.Timer":
            return float(entry["result"]["wake_at"])
    return None


@pytest.mark.anyio
async def test_kill_9_during_a_sleep_then_recovery_sleeps_only_the_rest(
    tmp_path: Path, flows: ModuleType
) -> None:
    worker = _worker(tmp_path, "nap", 3.0, 10.0)  # held in memory: the process sleeps
    try:
        wake_at = None
        deadline = time.monotonic() + 30
        while wake_at is None:  # the checkpointed timer is the signal; the deadline a net
            assert time.monotonic() < deadline, worker.stderr.read() if worker.stderr else ""
            assert worker.poll() is None
            wake_at = _stored_timer(tmp_path / "runs.db", "nap")
            await anyio.sleep(0.01)
        # Killed about a second before the sleep is over (the moment is the scenario).
        await anyio.sleep(max(0.0, wake_at - 1.0 - time.time()))
        assert worker.poll() is None
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL
    async with DurableRunner(
        _db(tmp_path), handlers=Clock(), owner="timer-worker", sleep_in_memory=10
    ) as runner:
        began = time.time()
        (run,) = await runner.recover()
        ended = time.time()
        log = await runner.get_log("nap")
    assert run.outcome == Done("woke")
    # The recorded deadline was reused: recovery slept until it (about a second), not
    # another 3 s.
    assert ended >= wake_at
    assert ended - began < 2.0
    assert [e.result for e in _timer_entries(log)] == [{"wake_at": wake_at}]


@pytest.mark.anyio
async def test_a_sleeping_run_wakes_in_another_runner_process(
    tmp_path: Path, flows: ModuleType
) -> None:
    worker = _worker(tmp_path, "elsewhere", 0.5, 0.0)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert json.loads(out) == {"status": "sleeping"}  # the worker exited: nobody holds it
    async with DurableRunner(_db(tmp_path), handlers=Clock()) as runner:
        with anyio.fail_after(10):
            async with runner.subscribe("elsewhere") as runs:
                async for seen in runs:
                    last = seen
        log = await runner.get_log("elsewhere")
    assert last.outcome == Done("woke")
    assert last.lease_owner is None
    assert len(_timer_entries(log)) == 1


@pytest.mark.anyio
async def test_a_run_sleeps_and_wakes_on_postgres_by_the_database_clock(
    pg_database_url: str, flows: ModuleType
) -> None:
    async with DurableRunner(pg_database_url, handlers=Clock(), sleep_in_memory=0) as runner:
        db_now = await runner.store.clock()
        assert abs(db_now - time.time()) < 5
        run = await runner.start(flows.nap(0.3))
        assert run.status is RunStatus.SLEEPING
        assert run.wake_at is not None
        assert run.wake_at.timestamp() >= db_now + 0.3
    async with DurableRunner(pg_database_url, handlers=Clock()) as other:
        with anyio.fail_after(10):
            async with other.subscribe(run.id) as runs:
                async for seen in runs:
                    last = seen
    assert last.outcome == Done("woke")


@pytest.mark.anyio
async def test_a_database_of_the_previous_schema_is_migrated(
    tmp_path: Path, flows: ModuleType
) -> None:
    async with DurableRunner(_db(tmp_path), handlers=Clock()) as runner:
        done = await runner.start(flows.nap(0))
    # Back to the schema before timers: no wake_at column, stamped the version before.
    [timers] = [m for m in _schema.MIGRATIONS if m.description.startswith("durable timers")]
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("DROP INDEX effects_runs_wake")
        db.execute("ALTER TABLE effects_runs DROP COLUMN wake_at")
        db.execute("DELETE FROM effects_schema_version")
        db.execute(
            "INSERT INTO effects_schema_version VALUES (?, 'created', 0)", (timers.version - 1,)
        )
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=0) as runner:
        assert (await runner.get(done.id)).outcome == Done("woke")
        run = await runner.start(flows.nap(3600))
        assert run.status is RunStatus.SLEEPING
        assert (await runner.get(run.id)).wake_at == run.wake_at


@pytest.mark.anyio
async def test_an_in_memory_store_sleeps_in_memory(flows: ModuleType) -> None:
    async with DurableRunner("sqlite+aiosqlite://", handlers=Clock(), sleep_in_memory=0) as runner:
        run = await runner.start(flows.nap(0.05))
    assert run.outcome == Done("woke")


# -- the kill-point harness -------------------------------------------------------------------

TIMER_KILLS = [f"{when}:{i}" for i in range(3) for when in ("before", "after")]


@pytest.mark.anyio
@pytest.mark.parametrize("kill_at", TIMER_KILLS)
async def test_a_sleeping_flow_killed_at_any_point_recovers_each_effect_once(
    tmp_path: Path, forked: Any, monkeypatch: pytest.MonkeyPatch, kill_at: str
) -> None:
    """Killed before or after each external effect of a flow that sleeps between them, the
    run is finished by `recover()`: every effect applied once, every timer set once (a
    restart reuses the recorded wake-up time)."""
    monkeypatch.syspath_prepend(str(WORKERS))
    import crash_flows

    counter = str(tmp_path / "counter.db")
    crash_flows.init_counter(counter)
    forked("--db", _db(tmp_path), "--counter", counter, "--run-id", "t1", "--owner", "w1",
           "--flow", "timer", "--action", "start", "--kill-at", kill_at)  # fmt: skip
    async with DurableRunner(_db(tmp_path), handlers=crash_flows.HANDLERS, owner="w1") as runner:
        before = [e.result for e in _timer_entries(await runner.get_log("t1"))]
        [run] = await runner.recover()
        log = await runner.get_log("t1")
    assert run.outcome == Done(0 + 1 + 2)
    _, applied = crash_flows.read_counter(counter)
    assert sorted(i for _, i in applied) == [0, 1, 2]
    timers = [e.result for e in _timer_entries(log)]
    assert len(timers) == 2
    assert timers[: len(before)] == before
    assert [e.effect for e in log.entries].count("effects.Sleep") == 2


@pytest.mark.anyio
async def test_a_cancel_flagged_while_the_run_was_released_is_not_lost(
    tmp_path: Path, flows: ModuleType
) -> None:
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=0) as runner:
        run = await runner.start(flows.nap(3600))
        assert run.status is RunStatus.SLEEPING
        flows.CLEANUPS.clear()
        # The flag a cancel from another process set on the running step just before it
        # released the run (the release keeps it).
        with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
            db.execute("UPDATE effects_runs SET cancel_requested = 1 WHERE id = ?", (run.id,))
        with anyio.fail_after(10):
            async with runner.subscribe(run.id) as runs:
                async for seen in runs:
                    last = seen
        assert last.status is RunStatus.CANCELLED
        assert flows.CLEANUPS == ["finally"]


@pytest.mark.anyio
async def test_resume_right_after_a_suspension_is_seen(tmp_path: Path, flows: ModuleType) -> None:
    """A caller that sees a step's suspension committed in the store and answers at once is
    not refused while the runner is still putting the step away (it used to get ConflictError
    "running a step in this process": seen under load right after recover())."""
    async with DurableRunner(_db(tmp_path), handlers=Clock(), sleep_in_memory=60) as runner:
        # Hold the step just after its suspension is committed, before the runner goes on.
        store = runner.store
        checkpoint = store.checkpoint
        committed, held = anyio.Event(), anyio.Event()

        async def holding_checkpoint(*args: Any, **kwargs: Any) -> Any:
            result = await checkpoint(*args, **kwargs)
            if kwargs["changes"].get("status") == RunStatus.SUSPENDED.value:
                committed.set()
                await held.wait()
            return result

        store.checkpoint = holding_checkpoint  # type: ignore[method-assign]
        run = await runner.start(flows.nap_then_ask(0.0), wait=False)
        results: list[Run] = []
        with anyio.fail_after(10):
            await committed.wait()
            assert (await runner.get(run.id)).status is RunStatus.SUSPENDED

            async def answer() -> None:
                results.append(await runner.resume(run.id, "yes"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(answer)
                await anyio.wait_all_tasks_blocked()  # the answer waits for the put-away
                held.set()
        assert results[0].outcome == Done("yes")
