"""`transaction(comp)`: transactional handler state is rolled back when comp raises or is
cancelled, under the sync runner, the async runner, AsyncComputation and durable runs."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from effects import (
    AsyncComputation,
    Call,
    Cancelled,
    Done,
    EventAccumulator,
    Handler,
    State,
    Suspend,
    Transactional,
    Writer,
    Yield,
    arun,
    computation,
    handles,
    run,
    start,
    transaction,
    try_catch,
    with_handler,
)
from effects._std.control import Err, Ok
from effects.durable import DurableRunner, EffectLogger, Log, RunStatus

Counter = State.tagged("tx-counter")


def spend(amount: int, fail: bool) -> Generator[Any, Any, int]:
    yield State.modify(lambda b: b - amount)
    yield Writer.tell(f"spent {amount}")
    yield EventAccumulator.emit({"spent": amount})
    if fail:
        raise ValueError(f"cannot spend {amount}")
    return amount


def account(fail: bool) -> Generator[Any, Any, Any]:
    first = yield from try_catch(transaction(spend(10, False)))
    second = yield from try_catch(transaction(spend(25, fail)))
    balance = yield State.get()
    return first, second, balance


def stack(events: list[Any]) -> tuple[Handler, ...]:
    return (State(100), Writer(), EventAccumulator(output=True, on_event=events.append))


def test_a_failed_transaction_rolls_back_state_writer_and_events() -> None:
    """State, Writer and EventAccumulator changes of the failing transaction are undone; the
    successful one's are kept; events already streamed stay streamed."""
    streamed: list[Any] = []
    ((first, second, balance), told), events = run(account(True), *stack(streamed))
    assert first == Ok(10)
    assert type(second) is Err
    assert str(second.error) == "cannot spend 25"
    assert balance == 90
    assert told == ["spent 10"]
    assert events == [{"spent": 10}]
    assert streamed == [{"spent": 10}, {"spent": 25}]


def test_a_successful_transaction_keeps_everything() -> None:
    """Without an error nothing is rolled back."""
    ((_, second, balance), told), _ = run(account(False), *stack([]))
    assert second == Ok(25)
    assert balance == 65
    assert told == ["spent 10", "spent 25"]


def test_nested_transactions_roll_back_to_their_own_start() -> None:
    """An inner failure restores the state as it was when the inner transaction began; the
    outer transaction goes on and commits."""

    def inner() -> Generator[Any, Any, None]:
        yield State.put("inner")
        raise KeyError("inner failed")

    def outer() -> Generator[Any, Any, Any]:
        yield State.put("outer")
        result = yield from try_catch(transaction(inner()))
        assert type(result) is Err
        return (yield State.get())

    def whole(fail_outer: bool) -> Generator[Any, Any, Any]:
        got = yield from try_catch(transaction(_then_fail(outer(), fail_outer)))
        return got, (yield State.get())

    assert run(whole(False), State("start")) == (Ok("outer"), "outer")
    got, final = run(whole(True), State("start"))
    assert type(got) is Err
    assert final == "start"


def _then_fail(comp: Any, fail: bool) -> Generator[Any, Any, Any]:
    value = yield from comp
    if fail:
        raise RuntimeError("outer failed")
    return value


def test_preserve_keeps_the_named_families() -> None:
    """A preserved handler family (a tagged State used as a counter) is not rolled back."""

    def attempt() -> Generator[Any, Any, None]:
        yield Counter.modify(lambda n: n + 1)
        yield State.put("changed")
        raise ValueError("no")

    def comp() -> Generator[Any, Any, Any]:
        yield from try_catch(transaction(attempt(), preserve=[Counter]))
        return (yield State.get()), (yield Counter.get())

    assert run(comp(), State("kept"), Counter(0)) == ("kept", 1)


class Ledger(Handler):
    """A user handler that declares itself transactional."""

    def __init__(self) -> None:
        self.lines: tuple[str, ...] = ()

    @handles(Yield)
    def _note(self, effect: Yield) -> None:
        self.lines = (*self.lines, str(effect.value))

    def snapshot(self) -> tuple[str, ...]:
        return self.lines

    def restore(self, snapshot: tuple[str, ...]) -> None:
        self.lines = snapshot

    def output(self, value: Any) -> Any:
        return value, self.lines


def test_any_handler_with_snapshot_and_restore_takes_part() -> None:
    """The protocol: a handler with snapshot()/restore() is rolled back like State."""
    assert isinstance(Ledger(), Transactional)

    def comp() -> Generator[Any, Any, Any]:
        yield Yield("a")
        yield from try_catch(transaction(_noted_then_fail()))
        yield Yield("c")

    assert run(comp(), Ledger()) == (None, ("a", "c"))


def _noted_then_fail() -> Generator[Any, Any, None]:
    yield Yield("b")
    raise ValueError("rolled back")


def test_cancellation_inside_a_transaction_rolls_back_before_outer_cleanup() -> None:
    """A run cancelled while suspended inside a transaction: the outer `finally` sees the
    state as it was before the transaction."""
    seen: list[Any] = []

    def body() -> Generator[Any, Any, None]:
        yield State.put("dirty")
        yield Yield("waiting")

    def comp() -> Generator[Any, Any, None]:
        try:
            yield from transaction(body())
        finally:
            seen.append((yield State.get()))

    outcome = start(comp(), State("clean"))
    assert type(outcome) is Suspend
    assert outcome.cancel("stop") == Cancelled("stop")
    assert seen == ["clean"]


def test_a_suspension_inside_a_transaction_is_not_a_failure() -> None:
    """A Yield pauses the transaction; after the answer it commits normally."""

    def comp() -> Generator[Any, Any, Any]:
        def body() -> Generator[Any, Any, Any]:
            yield State.put("changed")
            return (yield Yield("ok?"))

        answer = yield from transaction(body())
        return answer, (yield State.get())

    outcome = start(comp(), State("start"))
    assert type(outcome) is Suspend
    assert outcome.resume("yes") == Done(("yes", "changed"))


@pytest.mark.anyio
async def test_async_runner_and_async_computation() -> None:
    """Under arun, and cancelled through AsyncComputation while an async effect is pending."""

    async def slow(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    def body() -> Generator[Any, Any, int]:
        yield State.put("dirty")
        value = yield Call(slow, 1)
        raise ValueError(value)

    def comp() -> Generator[Any, Any, Any]:
        yield from try_catch(transaction(body()))
        return (yield State.get())

    assert await arun(comp(), State("clean")) == "clean"

    seen: list[Any] = []
    started = anyio.Event()

    async def never() -> None:
        started.set()
        await anyio.sleep_forever()

    def waiting() -> Generator[Any, Any, None]:
        try:

            def inner() -> Generator[Any, Any, None]:
                yield State.put("dirty")
                yield Call(never)

            yield from transaction(inner())
        finally:
            seen.append((yield State.get()))

    async with anyio.create_task_group() as tg:
        runner = await AsyncComputation.start(
            waiting(), tag="t", task_group=tg, handlers=[State("clean")]
        )
        await started.wait()
        await runner.cancel("stop")
    assert seen == ["clean"]


# -- durable ----------------------------------------------------------------------------------

CALLS: list[str] = []


def effect(what: str) -> str:
    CALLS.append(what)
    if what.startswith("fail"):
        raise ValueError(what)
    return what


@computation(name="tx.order", version=1)
def order() -> Generator[Any, Any, Any]:
    def reserve(item: str) -> Generator[Any, Any, str]:
        yield State.modify(lambda items: [*items, item])
        return (yield Call(effect, item))

    yield from try_catch(transaction(reserve("ok-1")))
    yield from try_catch(transaction(reserve("fail-2")))
    answer = yield Yield("confirm?", input=str)
    return [answer, (yield State.get())]


def test_replay_rolls_back_the_same() -> None:
    """An EffectLogger log replays the failed transaction's recorded error: the same rollback,
    no handler called again."""
    CALLS.clear()
    outcome = start(with_handler(order(), EffectLogger()), State([]))
    assert type(outcome) is Suspend
    log = Log.model_validate_json(outcome.data[EffectLogger].model_dump_json())
    assert CALLS == ["ok-1", "fail-2"]
    replayed = start(with_handler(order(), EffectLogger(log)), State([]))
    assert type(replayed) is Suspend
    assert CALLS == ["ok-1", "fail-2"]
    assert replayed.resume("yes") == Done(["yes", ["ok-1"]])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_durable_run_cold_resumed_rolls_back_the_same(tmp_path: Path) -> None:
    """A durable run suspended after a failed transaction, resumed by a new runner (cold, by
    replay): the rolled-back state is the same and no external effect is repeated."""
    CALLS.clear()
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    async with DurableRunner(url, handlers=State([])) as r:
        started = await r.start(order())
        assert started.status is RunStatus.SUSPENDED
    async with DurableRunner(url, handlers=State([])) as r:
        finished = await r.resume(started.id, "yes")
    assert finished.outcome == Done(["yes", ["ok-1"]])
    assert CALLS == ["ok-1", "fail-2"]
