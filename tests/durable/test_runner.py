"""DurableRunner on SQLite files: start, resume (cold, validated, raced), cancel, recovery after
an orderly stop, subscriptions, and the errors a caller can see."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest

from effects import (
    Call,
    Cancelled,
    ConfigurationError,
    ConflictError,
    DivergenceError,
    Done,
    Effect,
    Fresh,
    Handler,
    InvalidInput,
    LogError,
    ResumeError,
    RunNotFound,
    SerializationError,
    Suspend,
    Throw,
    Yield,
    computation,
    handler,
)
from effects.durable import (
    DurableRunner,
    LoopDone,
    Run,
    RunStatus,
    at_most_once,
    current_run_id,
    durable_loop,
    idempotency_key,
    patched,
)
from effects.durable._store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite) run on asyncio only."""
    return "asyncio"


RECORD: list[str] = []
GATES: dict[str, anyio.Event] = {}


@pytest.fixture(autouse=True)
def _fresh_record() -> Iterator[None]:
    RECORD.clear()
    GATES.clear()
    yield
    RECORD.clear()
    GATES.clear()


def record(what: str) -> str:
    """An external side effect the tests count."""
    RECORD.append(what)
    return what


async def wait_gate(name: str) -> str:
    """An external effect that completes when the test opens the gate `name`."""
    await GATES[name].wait()
    RECORD.append(f"gate {name}")
    return name


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


def sql(db: str, statement: str, *params: Any) -> list[Any]:
    """Run SQL on the store file directly (as an operator or a damaged disk would)."""
    path = db.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(statement, params).fetchall()


# -- computations ---------------------------------------------------------------------------


class Signup(pydantic.BaseModel):
    email: str
    age: int


class Receipt(pydantic.BaseModel):
    email: str
    plan: str
    at: datetime


@computation(name="t.signup", version=1)
def signup(email: str, started: datetime) -> Generator[Any, Any, Receipt]:
    yield Call(record, f"welcome {email}")
    details: Signup = yield Yield({"ask": "details", "email": email}, input=Signup)
    yield Call(record, f"profile {details.age}")
    plan: str = yield Yield("plan?", input=str)
    yield Call(record, f"plan {plan}")
    return Receipt(email=details.email, plan=plan, at=started)


@computation(name="t.wizard", version=1)
def wizard(steps: int) -> Generator[Any, Any, list[str]]:
    answers: list[str] = []
    for i in range(steps):
        token = yield Fresh.uuid()
        yield Call(record, f"before {i}")
        answers.append((yield Yield(f"step {i}", input=str)))
        assert token is not None
    yield Call(record, "finished")
    return answers


@computation(name="t.gated", version=1)
def gated(gate: str) -> Generator[Any, Any, str]:
    try:
        value: str = yield Call(wait_gate, gate)
        yield Call(record, "after gate")
        more: str = yield Yield("more?", input=str)
        return value + more
    finally:
        yield Call(record, "cleanup")


@computation(name="t.fails", version=1)
def fails() -> Generator[Any, Any, None]:
    yield Call(record, "tried")
    raise ValueError("bad input")


@computation(name="t.unstorable", version=1)
def unstorable() -> Generator[Any, Any, Any]:
    yield Call(record, "x")
    return object()


class Pay(Effect[str]):
    amount: int


at_most_once(Pay)


def changing_version(variant: int, version: int = 1) -> Any:
    """The same computation (same name and qualified name) as deployed at different times."""

    @computation(name="t.changing", version=version)
    def changing() -> Generator[Any, Any, str]:
        yield Call(record, "first")
        if variant == 2:
            yield Call(record, "inserted")
        if variant == 3 and (yield from patched("inserted")):
            yield Call(record, "inserted")
        answer: str = yield Yield("name?")
        return answer

    return changing


def runner(db: str, **options: Any) -> DurableRunner:
    return DurableRunner(db, handlers=Fresh(), **options)


# -- start and resume -----------------------------------------------------------------------


async def test_start_suspends_and_resume_finishes_with_typed_values(db: str) -> None:
    """Arguments and results go through the type hints; each effect runs once."""
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with runner(db) as r:
        run = await r.start(signup("ada@example.com", started))
        assert run.status is RunStatus.SUSPENDED
        assert run.prompt == {"ask": "details", "email": "ada@example.com"}
        assert run.args == {"email": "ada@example.com", "started": "2026-01-02T03:04:05Z"}
        assert type(run.outcome) is Suspend
        assert run.outcome.input["title"] == "Signup"  # the JSON schema of the answer
        run = await r.resume(run.id, {"email": "ada@example.com", "age": 36})
        assert run.prompt == "plan?"
        run = await r.resume(run.id, "pro")
        assert run.status is RunStatus.DONE
        expected = Receipt(email="ada@example.com", plan="pro", at=started)
        assert run.outcome == Done(expected)
        assert (await r.get(run.id)).outcome == Done(expected)  # rebuilt from JSON
        assert run.finished
    assert RECORD == ["welcome ada@example.com", "profile 36", "plan pro"]


async def test_cold_resume_across_three_restarts(db: str) -> None:
    """Each answer is given by a new runner on the same file; nothing is done twice."""
    async with runner(db) as r:
        run_id = (await r.start(wizard(3))).id
    for i, answer in enumerate(["a", "b", "c"]):
        async with runner(db) as r:
            run = await r.get(run_id)
            assert run.prompt == f"step {i}"
            run = await r.resume(run_id, answer)
    assert run.status is RunStatus.DONE
    assert run.outcome == Done(["a", "b", "c"])
    assert RECORD == ["before 0", "before 1", "before 2", "finished"]
    async with runner(db) as r:
        log = await r.get_log(run_id)
    assert [e.effect.rsplit(".", 1)[1] for e in log.entries] == [
        *["NewUuid", "Call", "Yield"] * 3,
        "Call",
    ]
    assert all(e.status == "done" for e in log.entries)


async def test_stored_entries_keep_their_times_across_restarts(db: str) -> None:
    """Entry timestamps go through the store: each stored entry started and ended within the
    step that recorded it, a Yield spans from its prompt to its answer, and a cold resume
    writes the entries it replayed back unchanged."""
    t0 = time.time()
    async with runner(db) as r:
        run_id = (await r.start(wizard(1))).id
    t1 = time.time()
    async with runner(db) as r:
        before = (await r.get_log(run_id)).entries
        await r.resume(run_id, "a")
        after = (await r.get_log(run_id)).entries
    t2 = time.time()
    assert [e.status for e in before] == ["done", "done", "pending"]
    for e in before[:2]:
        assert e.started_at is not None
        assert e.ended_at is not None
        assert t0 <= e.started_at <= e.ended_at <= t1
    assert after[:2] == before[:2]
    ask = after[2]
    assert ask.status == "done"
    assert ask.started_at == before[2].started_at
    assert ask.ended_at is not None
    assert t1 <= ask.ended_at <= t2


async def test_invalid_input_leaves_the_run_untouched(db: str) -> None:
    """An answer that fails validation raises InvalidInput before the store is written."""
    async with runner(db) as r:
        run = await r.start(signup("bob@example.com", datetime.now(UTC)))
        log_before = await r.get_log(run.id)
        with pytest.raises(InvalidInput) as caught:
            await r.resume(run.id, {"email": "bob@example.com", "age": "old"})
        assert caught.value.errors[0]["loc"] == ("age",)
        after = await r.get(run.id)
        assert (after.status, after.revision) == (RunStatus.SUSPENDED, run.revision)
        assert await r.get_log(run.id) == log_before
        run = await r.resume(run.id, {"email": "bob@example.com", "age": 40})
        assert run.prompt == "plan?"
    assert RECORD == ["welcome bob@example.com", "profile 40"]


async def test_concurrent_resumes_in_one_process(db: str) -> None:
    """Two tasks answer the same step: exactly one wins, the other gets ConflictError."""
    async with runner(db) as r:
        run = await r.start(wizard(1))
        results: list[Run | BaseException] = []

        async def answer(value: str) -> None:
            try:
                results.append(await r.resume(run.id, value))
            except ConflictError as err:
                results.append(err)

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, "x")
            tg.start_soon(answer, "y")
    wins = [x for x in results if isinstance(x, Run)]
    losses = [x for x in results if isinstance(x, ConflictError)]
    assert (len(wins), len(losses)) == (1, 1)
    assert wins[0].status is RunStatus.DONE
    assert RECORD == ["before 0", "finished"]


async def test_concurrent_resumes_from_two_runners_on_one_file(db: str) -> None:
    """Two runners (as two processes would) answer the same revision: the database decides."""
    async with runner(db, owner="a") as a, runner(db, owner="b") as b:
        run = await a.start(wizard(1))
        results: list[Run | BaseException] = []

        async def answer(r: DurableRunner, value: str) -> None:
            try:
                results.append(await r.resume(run.id, value, revision=run.revision))
            except ConflictError as err:
                results.append(err)

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, a, "x")
            tg.start_soon(answer, b, "y")
    assert sorted(type(x).__name__ for x in results) == ["ConflictError", "Run"]
    assert RECORD == ["before 0", "finished"]


async def test_a_stale_revision_is_a_conflict(db: str) -> None:
    """Answering a step that was already answered fails instead of answering the next one."""
    async with runner(db) as r:
        run = await r.start(wizard(2))
        await r.resume(run.id, "first", revision=run.revision)
        with pytest.raises(ConflictError, match=f"at revision {run.revision}"):
            await r.resume(run.id, "again", revision=run.revision)
        assert (await r.get(run.id)).prompt == "step 1"


async def test_unknown_and_finished_runs(db: str) -> None:
    """Unknown ids are RunNotFound; a finished run cannot be resumed; cancelling it is a
    no-op."""
    async with runner(db) as r:
        for call in (r.get("nope"), r.resume("nope", 1), r.cancel("nope"), r.get_log("nope")):
            with pytest.raises(RunNotFound):
                await call
        run = await r.start(fails())
        with pytest.raises(ResumeError, match="it is failed"):
            await r.resume(run.id, None)
        assert (await r.cancel(run.id)).status is RunStatus.FAILED


async def test_start_with_an_existing_id(db: str) -> None:
    """Starting the same computation and arguments under an existing id returns that run;
    anything else under that id is a conflict."""
    async with runner(db) as r:
        first = await r.start(wizard(1), run_id="order-1")
        again = await r.start(wizard(1), run_id="order-1")
        assert (again.id, again.revision) == (first.id, first.revision)
        with pytest.raises(ConflictError, match="taken by another run"):
            await r.start(wizard(2), run_id="order-1")
    assert RECORD == ["before 0"]


async def test_what_cannot_be_started(db: str) -> None:
    """Only calls of registered computations with JSON arguments start; nothing is stored."""

    def plain() -> Generator[Any, Any, None]:
        yield Call(record, "x")

    async with runner(db) as r:
        with pytest.raises(ConfigurationError, match="call of a @computation"):
            await r.start(plain())  # type: ignore[arg-type]
        with pytest.raises(SerializationError, match="argument 'gate'"):
            await r.start(gated(object()))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="missing a required argument"):
            await r.start(wizard())  # type: ignore[call-arg]
        assert await r.list() == []


async def test_failures_are_stored_with_their_traceback(db: str) -> None:
    """An uncaught exception fails the run; the caller gets the exception itself, a later
    reader an equivalent one and the stored traceback."""
    async with runner(db) as r:
        run = await r.start(fails())
        assert run.status is RunStatus.FAILED
        assert isinstance(run.outcome, Throw)
        assert isinstance(run.outcome.error, ValueError)
        assert run.outcome.error.__traceback__ is not None
        stored = await r.get(run.id)
        assert isinstance(stored.outcome, Throw)
        assert type(stored.outcome.error) is ValueError
        assert str(stored.outcome.error) == "bad input"
        assert stored.error is not None
        assert stored.error["type"] == "builtins.ValueError"
        assert "raise ValueError" in stored.error["traceback"]

        run = await r.start(unstorable())
        assert run.status is RunStatus.FAILED
        assert isinstance(run.outcome, Throw)
        assert isinstance(run.outcome.error, SerializationError)


async def test_list_filters_by_status_and_name(db: str) -> None:
    """`list` returns runs oldest first, filtered by one or several statuses and a name."""
    async with runner(db) as r:
        waiting = await r.start(wizard(1))
        failed = await r.start(fails())
        assert [x.id for x in await r.list()] == [waiting.id, failed.id]
        assert [x.id for x in await r.list("suspended")] == [waiting.id]
        assert [x.id for x in await r.list([RunStatus.FAILED, "done"])] == [failed.id]
        assert [x.id for x in await r.list(name="t.fails")] == [failed.id]
        assert len(await r.list(limit=1)) == 1


# -- effects, checkpoints, loops --------------------------------------------------------------


async def test_handlers_get_a_stable_idempotency_key(db: str) -> None:
    """The handler of a logged effect sees `run_id:seq`, the same on every attempt."""
    seen: list[str | None] = []

    def pay(effect: Pay) -> str:
        seen.append(idempotency_key())
        return f"paid {effect.amount}"

    @computation(name="t.pays", version=1)
    def pays() -> Generator[Any, Any, str]:
        yield Call(record, "x")
        return (yield Pay(5))

    async with DurableRunner(db, handlers=handler({Pay: pay}, external=True)) as r:
        run = await r.start(pays(), run_id="p1")
    assert run.outcome == Done("paid 5")
    assert seen == ["p1:1"]


async def test_at_most_once_effects_are_written_ahead(db: str, tmp_path: Path) -> None:
    """Before an at-most-once effect runs, its pending entry is committed."""
    observed: list[list[str]] = []

    async def pay(effect: Pay) -> str:
        store = await Store.open(db)
        try:
            _, entries = await store.load("w1")
        finally:
            await store.aclose()
        observed.append([e.status for e in entries])
        return "ok"

    @computation(name="t.pays_once", version=1)
    def pays_once() -> Generator[Any, Any, str]:
        yield Call(record, "x")
        return (yield Pay(5))

    async with DurableRunner(db, handlers=handler({Pay: pay}, external=True)) as r:
        run = await r.start(pays_once(), run_id="w1")
        log = await r.get_log("w1")
    assert run.outcome == Done("ok")
    assert observed == [["done", "pending"]]
    assert [e.status for e in log.entries] == ["done", "done"]


async def test_a_durable_loop_keeps_the_stored_log_bounded(db: str) -> None:
    """A loop of 30 iterations with a question each keeps a handful of log rows, across
    cold resumes."""

    def step(n: int) -> Generator[Any, Any, int | LoopDone[int]]:
        yield Call(record, f"iteration {n}")
        answer: str = yield Yield(f"continue after {n}?", input=str)
        return LoopDone(n) if answer == "stop" else n + 1

    @computation(name="t.looping", version=1)
    def looping() -> Generator[Any, Any, int]:
        return (yield from durable_loop(step, 0))

    sizes = []
    async with runner(db) as r:
        run_id = (await r.start(looping())).id
    for i in range(30):
        async with runner(db) as r:
            run = await r.resume(run_id, "stop" if i == 29 else "go")
        sizes.append(sql(db, "SELECT count(*) FROM effects_log WHERE run_id = ?", run_id)[0][0])
    assert run.outcome == Done(29)
    assert max(sizes) <= 4
    assert RECORD == [f"iteration {n}" for n in range(30)]


# -- versions, divergence, damaged logs --------------------------------------------------------


async def test_divergence_after_a_code_change_leaves_the_run_alone(db: str) -> None:
    """New code that performs a new effect before the pending step cannot resume the run:
    DivergenceError names the position; the run is untouched and resumes once the change is
    guarded with `patched`."""
    changing = changing_version(1)
    async with runner(db) as r:
        run = await r.start(changing())
    changing = changing_version(2)
    async with runner(db) as r:
        with pytest.raises(DivergenceError) as caught:
            await r.resume(run.id, "ada")
        assert caught.value.position == 1
        assert "Call" in caught.value.expected or "Yield" in caught.value.expected
        after = await r.get(run.id)
        assert (after.status, after.revision) == (RunStatus.SUSPENDED, run.revision)
    changing = changing_version(3)
    async with runner(db) as r:
        done = await r.resume(run.id, "ada")
        assert done.outcome == Done("ada")
        # New runs take the new path.
        fresh = await r.start(changing())
        assert fresh.status is RunStatus.SUSPENDED
    assert RECORD == ["first", "first", "inserted"]
    assert changing.name == "t.changing"


async def test_a_run_continued_by_a_newer_version_is_refused_by_an_older_one(db: str) -> None:
    """Once version 2 has written a run's log, version 1 code refuses to replay it."""
    changing_version(1, version=1)
    async with runner(db) as r:
        run = await r.start(changing_version(1, version=1)())
    changing_version(1, version=2)
    async with runner(db) as r:
        assert (await r.get(run.id)).version == 1
        run = await r.resume(run.id, "x")
        assert run.version == 2
    changing_version(1, version=1)
    sql(db, "UPDATE effects_runs SET status = 'suspended'")
    async with runner(db) as r:
        with pytest.raises(LogError, match="version 2"):
            await r.resume(run.id, "x")


async def test_corrupted_and_foreign_logs_are_refused(db: str) -> None:
    """A damaged log row, or rows copied from another run, fail the resume with LogError and
    change nothing."""
    async with runner(db) as r:
        one = await r.start(wizard(2))
        two = await r.start(wizard(2))
    sql(db, "UPDATE effects_log SET entry = '{\"run\": garbage' WHERE run_id = ? AND seq = 1",
        one.id)  # fmt: skip
    sql(db, "DELETE FROM effects_log WHERE run_id = ?", two.id)
    sql(db, "INSERT INTO effects_log SELECT ?, seq, entry FROM effects_log WHERE run_id = ?",
        two.id, one.id)  # fmt: skip
    sql(db, "UPDATE effects_log SET entry = (SELECT entry FROM effects_log WHERE run_id = ? "
        "AND seq = 1) WHERE run_id = ? AND seq = 1", two.id, one.id)  # fmt: skip
    async with runner(db) as r:
        with pytest.raises(LogError, match="log entry 1 is corrupted"):
            await r.resume(one.id, "a")
        with pytest.raises(LogError, match="foreign log"):
            await r.resume(two.id, "a")
        for run in (one, two):
            after = await r.get(run.id)
            assert (after.status, after.revision) == (RunStatus.SUSPENDED, run.revision)


async def test_unknown_computations_are_reported(db: str) -> None:
    """A run of a computation this process does not know cannot be resumed."""
    async with runner(db) as r:
        run = await r.start(wizard(1))
    sql(db, "UPDATE effects_runs SET name = 'gone.flow'")
    async with runner(db) as r:
        with pytest.raises(ConfigurationError, match=r"no computation registered as 'gone\.flow'"):
            await r.resume(run.id, "a")
        assert (await r.get(run.id)).prompt == "step 0"


# -- cancellation, background steps, subscriptions, shutdown --------------------------------


async def test_cancel_a_suspended_run_runs_its_cleanup(db: str) -> None:
    """Cancelling a waiting run cold-resumes it and unwinds it: `finally` effects run once."""
    GATES["g"] = anyio.Event()
    GATES["g"].set()
    async with runner(db) as r:
        run = await r.start(gated("g"))
        assert run.prompt == "more?"
        run = await r.cancel(run.id, "user left")
        assert run.status is RunStatus.CANCELLED
        assert run.outcome == Cancelled("user left")
        assert (await r.get(run.id)).outcome == Cancelled("user left")
    assert RECORD == ["gate g", "after gate", "cleanup"]


async def test_cancel_a_step_running_in_this_process(db: str) -> None:
    """A step waiting on a slow effect is interrupted; its cleanup runs and is logged."""
    GATES["g"] = anyio.Event()
    async with runner(db) as r:
        run = await r.start(gated("g"), wait=False)
        assert run.status is RunStatus.RUNNING
        run = await r.cancel(run.id, "too slow")
        assert run.status is RunStatus.CANCELLED
        log = await r.get_log(run.id)
    assert RECORD == ["cleanup"]
    # The slow Call, cancelled where it waited (recorded so a replay cancels there), then the
    # cleanup Call.
    assert [e.status for e in log.entries] == ["error", "done"]
    assert log.entries[0].error is not None
    assert log.entries[0].error["type"] == "effects.Cancellation"


async def test_cancel_from_another_runner_is_delivered_at_the_next_checkpoint(db: str) -> None:
    """A runner that does not hold the step flags the run; the owner cancels it."""
    GATES["g"] = anyio.Event()
    async with runner(db, owner="a") as a, runner(db, owner="b") as b:
        run = await a.start(gated("g"), wait=False)
        with anyio.fail_after(10):
            async with a.subscribe(run.id) as updates:
                flagged = await b.cancel(run.id, "stop")
                assert (flagged.status, flagged.cancel_requested) == (RunStatus.RUNNING, True)
                GATES["g"].set()
                async for update in updates:
                    last = update
        assert last.status is RunStatus.CANCELLED
    # The checkpoint after the gate sees the flag: the next Call is not started (a plain
    # function starts in a worker thread, an await where the cancellation arrives).
    assert RECORD == ["gate g", "cleanup"]


async def test_subscribe_follows_a_background_step(db: str) -> None:
    """`start(wait=False)` returns at once; a subscriber sees each committed change in order
    up to the suspension."""
    GATES["g"] = anyio.Event()
    seen: list[Run] = []
    async with runner(db) as r:
        run = await r.start(gated("g"), wait=False)
        with anyio.fail_after(10):
            async with r.subscribe(run.id) as updates:
                async for update in updates:
                    seen.append(update)
                    if update.revision == run.revision:
                        GATES["g"].set()
                    if update.status is RunStatus.SUSPENDED:
                        break
        run = await r.resume(run.id, "!")
    assert seen[0].status is RunStatus.RUNNING
    assert [s.revision for s in seen] == sorted({s.revision for s in seen})
    assert seen[-1].prompt == "more?"
    assert run.outcome == Done("g!")


async def test_a_subscriber_follows_a_run_of_another_runner_on_sqlite(db: str) -> None:
    """Without NOTIFY (SQLite), a runner reads the runs followed there every `follow_poll`:
    a subscription and a watch on runner A see a run that runner B executes suspend, get
    answered (on B) and finish, in order."""
    GATES["g"] = anyio.Event()
    watched: list[Run] = []
    async with runner(db, owner="a") as a, runner(db, owner="b") as b:
        run = await b.start(gated("g"), wait=False)
        watch = a.watch(run.id, watched.append)
        watch.offer(await a.get(run.id))
        with anyio.fail_after(10):
            async with a.subscribe(run.id) as updates:
                async for update in updates:
                    assert run.id not in a._steps  # only the store brings it here
                    if update.status is RunStatus.RUNNING:
                        GATES["g"].set()
                    if update.status is RunStatus.SUSPENDED:
                        await b.resume(run.id, "!", wait=False)
                    if update.finished:
                        break
        watch.close()
    assert update.outcome == Done("g!")
    assert [w.revision for w in watched] == sorted({w.revision for w in watched})
    assert [w.status for w in watched][-1] is RunStatus.DONE


async def test_subscription_ends_when_the_run_finishes(db: str) -> None:
    """Iterating a finished run's subscription yields its final state once."""
    async with runner(db) as r:
        run = await r.start(fails())
        assert [x.status async for x in r.subscribe(run.id)] == [RunStatus.FAILED]
        with pytest.raises(RunNotFound):
            async for _ in r.subscribe("nope"):
                pass


async def test_closing_ends_waiting_subscriptions(db: str) -> None:
    """A reader waiting for the next snapshot stops when its subscription or the runner is
    closed."""
    async with runner(db) as r:
        run = await r.start(wizard(1))
        sub = r.subscribe(run.id)
        assert (await sub.__anext__()).status is RunStatus.SUSPENDED
        async with anyio.create_task_group() as tg:
            tg.start_soon(sub.aclose)
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()
        other = r.subscribe(run.id)
        await other.__anext__()
    with pytest.raises(StopAsyncIteration):
        await other.__anext__()


async def test_leaving_the_runner_waits_for_background_steps(db: str) -> None:
    """Like a task group, the runner's block waits for steps started with wait=False."""
    GATES["g"] = anyio.Event()
    async with runner(db) as r:
        run = await r.start(gated("g"), wait=False)
        GATES["g"].set()
    async with runner(db) as r:
        assert (await r.get(run.id)).prompt == "more?"


async def test_an_interrupted_runner_hands_its_runs_to_recovery(db: str) -> None:
    """Leaving the runner by an error stops its steps as a crash would: the run stays
    running with no lease, and another runner's `recover()` finishes the step."""
    GATES["g"] = anyio.Event()
    started: list[Run] = []

    async def interrupted() -> None:
        async with runner(db, owner="a") as a:
            started.append(await a.start(gated("g"), wait=False))
            async with a.subscribe(started[0].id) as updates:
                await updates.__anext__()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await interrupted()
    [run] = started
    async with runner(db, owner="b") as b:
        stopped = await b.get(run.id)
        assert (stopped.status, stopped.lease_owner) == (RunStatus.RUNNING, None)
        assert [e.status for e in (await b.get_log(run.id)).entries] == []
        GATES["g"].set()
        [recovered] = await b.recover()
        assert recovered.prompt == "more?"
    # Stopping the runner is a crash, not a cancel: the step's cleanup effects did not run
    # (they would have run twice), and the log shows only the run's normal path.
    assert RECORD == ["gate g", "after gate"]


def test_the_runner_needs_asyncio(db: str) -> None:
    """On trio, entering the runner fails with a clear message."""

    async def main() -> None:
        async with runner(db):
            pass  # pragma: no cover

    with pytest.raises(ConfigurationError, match="needs asyncio"):
        anyio.run(main, backend="trio")


async def test_the_runner_is_used_inside_async_with(db: str) -> None:
    """Calls outside the `async with` block fail clearly."""
    with pytest.raises(ConfigurationError, match="async with"):
        await runner(db).get("x")


async def test_handlers_learn_their_run_id_also_when_recovered(db: str) -> None:
    """current_run_id() names the run a handler is installed for: on start, resume and in
    steps that recover() continues (which no request started)."""
    seen: list[str | None] = []

    class Spy(Handler):
        def install(self) -> Spy:
            seen.append(current_run_id())
            return self

    GATES["r"] = anyio.Event()

    async def interrupted() -> str:
        async with DurableRunner(db, handlers=[Spy()], owner="a") as a:
            run = await a.start(gated("r"), wait=False)
            async with a.subscribe(run.id) as updates:
                await updates.__anext__()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await interrupted()
    [run_id] = {s for s in seen if s is not None}
    seen.clear()
    async with DurableRunner(db, handlers=[Spy()], owner="b") as b:
        GATES["r"].set()
        [recovered] = await b.recover()
    assert recovered.id == run_id
    assert seen == [run_id]
    assert current_run_id() is None


async def test_a_cancel_request_for_a_step_elsewhere_reaches_subscribers(db: str) -> None:
    """Cancelling a run whose step another runner holds flags it without a new revision;
    subscribers still get the flagged snapshot, and the step then ends cancelled."""
    GATES["c"] = anyio.Event()
    async with runner(db, owner="a") as a, runner(db, owner="b") as b:
        run = await a.start(gated("c"), wait=False)
        async with b.subscribe(run.id) as updates:
            with anyio.fail_after(5):
                first = await updates.__anext__()
                assert not first.cancel_requested
                await b.cancel(run.id, "stop")
                flagged = await updates.__anext__()
            assert flagged.cancel_requested
            assert flagged.revision == first.revision
        GATES["c"].set()
    async with runner(db) as r:
        assert (await r.get(run.id)).status is RunStatus.CANCELLED
