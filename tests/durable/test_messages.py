"""Messages to durable runs (`Receive`, `DurableRunner.send`) and queries of suspended runs
(`DurableRunner.query`): kept in order, delivered exactly once, read without resuming."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pydantic
import pytest

from effects import (
    AsyncComputation,
    Call,
    ConflictError,
    Done,
    EventAccumulator,
    InvalidInput,
    Receive,
    ResumeError,
    RunNotFound,
    State,
    Suspend,
    Yield,
    computation,
    start,
)
from effects.durable import DurableRunner, EffectLogger, Run, RunStatus

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only."""
    return "asyncio"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


class Approval(pydantic.BaseModel):
    by: str
    ok: bool


SEEN: list[Any] = []


def note(what: Any) -> Any:
    SEEN.append(what)
    return what


@computation(name="msg.two_topics", version=1)
def two_topics() -> Generator[Any, Any, list[Any]]:
    first: int = yield Receive("count", input=int)
    yield Call(note, f"count {first}")
    approval: Approval = yield Receive("approval", input=Approval)
    yield Call(note, f"approved by {approval.by}")
    return [first, approval.by, approval.ok]


@computation(name="msg.three", version=1)
def three_in_order() -> Generator[Any, Any, list[str]]:
    yield Yield("go?")
    got: list[str] = []
    for _ in range(3):
        got.append((yield Receive("t", input=str)))
    return got


async def finished(r: DurableRunner, run_id: str) -> Run:
    """The run once it is finished, followed through its committed changes."""
    with anyio.fail_after(10):
        async with r.subscribe(run_id) as runs:
            async for run in runs:
                if run.finished:
                    return run
    raise AssertionError("the subscription ended before the run finished")


def test_receive_suspends_like_a_yield_tagged_with_its_topic() -> None:
    """Under the plain runner a Receive is a Yield: prompt {"receive": topic}, input checked."""

    def comp() -> Generator[Any, Any, Any]:
        return (yield Receive("approval", input=Approval))

    outcome = start(comp())
    assert type(outcome) is Suspend
    assert outcome.value == {"receive": "approval"}
    with pytest.raises(InvalidInput):
        outcome.resume({"by": "x"})
    assert outcome.resume({"by": "ada", "ok": True}) == Done(Approval(by="ada", ok=True))


async def test_async_computation_suspends_at_a_receive_with_its_topic() -> None:
    """AsyncComputation reports a Receive as a Suspend tagged with its topic (and timeout);
    its owner resumes it with the message."""

    def comp() -> Generator[Any, Any, Any]:
        return (yield Receive("approval", input=Approval, timeout=5))

    async with anyio.create_task_group() as tg:
        runner, first = await AsyncComputation.start_sync(comp(), task_group=tg, tag="r")
        assert type(first) is Suspend
        assert first.value == {"receive": "approval", "timeout": 5}
        assert await runner.resume_sync({"by": "cy", "ok": True}) == Done(
            Approval(by="cy", ok=True)
        )


async def test_a_message_for_the_waiting_topic_resumes_the_run(db: str) -> None:
    """send() to a run waiting at Receive(topic) delivers at once; a message for another
    topic waits until the run asks for it, then is delivered without another send."""
    SEEN.clear()
    async with DurableRunner(db) as r:
        run = await r.start(two_topics())
        assert run.status is RunStatus.SUSPENDED
        assert run.prompt == {"receive": "count"}
        early = await r.send(run.id, "approval", {"by": "ada", "ok": True})
        assert early.prompt == {"receive": "count"}  # not what it waits for: kept
        done = await r.send(run.id, "count", 3)
        assert done.status is RunStatus.DONE
        assert done.outcome == Done([3, "ada", True])
    assert SEEN == ["count 3", "approved by ada"]


async def test_messages_are_kept_in_order_and_each_delivered_once(db: str) -> None:
    """Three messages sent while the run waits at a plain Yield: once it reaches its
    Receives, it gets them in sending order, each once (the log records three Receives)."""
    async with DurableRunner(db) as r:
        run = await r.start(three_in_order())
        for text in ("one", "two", "three"):
            assert (await r.send(run.id, "t", text)).prompt == "go?"
        await r.resume(run.id, None)
        done = await finished(r, run.id)
        assert done.outcome == Done(["one", "two", "three"])
        log = await r.get_log(run.id)
        received = [e.result for e in log.entries if e.effect == "effects.Receive"]
        assert received == ["one", "two", "three"]
        with pytest.raises(ResumeError):
            await r.send(run.id, "t", "late")


async def test_another_runner_delivers_by_cold_resume(db: str) -> None:
    """The sender need not be the process that started the run: a second runner on the same
    store replays the run to its Receive and delivers there."""
    SEEN.clear()
    async with DurableRunner(db) as r:
        run = await r.start(two_topics())
    async with DurableRunner(db) as other:
        await other.send(run.id, "count", 1)
        done = await other.send(run.id, "approval", {"by": "bo", "ok": False})
    assert done.outcome == Done([1, "bo", False])
    assert SEEN == ["count 1", "approved by bo"]


async def test_bad_messages_and_unknown_runs(db: str) -> None:
    """An invalid message for the waiting Receive raises InvalidInput and changes nothing
    but the queue; a run that does not exist is RunNotFound."""
    async with DurableRunner(db) as r:
        run = await r.start(two_topics())
        with pytest.raises(RunNotFound):
            await r.send("nope", "count", 1)
        with pytest.raises(InvalidInput):
            await r.send(run.id, "count", "not a number")
        assert (await r.get(run.id)).revision == run.revision


@computation(name="msg.cart", version=1)
def cart() -> Generator[Any, Any, list[str]]:
    items: list[str] = []
    while True:
        item: str = yield Receive("add", input=str)
        if item == "checkout":
            return items
        items = [*items, item]
        yield State.put(items)
        yield EventAccumulator.emit({"added": item})


async def test_query_reads_a_suspended_run_without_resuming_it(db: str) -> None:
    """query() replays the run in memory to its suspension and evaluates fn over the
    handlers' view there; nothing is written and no handler runs."""
    async with DurableRunner(db, handlers=[EventAccumulator(), State([])]) as r:
        run = await r.start(cart())
        await r.send(run.id, "add", "apple")
        before = await r.send(run.id, "add", "pear")
        view = await r.query(run.id, lambda data: (data[State], data[EventAccumulator]))
        assert view == (["apple", "pear"], [{"added": "apple"}, {"added": "pear"}])
        entries = await r.query(run.id, lambda data: len(data[EffectLogger].entries))
        assert entries == len((await r.get_log(run.id)).entries)
        after = await r.get(run.id)
        assert after.revision == before.revision

        def overwrite(data: Any) -> None:
            data[State] = []

        with pytest.raises(TypeError):
            await r.query(run.id, overwrite)  # a read-only view
        done = await r.send(run.id, "add", "checkout")
        assert done.outcome == Done(["apple", "pear"])
        with pytest.raises(ResumeError):
            await r.query(run.id, lambda data: data[State])


async def test_query_of_a_running_step_is_a_conflict(db: str) -> None:
    """A run busy in a step cannot be queried (its state is changing): ConflictError."""
    gate = anyio.Event()

    async def wait() -> str:
        await gate.wait()
        return "x"

    @computation(name="msg.busy", version=1)
    def busy() -> Generator[Any, Any, str]:
        value: str = yield Call(wait)
        return value

    async with DurableRunner(db) as r:
        run = await r.start(busy(), wait=False)
        with pytest.raises(ConflictError):
            await r.query(run.id, lambda data: None)
        gate.set()
        assert (await finished(r, run.id)).outcome == Done("x")


# -- kill -9 while a message is being delivered ----------------------------------------------

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.mark.parametrize("kill_at", ["before:0", "after:0", "before:1", "after:1"])
async def test_each_message_is_delivered_once_across_a_sigkill(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., bool], kill_at: str
) -> None:
    """Two workers each send one message; the delivering process SIGKILLs itself before or
    after the external effect that follows a Receive. recover() in another process finishes:
    each message consumed once, by the Receive it was meant for, each effect applied once."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    common = ("--db", url, "--counter", counter, "--run-id", "m1", "--owner", "w1")
    forked(*common, "--action", "start", "--flow", "messages", may_finish=True)
    killed = [
        forked(
            *common,
            "--action",
            "send",
            "--answer",
            f'"m{i}"',
            "--kill-at",
            kill_at,
            may_finish=True,
        )
        for i in range(2)
    ]
    assert killed.count(True) == 1

    async with DurableRunner(url, handlers=flows.HANDLERS, owner="w1") as runner:
        recovered = await runner.recover()
        assert [r.id for r in recovered] == ["m1"]
        done = await finished(runner, "m1")
        assert done.outcome == Done(["m0", "m1"])
        log = await runner.get_log("m1")
        assert [e.result for e in log.entries if e.effect == "effects.Receive"] == ["m0", "m1"]

    attempts, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == [0, 1]
    keys = [key for key, _ in attempts]
    assert len(set(keys)) == 2  # an effect run again (killed after it) kept its key
    if kill_at.startswith("after"):
        assert len(keys) == 3


async def test_messages_go_with_their_run_when_purged(db: str, tmp_path: Path) -> None:
    """Purging a finished run removes its messages too (the table cascades from the run)."""
    async with DurableRunner(db) as r:
        run = await r.start(three_in_order())
        for text in ("one", "two", "three", "unused"):
            await r.send(run.id, "t", text)
        await r.resume(run.id, None)
        assert (await finished(r, run.id)).outcome == Done(["one", "two", "three"])
        assert await r.purge(older_than=0) == 1
    path = db.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM effects_messages").fetchone() == (0,)


async def test_two_runners_on_postgres_send_to_one_run(pg_database_url: str) -> None:
    """On PostgreSQL: messages sent from two runners (as from two processes) while the run
    waits elsewhere are delivered in sending order, once each."""
    async with (
        DurableRunner(pg_database_url, owner="a") as a,
        DurableRunner(pg_database_url, owner="b") as b,
    ):
        run = await a.start(three_in_order())
        await a.send(run.id, "t", "one")
        await b.send(run.id, "t", "two")
        await a.send(run.id, "t", "three")
        await b.resume(run.id, None)
        done = await finished(b, run.id)
        assert done.outcome == Done(["one", "two", "three"])


@computation(name="msg.timed", version=1)
def timed(seconds: float) -> Generator[Any, Any, str]:
    try:
        message: str = yield Receive("reply", input=str, timeout=seconds)
    except TimeoutError as err:
        yield Call(note, "timed out")
        return f"timeout: {err}"
    return message


async def test_a_receive_times_out_by_a_durable_timer(db: str) -> None:
    """No message within the timeout: the runner's timer loop raises TimeoutError at the
    Receive (recorded, so a replay raises it there again); the deadline is stored on the run."""
    SEEN.clear()
    async with DurableRunner(db, timer_poll=0.05) as r:
        run = await r.start(timed(0.2))
        assert run.prompt == {"receive": "reply", "timeout": 0.2}
        assert run.wake_at is not None
        done = await finished(r, run.id)
        assert done.outcome == Done("timeout: no message on 'reply' came in time")
        log = await r.get_log(run.id)
        first = log.entries[0]
        assert (first.effect, first.status) == ("effects.Receive", "error")
    assert SEEN == ["timed out"]


async def test_a_message_before_the_timeout_wins_and_cold_resumes_keep_the_deadline(
    db: str,
) -> None:
    """A message in time is delivered (no timeout fires later); the deadline is counted from
    the first time the run waited, not from the latest cold resume (a message for another
    topic does not push it back)."""
    async with DurableRunner(db, timer_poll=0.05) as r:
        run = await r.start(timed(30))
        first = run.wake_at
        assert first is not None
        again = await r.send(run.id, "other", "not for this Receive")
        assert again.status is RunStatus.SUSPENDED
        assert again.wake_at == first
        done = await r.send(run.id, "reply", "in time")
        assert done.outcome == Done("in time")
