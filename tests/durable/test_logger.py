"""EffectLogger recording: what is logged and how, checkpoints, idempotency keys, at-most-once."""

from __future__ import annotations

import time
from collections.abc import Generator
from datetime import datetime
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from effects import (
    Call,
    Cancelled,
    Clock,
    Done,
    Effect,
    EventAccumulator,
    Fresh,
    InterruptedEffect,
    Random,
    Reader,
    State,
    Suspend,
    Throw,
    Writer,
    Yield,
    astart,
    handler,
    start,
    with_handler,
)
from effects.durable import Checkpoint, EffectLogger, Log, at_most_once, idempotency_key


class GetScore(Effect[int]):
    """A user effect with an int result."""

    n: int


class Notify(Effect[None]):
    """A user effect with no result."""

    text: str


class Charge(Effect[str]):
    """An at-most-once effect: charging twice is worse than not knowing."""

    at_most_once: ClassVar[bool] = True
    amount: int


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs or is recorded."""


def name_of(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def log_of(outcome: Any) -> Log:
    assert isinstance(outcome, Suspend), outcome
    log = outcome.data[EffectLogger]
    assert isinstance(log, Log)
    return log


def double(x: int) -> int:
    return 2 * x


def test_records_world_effects_and_skips_replayable_ones() -> None:
    """Yield, Call, Fresh, Random, Clock and user effects are logged; State, Reader, Writer and
    EventAccumulator are not."""

    def comp() -> Generator[Any, Any, Any]:
        yield State.put((yield State.get()) + 1)
        yield Reader.ask()
        yield Writer.tell("w")
        yield EventAccumulator.emit("e")
        yield Fresh.uuid()
        yield Random.randint(1, 6)
        yield Clock.now()
        yield GetScore(3)
        yield Call(double, 4)
        return (yield Yield("more?"))

    scores = handler({GetScore: lambda e: e.n * 10})
    out = start(
        with_handler(comp(), EffectLogger()),
        State(0),
        Reader("r"),
        Writer(),
        EventAccumulator(),
        Fresh(),
        Random(seed=1),
        Clock(),
        scores,
    )
    log = log_of(out)
    assert [e.effect for e in log.entries] == [
        "effects.NewUuid",
        "effects.RandomInt",
        "effects.Now",
        name_of(GetScore),
        "effects.Call",
        "effects.Yield",
    ]
    assert [e.seq for e in log.entries] == [0, 1, 2, 3, 4, 5]
    assert [e.status for e in log.entries] == ["done"] * 5 + ["pending"]
    score, call, prompt = log.entries[3], log.entries[4], log.entries[5]
    assert (score.args, score.result, score.error) == ({"n": 3}, 30, None)
    assert call.args == {"fn": name_of(double), "args": [4], "kwargs": {}}
    assert call.result == 8
    assert prompt.args == {"value": "more?", "input": None}
    assert prompt.result is None
    datetime.fromisoformat(log.entries[2].result)


def test_replayable_entries_stay_on_the_fast_path() -> None:
    """The logger leaves the table entries of replayable handlers untouched (same objects);
    entries of other handlers are replaced by recording wrappers."""
    state = State(0).install()
    scores = handler({GetScore: lambda e: e.n})
    table: dict[type, Any] = {t: (fn, None, state) for t, fn in state.effect_handlers().items()}
    table[GetScore] = (scores.effect_handlers()[GetScore], object(), scores)
    before = dict(table)
    EffectLogger().install().intercept(table)
    for t in state.effect_handlers():
        assert table[t] is before[t]
    assert table[GetScore] is not before[GetScore]


def test_none_result_is_recorded_as_done() -> None:
    """An effect answered with None is recorded with status done, so it replays too."""
    sent: list[str] = []

    def comp() -> Generator[Any, Any, Any]:
        r = yield Notify("hi")
        return (r, (yield Yield("next")))

    notify = handler({Notify: lambda e: sent.append(e.text)})
    log = log_of(start(with_handler(comp(), EffectLogger()), notify))
    assert log.entries[0].status == "done"
    assert log.entries[0].result is None
    out = start(with_handler(comp(), EffectLogger(log)), notify)
    assert isinstance(out, Suspend)
    assert out.resume("x") == Done((None, "x"))
    assert sent == ["hi"]


def test_handler_errors_are_recorded() -> None:
    """A handler's exception is recorded with its type, message and plain arguments."""

    def fail(e: GetScore) -> int:
        raise ValueError(f"no score {e.n}")

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield GetScore(7)
        except ValueError as err:
            return (yield Yield(str(err)))

    log = log_of(start(with_handler(comp(), EffectLogger()), handler({GetScore: fail})))
    entry = log.entries[0]
    assert entry.status == "error"
    assert entry.result is None
    assert entry.error == {
        "type": "builtins.ValueError",
        "message": "no score 7",
        "args": ["no score 7"],
    }


def test_suspend_data_holds_the_log_with_a_pending_yield() -> None:
    """`Suspend.data[EffectLogger]` is the current Log; the Yield waiting for input is its last,
    pending entry; the Log round-trips through JSON exactly."""

    def comp() -> Generator[Any, Any, Any]:
        a = yield GetScore(1)
        b = yield Yield({"ask": "b", "after": a})
        c = yield GetScore(b)
        return (yield Yield("c?")) + c

    scores = handler({GetScore: lambda e: e.n + 100})
    out = start(with_handler(comp(), EffectLogger(run_id="run-1")), scores)
    assert isinstance(out, Suspend)
    log = log_of(out)
    assert log.run_id == "run-1"
    assert [(e.seq, e.status) for e in log.entries] == [(0, "done"), (1, "pending")]
    assert log.entries[1].args == {"value": {"ask": "b", "after": 101}, "input": None}
    assert Log.model_validate_json(log.model_dump_json()) == log
    out2 = out.resume(5)
    assert isinstance(out2, Suspend)
    log2 = log_of(out2)
    assert [(e.seq, e.status, e.result) for e in log2.entries] == [
        (0, "done", 101),
        (1, "done", 5),
        (2, "done", 105),
        (3, "pending", None),
    ]
    # A snapshot: resuming did not change the first suspension's log.
    assert [e.status for e in log.entries] == ["done", "pending"]
    assert out2.resume(1) == Done(106)


def test_on_log_gets_the_final_log_on_every_exit() -> None:
    """`on_log` is called once with the final log when the run returns, raises or is
    cancelled."""
    logs: list[Log] = []
    scores = handler({GetScore: lambda e: e.n})

    def returns() -> Generator[Any, Any, Any]:
        return (yield GetScore(1))

    def raises() -> Generator[Any, Any, Any]:
        yield GetScore(2)
        raise KeyError("gone")

    def waits() -> Generator[Any, Any, Any]:
        yield GetScore(3)
        return (yield Yield("?"))

    assert start(with_handler(returns(), EffectLogger(on_log=logs.append)), scores) == Done(1)
    out = start(with_handler(raises(), EffectLogger(on_log=logs.append)), scores)
    assert isinstance(out, Throw)
    assert isinstance(out.error, KeyError)
    suspended = start(with_handler(waits(), EffectLogger(on_log=logs.append)), scores)
    assert isinstance(suspended, Suspend)
    assert len(logs) == 2
    assert isinstance(suspended.cancel("bye"), Cancelled)
    assert [[e.args for e in log.entries] for log in logs[:2]] == [[{"n": 1}], [{"n": 2}]]
    # The Yield never got its answer: the cancelled run's log does not keep it pending, it
    # records where the cancellation was delivered (a replay cancels there again).
    assert [(e.args, e.status) for e in logs[2].entries] == [
        ({"n": 3}, "done"),
        ({"value": "?", "input": None}, "error"),
    ]
    assert logs[2].entries[1].error == {
        "type": "effects.Cancellation",
        "message": "bye",
        "args": ["bye"],
    }


def test_log_property_shows_the_latest_installation() -> None:
    """`logger.log` is a snapshot of the log of the logger's latest installation."""
    logger = EffectLogger()
    assert logger.log.entries == []

    def comp() -> Generator[Any, Any, Any]:
        yield GetScore(1)
        return (yield GetScore(2))

    assert start(with_handler(comp(), logger), handler({GetScore: lambda e: e.n})) == Done(2)
    assert [e.result for e in logger.log.entries] == [1, 2]
    assert logger.log.run_id == logger.run_id


# -- checkpoints ----------------------------------------------------------------------------


class Recorder:
    """A Checkpoint handler and side-effect handlers that write to one ordered trace."""

    def __init__(self) -> None:
        self.trace: list[tuple[Any, ...]] = []
        self.logs: list[Log] = []

    def checkpoint(self, effect: Checkpoint) -> None:
        last = effect.log.entries[-1]
        self.trace.append(("checkpoint", effect.reason, last.seq, last.status))
        self.logs.append(effect.log)

    def handlers(self) -> tuple[Any, ...]:
        def charge(e: Charge) -> str:
            self.trace.append(("charge", e.amount, idempotency_key()))
            return f"receipt-{e.amount}"

        def notify(e: Notify) -> None:
            self.trace.append(("notify", e.text, idempotency_key()))

        def score(e: GetScore) -> int:
            self.trace.append(("score", e.n, idempotency_key()))
            return e.n

        return (
            handler({Checkpoint: self.checkpoint}),
            handler({Notify: notify}, external=True),
            handler({GetScore: score}),
            handler({Charge: charge}),
        )


def shop() -> Generator[Any, Any, Any]:
    n = yield GetScore(1)
    yield Notify("start")
    receipt = yield Charge(10 * n)
    total = yield Call(double, n)
    yield Notify("done")
    return (receipt, total)


def test_checkpoints_in_order() -> None:
    """A checkpoint follows each completed external effect and precedes each at-most-once
    effect (with its pending write-ahead entry); in-memory effects cost none."""
    rec = Recorder()
    logger = EffectLogger(run_id="r", checkpoints=True)
    assert start(with_handler(shop(), logger), *rec.handlers()) == Done(("receipt-10", 2))
    assert rec.trace == [
        ("score", 1, None),  # not external: no checkpoint, no idempotency key
        ("notify", "start", "r:1"),
        ("checkpoint", "external", 1, "done"),
        ("checkpoint", "write_ahead", 2, "pending"),
        ("charge", 10, "r:2"),
        ("checkpoint", "external", 3, "done"),  # Call's default handler is external
        ("notify", "done", "r:4"),
        ("checkpoint", "external", 4, "done"),
    ]
    # Each checkpoint carries the whole log up to that point.
    assert [len(log.entries) for log in rec.logs] == [2, 3, 4, 5]
    assert rec.logs[1].entries[2].status == "pending"
    assert [e.status for e in rec.logs[2].entries] == ["done"] * 4


def test_no_checkpoints_unless_asked() -> None:
    """Without `checkpoints=True` nothing is yielded: no Checkpoint handler is needed."""
    rec = Recorder()
    hs = rec.handlers()[1:]
    assert start(with_handler(shop(), EffectLogger()), *hs) == Done(("receipt-10", 2))
    assert not [t for t in rec.trace if t[0] == "checkpoint"]


def test_checkpoint_after_a_failed_external_effect() -> None:
    """An external effect that raised is recorded as an error and checkpointed as well."""
    trace: list[tuple[str, str]] = []

    def refuse(e: Notify) -> None:
        raise ConnectionError("smtp down")

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield Notify("hi")
        except ConnectionError:
            return "gave up"

    out = start(
        with_handler(comp(), EffectLogger(checkpoints=True)),
        handler({Checkpoint: lambda e: trace.append((e.reason, e.log.entries[-1].status))}),
        handler({Notify: refuse}, external=True),
    )
    assert out == Done("gave up")
    assert trace == [("external", "error")]


def test_idempotency_key_is_stable_across_a_crash() -> None:
    """The external effect in flight at a crash has no entry; the cold-resumed run performs
    it again at the same position, with the same idempotency key; completed effects are not
    repeated."""
    keys: list[str | None] = []
    persisted: list[Log] = []
    crash = [True]

    def send(e: Notify) -> None:
        keys.append(idempotency_key())
        if e.text == "second" and crash[0]:
            crash[0] = False
            raise Crash

    def comp() -> Generator[Any, Any, Any]:
        yield Notify("first")
        yield Notify("second")
        return "sent"

    hs = (
        handler({Checkpoint: lambda e: persisted.append(e.log)}),
        handler({Notify: send}, external=True),
    )
    out = start(with_handler(comp(), EffectLogger(run_id="run-9", checkpoints=True)), *hs)
    assert isinstance(out, Throw)
    assert isinstance(out.error, Crash)
    assert keys == ["run-9:0", "run-9:1"]
    stored = Log.model_validate_json(persisted[-1].model_dump_json())
    assert [e.args["text"] for e in stored.entries] == ["first"]
    out = start(with_handler(comp(), EffectLogger(stored, checkpoints=True)), *hs)
    assert out == Done("sent")
    assert keys == ["run-9:0", "run-9:1", "run-9:1"]


@pytest.mark.anyio
async def test_idempotency_key_inside_an_awaitable() -> None:
    """An async handler's coroutine sees the key of its effect."""
    seen: list[str | None] = []

    async def send(text: str) -> str:
        await anyio.lowlevel.checkpoint()
        seen.append(idempotency_key())
        return text.upper()

    def comp() -> Generator[Any, Any, Any]:
        a = yield Call(send, "a")
        b = yield Call(send, "b")
        return a + b

    out = await astart(with_handler(comp(), EffectLogger(run_id="x")))
    assert out == Done("AB")
    assert seen == ["x:0", "x:1"]
    assert idempotency_key() is None


# -- at-most-once ---------------------------------------------------------------------------


def test_interrupted_at_most_once_effect_is_not_repeated() -> None:
    """A write-ahead entry without a result means the effect was cut off: replay raises
    InterruptedEffect naming it instead of running it again, and records that decision."""
    charges: list[int] = []
    persisted: list[Log] = []

    def charge(e: Charge) -> str:
        charges.append(e.amount)
        raise Crash

    def comp() -> Generator[Any, Any, Any]:
        n = yield GetScore(3)
        try:
            return (yield Charge(n))
        except InterruptedEffect as err:
            return (yield Yield(f"check payment: {err}"))

    hs = (
        handler({Checkpoint: lambda e: persisted.append(e.log)}),
        handler({GetScore: lambda e: e.n}),
        handler({Charge: charge}),
    )
    out = start(with_handler(comp(), EffectLogger(checkpoints=True)), *hs)
    assert isinstance(out, Throw)
    assert isinstance(out.error, Crash)
    assert charges == [3]
    stored = Log.model_validate_json(persisted[-1].model_dump_json())
    assert [e.status for e in stored.entries] == ["done", "pending"]

    out = start(with_handler(comp(), EffectLogger(stored, checkpoints=True)), *hs)
    assert isinstance(out, Suspend)
    assert charges == [3]
    assert "Charge" in out.value
    assert "amount=3" in out.value
    assert "interrupted" in out.value
    log = log_of(out)
    assert log.entries[1].status == "error"
    assert log.entries[1].error is not None
    assert log.entries[1].error["type"] == "effects.InterruptedEffect"
    # A further cold resume replays the same decision.
    again = start(with_handler(comp(), EffectLogger(log)), *hs)
    assert isinstance(again, Suspend)
    assert again.value == out.value
    assert charges == [3]


def test_uncaught_interruption_fails_the_run() -> None:
    """Without a handler in the computation, the run ends with InterruptedEffect."""
    calls: list[int] = []

    def comp() -> Generator[Any, Any, Any]:
        return (yield Charge(5))

    entries = [
        {"seq": 0, "effect": name_of(Charge), "fingerprint": '{"amount":5}'}
        | {"args": {"amount": 5}, "status": "pending"}
    ]
    log = Log.model_validate({"entries": entries})
    out = start(with_handler(comp(), EffectLogger(log)), handler({Charge: calls.append}))
    assert isinstance(out, Throw)
    assert isinstance(out.error, InterruptedEffect)
    assert calls == []


def test_completed_at_most_once_effect_replays() -> None:
    """An at-most-once effect that completed replays its result like any other."""
    charges: list[int] = []

    def charge(e: Charge) -> str:
        charges.append(e.amount)
        return "ok"

    def comp() -> Generator[Any, Any, Any]:
        r = yield Charge(1)
        return (r, (yield Yield("?")))

    hs = handler({Charge: charge})
    log = log_of(start(with_handler(comp(), EffectLogger()), hs))
    assert [e.status for e in log.entries] == ["done", "pending"]
    out = start(with_handler(comp(), EffectLogger(log)), hs)
    assert isinstance(out, Suspend)
    assert out.resume(2) == Done(("ok", 2))
    assert charges == [1]


def test_at_most_once_handler() -> None:
    """`at_most_once(handler)` marks every effect of that handler."""
    trace: list[str] = []

    def comp() -> Generator[Any, Any, Any]:
        return (yield GetScore(4))

    def score(e: GetScore) -> int:
        trace.append("run")
        return e.n

    out = start(
        with_handler(comp(), EffectLogger(checkpoints=True)),
        handler({Checkpoint: lambda e: trace.append(f"{e.reason}:{e.log.entries[-1].status}")}),
        at_most_once(handler({GetScore: score})),
    )
    assert out == Done(4)
    assert trace == ["write_ahead:pending", "run"]


# -- timestamps ------------------------------------------------------------------------------

STAMPS: dict[str, float] = {}


def stamped(name: str) -> str:
    STAMPS[name] = time.time()
    return name


def test_entries_carry_when_their_effect_started_and_ended() -> None:
    """Each recorded entry holds the UTC epoch seconds at which its effect was dispatched and
    completed: what its handler saw of the clock falls between the two, entries follow each
    other in time, and the pending Yield has a start and no end yet. An effect answered in
    memory (a plain handler's plain result) is timed once, when its handler returned."""

    def score(e: GetScore) -> int:
        STAMPS["score"] = time.time()
        return e.n

    def comp() -> Generator[Any, Any, Any]:
        yield GetScore(1)
        yield Call(stamped, "call")
        return (yield Yield("ok?"))

    before = time.time()
    out = start(with_handler(comp(), EffectLogger()), handler({GetScore: score}))
    after = time.time()
    score_e, call_e, ask = log_of(out).entries
    assert score_e.started_at is not None
    assert score_e.ended_at is not None
    assert call_e.started_at is not None
    assert call_e.ended_at is not None
    assert before <= STAMPS["score"] <= score_e.started_at == score_e.ended_at
    assert score_e.ended_at <= call_e.started_at <= STAMPS["call"] <= call_e.ended_at
    assert ask.status == "pending"
    assert ask.started_at is not None
    assert call_e.ended_at <= ask.started_at <= after
    assert ask.ended_at is None


def test_a_resumed_yield_keeps_its_start_and_replayed_entries_keep_their_times() -> None:
    """A cold resume replays entries with the times of the run that recorded them; the Yield
    answered after it started when the prompt was first shown and ended at the answer."""

    def comp() -> Generator[Any, Any, Any]:
        yield Call(stamped, "first")
        answer = yield Yield("ok?")
        yield Call(stamped, "second")
        return answer

    first = log_of(start(with_handler(comp(), EffectLogger())))
    stored = Log.model_validate_json(first.model_dump_json())
    assert stored == first  # the times survive the JSON round trip
    logs: list[Log] = []
    out = start(with_handler(comp(), EffectLogger(stored, on_log=logs.append)))
    assert isinstance(out, Suspend)
    answered = time.time()
    assert out.resume("yes") == Done("yes")
    call_e, ask, second = logs[-1].entries
    assert call_e == first.entries[0]
    assert ask.status == "done"
    assert ask.started_at == first.entries[1].started_at
    assert ask.ended_at is not None
    assert ask.ended_at >= answered
    assert second.started_at is not None
    assert second.ended_at is not None
    assert ask.ended_at <= second.started_at <= STAMPS["second"] <= second.ended_at


@pytest.mark.anyio
async def test_an_async_handler_s_entry_ends_when_its_awaitable_completes() -> None:
    """An effect answered by an awaitable ends when the await completes, not when the handler
    returned the awaitable."""

    async def slow_score(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        STAMPS["awaited"] = time.time()
        return n

    def comp() -> Generator[Any, Any, Any]:
        yield GetScore(3)
        return (yield Yield("ok?"))

    out = await astart(
        with_handler(comp(), EffectLogger()), handler({GetScore: lambda e: slow_score(e.n)})
    )
    entry = log_of(out).entries[0]
    assert entry.started_at is not None
    assert entry.ended_at is not None
    assert entry.started_at <= STAMPS["awaited"] <= entry.ended_at


def test_error_entries_carry_times_too() -> None:
    """An effect that raised is recorded with when it failed (an in-memory handler's, timed
    once: when it raised)."""

    def fail(e: GetScore) -> int:
        STAMPS["fail"] = time.time()
        raise ValueError("no score")

    def comp() -> Generator[Any, Any, Any]:
        with pytest.raises(ValueError, match="no score"):
            yield GetScore(1)
        return (yield Yield("ok?"))

    out = start(with_handler(comp(), EffectLogger()), handler({GetScore: fail}))
    entry = log_of(out).entries[0]
    assert entry.status == "error"
    assert entry.started_at is not None
    assert entry.ended_at is not None
    assert STAMPS["fail"] <= entry.started_at <= entry.ended_at
