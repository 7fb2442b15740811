"""Recovery that one bad run cannot block: values the store cannot hold fail their effect
inside the computation, `recover()` isolates runs, and a run whose recovery keeps failing is
parked with a visible reason until `unpark`."""

from __future__ import annotations

import importlib
import io
import os
import sqlite3
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from effects import (
    Call,
    Cancellation,
    Clock,
    ConfigurationError,
    ConflictError,
    Effect,
    Handler,
    SerializationError,
    Throw,
    Yield,
    computation,
    handler,
)
from effects.durable import DurableRunner, RunStatus, current_run_id
from effects.durable import _schema as schema
from effects.durable._cli import main

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite) run on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


def cli(*args: str) -> str:
    """The command line's output (in a thread: it runs its own event loop)."""
    out = io.StringIO()
    assert main(["runs", *args], out) == 0
    return out.getvalue()


CALLS: list[str] = []

# What `os.fsdecode` returns for a file name that is not UTF-8 (a lone surrogate).
UNDECODABLE = os.fsdecode(b"caf\xe9.txt")


def list_names() -> str:
    CALLS.append("list")
    return UNDECODABLE


def open_missing() -> str:
    CALLS.append("open")
    raise ValueError(f"no such file: {UNDECODABLE}")  # the name as is, not its repr


@computation(name="recovery.unstorable", version=1)
def unstorable() -> Generator[Any, Any, str]:
    try:
        name: str = yield Call(list_names)
    except SerializationError as err:
        answer: str = yield Yield({"error": str(err)})
        return answer
    return name


@computation(name="recovery.nan_prompt", version=1)
def nan_prompt() -> Generator[Any, Any, str]:
    try:
        yield Yield({"ratio": float("nan")})
    except SerializationError as err:
        return f"caught: {err}"
    return "answered"


@computation(name="recovery.error_text", version=1)
def error_text() -> Generator[Any, Any, str]:
    text: str = yield Call(open_missing)
    return text


async def test_a_result_the_store_cannot_hold_fails_its_effect_inside_the_computation(
    tmp_path: Path,
) -> None:
    """A Call returning text with a lone surrogate: the computation gets a
    `SerializationError` at that yield (and may catch it); the run is committed, the Call ran
    once, and nothing is left for `recover()`."""
    CALLS.clear()
    async with DurableRunner(url(tmp_path)) as runner:
        run = await runner.start(unstorable(), run_id="u1")
        assert run.status is RunStatus.SUSPENDED
        assert "lone surrogate" in run.prompt["error"]
        assert "list_names" in run.prompt["error"]
        log = await runner.get_log("u1")
        assert log.entries[0].status == "error"
        assert log.entries[0].error is not None
        assert log.entries[0].error["type"] == "effects.SerializationError"
        assert await runner.recover() == []
        run = await runner.resume("u1", "fixed")
        assert run.status is RunStatus.DONE
    assert CALLS == ["list"]


async def test_a_prompt_the_store_cannot_hold_fails_the_yield(tmp_path: Path) -> None:
    """A prompt holding NaN fails at the `Yield` with `SerializationError` (catchable)."""
    async with DurableRunner(url(tmp_path)) as runner:
        run = await runner.start(nan_prompt(), run_id="n1")
        assert run.status is RunStatus.DONE, run.outcome
        assert run.outcome is not None
        assert "not a finite number" in run.outcome.value  # type: ignore[union-attr]
        assert await runner.recover() == []


async def test_an_error_message_with_a_lone_surrogate_is_stored_escaped(tmp_path: Path) -> None:
    """An error naming an undecodable file name fails the run normally; its message is
    stored with the surrogate escaped."""
    CALLS.clear()
    async with DurableRunner(url(tmp_path)) as runner:
        run = await runner.start(error_text(), run_id="e1")
        assert run.status is RunStatus.FAILED
        assert isinstance(run.outcome, Throw)
        assert isinstance(run.outcome.error, ValueError)
        stored = await runner.get("e1")
        assert stored.error is not None
        assert "caf\\udce9.txt" in stored.error["message"]
        assert await runner.recover() == []
    assert CALLS == ["open"]


class FailsFor(Handler):
    """Fails to install for one run: its recovery raises, whatever the others do."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def install(self) -> FailsFor:
        if current_run_id() == self.run_id:
            raise RuntimeError(f"cannot serve {self.run_id}")
        return self


async def test_recover_isolates_runs(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None]
) -> None:
    """The recovery of one run raising does not stop the others from being recovered."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    for run_id in ("bad", "good"):
        forked("--db", url(tmp_path), "--counter", counter, "--run-id", run_id, "--owner", "w1",
               "--action", "start", "--kill-at", "before:2")  # fmt: skip
        flows.init_counter(counter)  # the next worker's kill point is reached again
    handlers = (*flows.HANDLERS, FailsFor("bad"))
    async with DurableRunner(
        url(tmp_path), handlers=handlers, owner="w1", max_recovery_attempts=2
    ) as runner:
        recovered = await runner.recover()
        assert [(r.id, r.status) for r in recovered] == [("good", RunStatus.SUSPENDED)]
        bad = await runner.get("bad")
        assert (bad.status, bad.lease_owner, bad.parked) == (RunStatus.RUNNING, None, None)
        assert bad.recovery_attempts == 1
        # The second failure in a row uses up max_recovery_attempts: parked, with the error.
        [parked] = await runner.recover()
        assert (parked.id, parked.status, parked.recovery_attempts) == ("bad", "running", 2)
        assert parked.parked == (
            "recovery failed 2 times; the last attempt raised RuntimeError: cannot serve bad"
        )
        assert await runner.recover() == []


async def test_a_run_whose_recovery_keeps_dying_is_parked_until_unparked(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None]
) -> None:
    """A poison pill (its recovery kills the process at the same effect every time) is
    recovered `max_recovery_attempts` times, then parked with the reason visible; `recover()`
    skips it; `unpark` lets the next `recover()` continue it."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    common = ("--db", url(tmp_path), "--counter", counter, "--run-id", "p1", "--owner", "w1")
    forked(*common, "--action", "start", "--kill-at", "before:2")
    for _ in range(5):  # the default max_recovery_attempts
        forked(*common, "--action", "recover", "--kill-at", "before:2")
    async with DurableRunner(url(tmp_path), handlers=flows.HANDLERS, owner="w1") as runner:
        before = await runner.get("p1")
        assert (before.status, before.recovery_attempts, before.parked) == (
            RunStatus.RUNNING,
            5,
            None,
        )
        [parked] = await runner.recover()
        assert parked.status is RunStatus.RUNNING
        assert parked.parked is not None
        assert "attempted 5 times without progress" in parked.parked
        assert await runner.recover() == []  # skipped while parked
        with pytest.raises(ConflictError, match="parked"):
            await runner.resume("p1", 1)
        assert [r.id for r in await runner.list(parked=True)] == ["p1"]
        assert await runner.list(parked=False) == []
        shown = await anyio.to_thread.run_sync(cli, "show", "p1", "--db", url(tmp_path))
        assert "parked   recovery was attempted 5 times" in shown
        assert "runs unpark p1" in shown
        listed = await anyio.to_thread.run_sync(cli, "list", "--parked", "--db", url(tmp_path))
        assert "running (parked)" in listed
        unparked = await runner.unpark("p1")
        assert (unparked.parked, unparked.recovery_attempts) == (None, 0)
        [run] = await runner.recover()
        assert run.status is RunStatus.SUSPENDED
        assert (run.parked, run.recovery_attempts) == (None, 0)
    attempts, applied = flows.read_counter(counter)
    # Each attempt died before the poison effect wrote anything; the completed ones never ran
    # again.
    assert [i for _, i in attempts] == [i for _, i in applied] == [0, 1, 2, 3, 4]


async def test_recovery_attempts_reset_on_progress(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., None]
) -> None:
    """A recovery that makes progress (a checkpoint) starts the count again: a run that dies
    at a different effect each time is never parked."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    common = ("--db", url(tmp_path), "--counter", counter, "--run-id", "q1", "--owner", "w1")
    forked(*common, "--action", "start", "--answer", "100", "--kill-at", "before:5")
    for i in range(6, 10):
        forked(*common, "--action", "recover", "--kill-at", f"before:{i}")
    async with DurableRunner(
        url(tmp_path), handlers=flows.HANDLERS, owner="w1", max_recovery_attempts=2
    ) as runner:
        assert (await runner.get("q1")).recovery_attempts == 0  # the last one progressed too
        [run] = await runner.recover()
        assert run.status is RunStatus.DONE
        assert (run.parked, run.recovery_attempts) == (None, 0)


async def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    """A store created before recovery attempts existed gets the new columns; its runs read
    as not parked, with no attempts."""
    async with DurableRunner(url(tmp_path)) as runner:
        await runner.start(nan_prompt(), run_id="old")
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("ALTER TABLE effects_runs DROP COLUMN recovery_attempts")
        db.execute("ALTER TABLE effects_runs DROP COLUMN parked")
        db.execute("DELETE FROM effects_schema_version")
        db.execute("INSERT INTO effects_schema_version VALUES (1, 'created', 0)")
    async with DurableRunner(url(tmp_path)) as runner:
        run = await runner.get("old")
        assert (run.status, run.parked, run.recovery_attempts) == (RunStatus.DONE, None, 0)
        assert await runner.store.schema_version() == schema.SCHEMA_VERSION


GATES: dict[str, anyio.Event] = {}
ENTERED: list[str] = []
IN_FLIGHT = {"now": 0, "max": 0}
CHANGED: list[anyio.Event] = []


async def wait_gate(name: str) -> str:
    """An external effect that completes when the test opens gate `name`."""
    ENTERED.append(name)
    IN_FLIGHT["now"] += 1
    IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
    for changed in CHANGED:
        changed.set()
    try:
        await GATES[name].wait()
    finally:
        IN_FLIGHT["now"] -= 1
    return name


@computation(name="recovery.gated", version=1)
def gated(name: str) -> Generator[Any, Any, str]:
    passed: str = yield Call(wait_gate, name)
    answer: str = yield Yield(f"after {passed}")
    return answer


async def until(condition: Callable[[], bool]) -> None:
    """Wait (without sleeping) until `condition()` holds after a gate was entered."""
    with anyio.fail_after(10):
        while not condition():
            changed = anyio.Event()
            CHANGED[:] = [changed]
            if condition():
                break
            await changed.wait()


class _Crash(Exception):
    """Leaves a runner the way a crash would: its steps in flight stay `running`."""


async def cut_off(db: str, names: list[str]) -> None:
    """Start a run per name, each waiting at its gate, then stop the runner abruptly."""
    try:
        async with DurableRunner(db, owner="first") as runner:
            for name in names:
                await runner.start(gated(name), run_id=name, wait=False)
            await until(lambda: len(ENTERED) == len(names))
            raise _Crash()
    except _Crash:
        pass
    ENTERED.clear()
    IN_FLIGHT.update(now=0, max=0)


@pytest.fixture
def _gates() -> Generator[None, None, None]:
    GATES.clear()
    ENTERED.clear()
    IN_FLIGHT.update(now=0, max=0)
    yield
    GATES.clear()
    CHANGED.clear()


@pytest.mark.usefixtures("_gates")
async def test_recover_does_not_hold_up_runs_behind_a_slow_one(tmp_path: Path) -> None:
    """A run whose recovery waits (gate `slow` stays closed) does not delay the next one:
    `fast` is recovered to its prompt while `slow` is still waiting."""
    for name in ("slow", "fast"):
        GATES[name] = anyio.Event()
    await cut_off(url(tmp_path), ["slow", "fast"])
    GATES["fast"].set()
    async with DurableRunner(url(tmp_path), owner="second") as runner:
        async with anyio.create_task_group() as tg:
            recovered: list[Any] = []

            async def recover() -> None:
                recovered.extend(await runner.recover())

            tg.start_soon(recover)
            with anyio.fail_after(10):
                async with runner.subscribe("fast") as updates:
                    async for run in updates:
                        if run.status is RunStatus.SUSPENDED:
                            break
            # `fast` is at its prompt while `slow` waits at its closed gate (or is about to).
            await until(lambda: "slow" in ENTERED)
            assert (await runner.get("slow")).status is RunStatus.RUNNING
            GATES["slow"].set()
        assert sorted((r.id, r.status) for r in recovered) == [
            ("fast", RunStatus.SUSPENDED),
            ("slow", RunStatus.SUSPENDED),
        ]
        assert [r.id for r in recovered] == ["slow", "fast"]  # oldest first, as before


@pytest.mark.usefixtures("_gates")
async def test_recover_concurrency_is_bounded(tmp_path: Path) -> None:
    """With `recover_concurrency=2`, four waiting recoveries run two at a time: the third
    starts only when one of the first two finished."""
    names = ["a", "b", "c", "d"]
    for name in names:
        GATES[name] = anyio.Event()
    await cut_off(url(tmp_path), names)
    async with DurableRunner(url(tmp_path), owner="second", recover_concurrency=2) as runner:
        async with anyio.create_task_group() as tg:
            recovered: list[Any] = []

            async def recover() -> None:
                recovered.extend(await runner.recover())

            tg.start_soon(recover)
            for n in range(len(names)):
                await until(lambda n=n: len(ENTERED) >= min(n + 2, len(names)))
                assert IN_FLIGHT["max"] <= 2
                GATES[ENTERED[n]].set()
        assert IN_FLIGHT["max"] == 2
        assert [r.status for r in recovered] == [RunStatus.SUSPENDED] * 4
        with pytest.raises(ConfigurationError):
            await runner.recover(concurrency=0)
    with pytest.raises(ConfigurationError):
        DurableRunner(url(tmp_path), recover_concurrency=0)


class Inner(Effect[str]):
    """Answered by a handler that runs a sub-computation which was cancelled."""


def _cancelled_inside(effect: Inner) -> str:
    raise Cancellation("inner")


def _note(text: str) -> str:
    return text


INNER = handler({Inner: _cancelled_inside}, name="inner", external=True)


@computation(name="recovery.inner_cancel", version=1)
def inner_cancel(name: str) -> Generator[Any, Any, str]:
    try:
        got: str = yield Inner()
    except Cancellation as stopped:  # a computation may handle a sub-task's cancellation
        got = f"inner {stopped.reason}"
    yield Call(_note, got)  # checkpointed: the log then holds the inner effect's entry
    passed: str = yield Call(wait_gate, name)
    answer: str = yield Yield(f"{got}, after {passed}")
    return answer


@pytest.mark.usefixtures("_gates")
async def test_a_cancellation_raised_by_a_handler_does_not_cancel_the_run_on_recovery(
    tmp_path: Path,
) -> None:
    """A `Cancellation` a handler raised (and the computation handled) is replayed where it
    happened; it does not make recovery unwind a run nobody cancelled."""
    GATES["g"] = anyio.Event()
    try:
        async with DurableRunner(url(tmp_path), owner="first", handlers=INNER) as runner:
            await runner.start(inner_cancel("g"), run_id="i1", wait=False)
            await until(lambda: ENTERED == ["g"])
            raise _Crash()
    except _Crash:
        pass
    GATES["g"].set()
    async with DurableRunner(url(tmp_path), owner="second", handlers=INNER) as runner:
        [run] = await runner.recover()
        assert (run.status, run.prompt) == (RunStatus.SUSPENDED, "inner inner, after g")


INNER_IN_MEMORY = handler({Inner: _cancelled_inside}, name="inner-in-memory")


@pytest.mark.usefixtures("_gates")
async def test_a_cancellation_raised_by_an_in_memory_handler_replays(tmp_path: Path) -> None:
    """The same with a handler that is not external: its `Cancellation` is recorded too, so
    the replay does not diverge at the effect after it."""
    GATES["g"] = anyio.Event()
    try:
        async with DurableRunner(url(tmp_path), owner="first", handlers=INNER_IN_MEMORY) as r:
            await r.start(inner_cancel("g"), run_id="i2", wait=False)
            await until(lambda: ENTERED == ["g"])
            raise _Crash()
    except _Crash:
        pass
    GATES["g"].set()
    async with DurableRunner(url(tmp_path), owner="second", handlers=INNER_IN_MEMORY) as r:
        [run] = await r.recover()
        assert (run.status, run.prompt) == (RunStatus.SUSPENDED, "inner inner, after g")


@computation(name="recovery.nap", version=1)
def nap(name: str) -> Generator[Any, Any, str]:
    yield Clock.sleep(0.5)  # released at once below (sleep_in_memory=0), then made due
    answer: str = yield Yield(f"{name} awake")
    return answer


async def test_recover_isolates_the_sleeping_runs_it_wakes(tmp_path: Path) -> None:
    """A due sleeping run whose wake-up raises does not stop `recover()` from waking the
    others."""
    # No timer loop here: under load it could wake the runs before this runner closes.
    async with DurableRunner(
        url(tmp_path), handlers=Clock(), sleep_in_memory=0, timers=False
    ) as runner:
        for name in ("bad", "good"):
            run = await runner.start(nap(name), run_id=name)
            assert run.status is RunStatus.SLEEPING
    handlers = (Clock(), FailsFor("bad"))
    # No timer loop in this runner either: under load its first pass could wake the runs
    # before recover() does (recover() continues due sleeping runs itself).
    async with DurableRunner(url(tmp_path), handlers=handlers, timers=False) as runner:
        # Due now (as time would make them); the replay sleeps what is left of the half
        # second in memory.
        async with runner.store.engine.begin() as conn:
            await conn.execute(schema.runs.update().values(wake_at=0.0))
        recovered = await runner.recover()
        assert [(r.id, r.status, r.prompt) for r in recovered] == [
            ("good", RunStatus.SUSPENDED, "good awake")
        ]
        assert (await runner.get("bad")).status is RunStatus.SLEEPING
