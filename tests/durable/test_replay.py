"""Replay and cold resume: logged results without handlers, strict divergence, errors, events."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from effects import (
    Call,
    Clock,
    DivergenceError,
    Done,
    Effect,
    EventAccumulator,
    Fresh,
    LogError,
    State,
    Suspend,
    Throw,
    Yield,
    astart,
    computation,
    handler,
    start,
    with_handler,
)
from effects.durable import EffectLogger, Log, LogEntry


class GetUser(Effect[str]):
    uid: int


class GetOrder(Effect[str]):
    oid: int


class Counter:
    """Handlers that count their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def user(self, e: GetUser) -> str:
        self.calls.append(f"user{e.uid}")
        return f"user-{e.uid}"

    def order(self, e: GetOrder) -> str:
        self.calls.append(f"order{e.oid}")
        return f"order-{e.oid}"

    def charge(self, amount: int) -> str:
        self.calls.append(f"charge{amount}")
        return f"charged {amount}"

    def handler(self) -> Any:
        return handler({GetUser: self.user, GetOrder: self.order})


def through_json(log: Log) -> Log:
    return Log.model_validate_json(log.model_dump_json())


def log_of(outcome: Any) -> Log:
    assert isinstance(outcome, Suspend), outcome
    log: Log = outcome.data[EffectLogger]
    return log


def checkout(c: Counter) -> Generator[Any, Any, Any]:
    user = yield GetUser(1)
    qty = yield Yield(f"how many, {user}?")
    order = yield GetOrder(qty)
    paid = yield Call(c.charge, 10 * qty)
    yield State.modify(lambda n: n + qty)
    ok = yield Yield(f"confirm {order}: {paid}")
    return (user, order, paid, ok, (yield State.get()))


def test_replay_calls_no_handler() -> None:
    """With a log, recorded effects return their logged results; no handler runs again."""
    c = Counter()
    out = start(with_handler(checkout(c), EffectLogger()), State(0), c.handler())
    out = out.resume(2)  # type: ignore[union-attr]
    log = log_of(out)
    assert c.calls == ["user1", "order2", "charge20"]
    again = start(with_handler(checkout(c), EffectLogger(through_json(log))), State(0), c.handler())
    assert isinstance(again, Suspend)
    assert again.value == "confirm order-2: charged 20"
    assert c.calls == ["user1", "order2", "charge20"]
    assert again.resume(True) == Done(("user-1", "order-2", "charged 20", True, 2))


def test_cold_resume_three_restarts() -> None:
    """Each restart replays to the pending Yield and suspends with the same prompt; the new log
    holds every entry, so any number of successive cold resumes work."""
    c = Counter()
    prompts: list[str] = []
    out = start(with_handler(checkout(c), EffectLogger()), State(0), c.handler())
    assert isinstance(out, Suspend)
    prompts.append(out.value)
    text = log_of(out).model_dump_json()
    for _ in range(3):  # restart at the first question
        out = start(
            with_handler(checkout(c), EffectLogger(Log.model_validate_json(text))),
            State(0),
            c.handler(),
        )
        assert isinstance(out, Suspend)
        prompts.append(out.value)
        text = log_of(out).model_dump_json()
    out = out.resume(3)
    assert isinstance(out, Suspend)
    text = log_of(out).model_dump_json()
    for _ in range(3):  # restart at the second question
        out = start(
            with_handler(checkout(c), EffectLogger(Log.model_validate_json(text))),
            State(0),
            c.handler(),
        )
        assert isinstance(out, Suspend)
        prompts.append(out.value)
        text = log_of(out).model_dump_json()
    assert prompts == ["how many, user-1?"] * 4 + ["confirm order-3: charged 30"] * 3
    assert out.resume("yes") == Done(("user-1", "order-3", "charged 30", "yes", 3))
    assert c.calls == ["user1", "order3", "charge30"]
    assert [e.seq for e in log_of(out).entries] == [0, 1, 2, 3, 4]


def test_given_log_is_never_mutated() -> None:
    """The log handed to the logger is copied: resuming and finishing leave it unchanged."""
    c = Counter()
    out = start(with_handler(checkout(c), EffectLogger()), State(0), c.handler())
    log = log_of(out)
    before = log.model_dump_json()
    again = start(with_handler(checkout(c), EffectLogger(log)), State(0), c.handler())
    assert isinstance(again, Suspend)
    final = again.resume(1)
    assert isinstance(final, Suspend)
    assert final.resume("ok") == Done(("user-1", "order-1", "charged 10", "ok", 1))
    assert log.model_dump_json() == before


def test_divergence_on_a_different_effect() -> None:
    """A different effect type at a position raises DivergenceError naming the position and
    showing what the log expected and what the computation did."""

    def v2() -> Generator[Any, Any, Any]:
        yield GetUser(1)
        yield GetOrder(5)  # new: the log has the Yield here
        return (yield Yield("how many?"))

    c = Counter()
    log = log_of(start(with_handler(checkout(c), EffectLogger()), State(0), c.handler()))
    out = start(with_handler(v2(), EffectLogger(log)), c.handler())
    assert isinstance(out, Throw)
    err = out.error
    assert isinstance(err, DivergenceError)
    assert err.position == 1
    assert "Yield" in err.expected
    assert "how many, user-1?" in err.expected
    assert "GetOrder" in err.got
    assert "oid=5" in err.got
    assert "position 1" in str(err)
    assert c.calls == ["user1"]


def test_divergence_on_different_arguments() -> None:
    """The same effect type with other arguments diverges too."""

    def v2() -> Generator[Any, Any, Any]:
        yield GetUser(2)
        return (yield Yield("?"))

    c = Counter()
    log = log_of(start(with_handler(checkout(c), EffectLogger()), State(0), c.handler()))
    out = start(with_handler(v2(), EffectLogger(log)), c.handler())
    assert isinstance(out, Throw)
    assert isinstance(out.error, DivergenceError)
    assert out.error.position == 0
    assert "uid=1" in out.error.expected
    assert "uid=2" in out.error.got


def test_divergence_when_the_computation_ends_early() -> None:
    """A computation that returns (or raises) before the log is used up diverges as well."""

    def short() -> Generator[Any, Any, Any]:
        return (yield GetUser(1))

    def raising() -> Generator[Any, Any, Any]:
        yield GetUser(1)
        raise RuntimeError("changed")

    c = Counter()
    log = log_of(start(with_handler(checkout(c), EffectLogger()), State(0), c.handler()))
    for comp in (short(), raising()):
        out = start(with_handler(comp, EffectLogger(log)), c.handler())
        assert isinstance(out, Throw)
        assert isinstance(out.error, DivergenceError)
        assert out.error.position == 1
        assert "the end of the computation" in out.error.got


def test_a_caught_divergence_still_fails_the_run() -> None:
    """Swallowing the DivergenceError does not make the replay right."""

    def swallowing() -> Generator[Any, Any, Any]:
        try:
            yield GetUser(9)
        except Exception:
            pass
        return "fine?"

    c = Counter()
    log = log_of(start(with_handler(checkout(c), EffectLogger()), State(0), c.handler()))
    out = start(with_handler(swallowing(), EffectLogger(log)), c.handler())
    assert isinstance(out, Throw)
    assert isinstance(out.error, DivergenceError)
    assert out.error.position == 0


def test_allow_divergence_continues_live() -> None:
    """With allow_divergence=True the run continues live from the first mismatch and the rest
    of the old log is dropped."""

    def v2() -> Generator[Any, Any, Any]:
        user = yield GetUser(1)
        order = yield GetOrder(7)
        return (user, order, (yield Yield("v2?")))

    c = Counter()
    out = start(with_handler(checkout(c), EffectLogger()), State(0), c.handler())
    out = out.resume(2)  # type: ignore[union-attr]
    log = log_of(out)
    assert len(log.entries) == 5
    c.calls.clear()
    out = start(with_handler(v2(), EffectLogger(log, allow_divergence=True)), c.handler())
    assert isinstance(out, Suspend)
    assert out.value == "v2?"
    assert c.calls == ["order7"]
    new = log_of(out)
    assert [(e.seq, e.effect.rsplit(".", 1)[1], e.status) for e in new.entries] == [
        (0, "GetUser", "done"),
        (1, "GetOrder", "done"),
        (2, "Yield", "pending"),
    ]
    assert out.resume(True) == Done(("user-1", "order-7", True))


def test_allow_divergence_accepts_an_early_end() -> None:
    """With allow_divergence=True a computation may end before the log does."""
    c = Counter()
    log = log_of(start(with_handler(checkout(c), EffectLogger()), State(0), c.handler()))

    def short() -> Generator[Any, Any, Any]:
        return (yield GetUser(1))

    out = start(with_handler(short(), EffectLogger(log, allow_divergence=True)), c.handler())
    assert out == Done("user-1")


def test_errors_are_replayed() -> None:
    """A recorded error is raised again at the same point on replay, without the handler."""
    calls: list[int] = []

    def flaky(e: GetUser) -> str:
        calls.append(e.uid)
        raise LookupError(f"no user {e.uid}")

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield GetUser(4)
        except LookupError as err:
            return (yield Yield(f"sorry: {err}"))

    hs = handler({GetUser: flaky})
    log = log_of(start(with_handler(comp(), EffectLogger()), hs))
    out = start(with_handler(comp(), EffectLogger(through_json(log))), hs)
    assert isinstance(out, Suspend)
    assert out.value == "sorry: no user 4"
    assert calls == [4]


def test_event_stream_is_quiet_during_replay() -> None:
    """`EventAccumulator(on_event=...)` streams nothing while a cold resume replays, up to the
    pending Yield; the accumulator still holds the replayed events; later events stream."""
    streamed: list[str] = []

    def comp() -> Generator[Any, Any, Any]:
        yield EventAccumulator.emit("started")
        user = yield GetUser(1)
        yield EventAccumulator.emit(f"found {user}")
        answer = yield Yield("go on?")
        yield EventAccumulator.emit(f"answered {answer}")
        return answer

    c = Counter()

    def run_with(logger: EffectLogger) -> Any:
        return start(
            with_handler(comp(), logger),
            EventAccumulator(on_event=streamed.append),
            c.handler(),
        )

    out = run_with(EffectLogger())
    assert streamed == ["started", "found user-1"]
    log = log_of(out)
    streamed.clear()
    out = run_with(EffectLogger(through_json(log)))
    assert isinstance(out, Suspend)
    assert streamed == []
    assert out.data[EventAccumulator] == ["started", "found user-1"]
    assert out.resume("yes") == Done("yes")
    assert streamed == ["answered yes"]


def test_events_after_a_crash_point_stream_again() -> None:
    """A log that ends without a pending Yield (a crash) stops replaying at its last entry:
    what follows is live, events included."""
    streamed: list[str] = []

    def comp() -> Generator[Any, Any, Any]:
        yield EventAccumulator.emit("a")
        yield GetUser(1)
        yield EventAccumulator.emit("b")
        return (yield GetOrder(2))

    c = Counter()
    logger = EffectLogger()
    full = start(
        with_handler(comp(), logger), EventAccumulator(on_event=streamed.append), c.handler()
    )
    assert full == Done("order-2")
    assert streamed == ["a", "b"]
    # The process died while GetOrder ran: only GetUser had been recorded.
    crash_log = Log(entries=logger.log.entries[:1])
    streamed.clear()
    c.calls.clear()
    out = start(
        with_handler(comp(), EffectLogger(crash_log)),
        EventAccumulator(on_event=streamed.append),
        c.handler(),
    )
    assert out == Done("order-2")
    assert streamed == ["b"]
    assert c.calls == ["order2"]


def test_handler_computations_run_in_their_own_scope_and_are_recorded() -> None:
    """A handler that answers with a computation (here: forwarding to an outer handler of the
    same effect) is recorded when the computation completes, and replayed without it."""
    calls: list[str] = []

    def outer(e: GetUser) -> str:
        calls.append("outer")
        return f"user-{e.uid}"

    def inner(e: GetUser) -> Generator[Any, Any, str]:
        calls.append("inner")
        name: str = yield GetUser(e.uid * 10)  # reaches the outer handler, not itself
        return name.upper()

    def comp() -> Generator[Any, Any, Any]:
        u = yield GetUser(4)
        return (yield Yield(u))

    hs = (handler({GetUser: inner}), handler({GetUser: outer}))
    out = start(with_handler(comp(), EffectLogger()), *hs)
    assert isinstance(out, Suspend)
    assert out.value == "USER-40"
    log = log_of(out)
    assert [(e.args, e.result) for e in log.entries[:1]] == [({"uid": 4}, "USER-40")]
    again = start(with_handler(comp(), EffectLogger(log)), *hs)
    assert isinstance(again, Suspend)
    assert again.value == "USER-40"
    assert calls == ["inner", "outer"]


def test_malformed_logs_are_rejected() -> None:
    """A log whose positions do not increase, or with a pending entry before the end, is
    rejected with LogError."""
    entry = {"effect": "m.E", "fingerprint": "{}", "args": {}, "status": "done"}
    with pytest.raises(LogError, match="strictly increase"):
        Log.model_validate({"entries": [entry | {"seq": 2}, entry | {"seq": 1}]})
    pending = entry | {"status": "pending"}
    with pytest.raises(LogError, match="pending"):
        Log.model_validate({"entries": [pending | {"seq": 1}, entry | {"seq": 2}]})
    bad = Log.model_construct(
        entries=[
            LogEntry.model_construct(
                seq=1, effect="m.E", fingerprint="", args={}, status="error", error=None
            )
        ]
    )
    with pytest.raises(LogError, match="error entry without its error"):
        EffectLogger(bad)


def test_corrupted_log_json_is_rejected() -> None:
    """Corrupted or malformed JSON is rejected with LogError and a clear message."""
    with pytest.raises(LogError, match="not a valid effect log"):
        Log.model_validate_json('{"entries": [{"seq": 1, "effect": ')
    with pytest.raises(LogError, match=r"entries\.0\.status"):
        Log.model_validate_json(
            '{"entries": [{"seq": 1, "effect": "x", "fingerprint": "", "args": {}, '
            '"status": "maybe"}]}'
        )
    with pytest.raises(LogError, match="expected a Log"):
        EffectLogger({"entries": []})  # type: ignore[arg-type]


@computation(name="tests.durable.replay.wizard")
def wizard() -> Generator[Any, Any, Any]:
    name = yield Yield("name?")
    return f"hello {name}"


@computation(name="tests.durable.replay.other")
def other() -> Generator[Any, Any, Any]:
    return (yield Yield("other?"))


def test_log_of_another_computation_or_run_is_rejected() -> None:
    """A log records its computation and run; handing it to another one is a LogError."""
    out = start(with_handler(wizard(), EffectLogger(computation=wizard, run_id="w1")))
    log = through_json(log_of(out))
    assert (log.computation, log.version, log.run_id) == ("tests.durable.replay.wizard", 1, "w1")
    with pytest.raises(LogError, match=r"belongs to computation 'tests.durable.replay.wizard'"):
        EffectLogger(log, computation=other)
    with pytest.raises(LogError, match="belongs to run 'w1'"):
        EffectLogger(log, computation=wizard, run_id="w2")
    again = start(with_handler(wizard(), EffectLogger(log, computation=wizard(), run_id="w1")))
    assert isinstance(again, Suspend)
    assert again.resume("bob") == Done("hello bob")


# -- async ----------------------------------------------------------------------------------


async def fetch(uid: int) -> str:
    await anyio.lowlevel.checkpoint()
    return f"async-user-{uid}"


@pytest.mark.anyio
async def test_async_cold_resume() -> None:
    """Async handlers' results are recorded when their awaitables complete, and replay under
    astart without awaiting anything."""
    calls: list[str] = []

    async def order(e: GetOrder) -> str:
        calls.append(f"order{e.oid}")
        await anyio.lowlevel.checkpoint()
        return f"async-order-{e.oid}"

    def comp() -> Generator[Any, Any, Any]:
        user = yield Call(fetch, 1)
        yield Clock.sleep(0)
        order_ = yield GetOrder(2)
        answer = yield Yield(f"{user}/{order_}")
        return (answer, (yield Fresh.uuid()))

    hs = (handler({GetOrder: order}), Clock(), Fresh())
    out = await astart(with_handler(comp(), EffectLogger()), *hs)
    assert isinstance(out, Suspend)
    log = through_json(out.data[EffectLogger])
    # A sleep records its wake-up time (the timer), then itself once it is over.
    assert [(e.effect, e.status) for e in log.entries] == [
        ("effects.Call", "done"),
        ("effects.durable.Timer", "done"),
        ("effects.Sleep", "done"),
        (f"{GetOrder.__module__}.GetOrder", "done"),
        ("effects.Yield", "pending"),
    ]
    again = await astart(with_handler(comp(), EffectLogger(log)), *hs)
    assert isinstance(again, Suspend)
    assert again.value == "async-user-1/async-order-2"
    assert calls == ["order2"]
    done = await again.aresume("ok")
    assert isinstance(done, Done)
    assert done.value[0] == "ok"


@pytest.mark.anyio
async def test_async_errors_are_recorded() -> None:
    """An awaitable that raises is recorded as an error and replayed as one."""
    calls: list[int] = []

    async def refuse(e: GetUser) -> str:
        calls.append(e.uid)
        await anyio.lowlevel.checkpoint()
        raise PermissionError("denied")

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield GetUser(1)
        except PermissionError as err:
            return (yield Yield(str(err)))

    hs = handler({GetUser: refuse})
    out = await astart(with_handler(comp(), EffectLogger()), hs)
    assert isinstance(out, Suspend)
    again = await astart(with_handler(comp(), EffectLogger(out.data[EffectLogger])), hs)
    assert isinstance(again, Suspend)
    assert again.value == "denied"
    assert calls == [1]
