"""durable_loop: long loops keep a bounded log and cold-resume from their latest state."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pydantic

from effects import (
    Done,
    Effect,
    SerializationError,
    State,
    Suspend,
    Throw,
    Yield,
    handler,
    run,
    start,
    with_handler,
)
from effects.durable import EffectLogger, Log, LoopDone, durable_loop

N = 1_000


class Score(Effect[int]):
    n: int


class Calls:
    def __init__(self) -> None:
        self.scores: list[int] = []
        self.steps: list[int] = []

    def handler(self) -> Any:
        def score(e: Score) -> int:
            self.scores.append(e.n)
            return e.n * 3

        return handler({Score: score})


def summing(calls: Calls, n: int, ask_at: frozenset[int] = frozenset()) -> Any:
    """A loop over (i, total): each iteration performs a recorded effect and a State op, and
    asks for a bonus at the iterations in `ask_at`."""

    def step(state: tuple[int, int]) -> Generator[Any, Any, Any]:
        i, total = state
        calls.steps.append(i)
        if i == n:
            return LoopDone(total)
        s = yield Score(i)
        yield State.modify(lambda k: k + 1)
        bonus = (yield Yield(f"bonus at {i}?")) if i in ask_at else 0
        return (i + 1, total + s + bonus)

    return durable_loop(step, (0, 0))


def expected(n: int, bonus: int = 0) -> int:
    return sum(3 * i for i in range(n)) + bonus


def test_thousand_iterations_keep_the_log_small() -> None:
    """1,000 iterations: the result is exact and the log holds the loop state plus the last
    iteration's entries."""
    calls = Calls()
    logs: list[Log] = []
    comp = with_handler(summing(calls, N), EffectLogger(on_log=logs.append))
    assert run(comp, State(0, output=True), calls.handler()) == (expected(N), N)
    assert calls.scores == list(range(N))
    (log,) = logs
    assert len(log.entries) <= 2
    head = log.entries[0]
    assert head.effect == "effects.durable.LoopState"
    assert head.result == {"iteration": N, "state": [N, expected(N)]}
    assert Log.model_validate_json(log.model_dump_json()) == log


def test_cold_resume_restarts_from_the_latest_state() -> None:
    """A run suspended in iteration 500 of 1,000 resumes from that iteration's state: earlier
    iterations are neither replayed nor performed again."""
    calls = Calls()
    ask = frozenset({500, 900})
    out = start(with_handler(summing(calls, N, ask), EffectLogger()), State(0), calls.handler())
    assert isinstance(out, Suspend)
    assert out.value == "bonus at 500?"
    log = out.data[EffectLogger]
    assert len(log.entries) == 3  # loop state, Score(500), the pending Yield
    assert log.entries[0].result == {"iteration": 500, "state": [500, expected(500)]}
    text = log.model_dump_json()
    assert len(text) < 1000

    for _ in range(3):
        calls.steps.clear()
        out = start(
            with_handler(summing(calls, N, ask), EffectLogger(Log.model_validate_json(text))),
            State(0),
            calls.handler(),
        )
        assert isinstance(out, Suspend)
        assert out.value == "bonus at 500?"
        assert calls.steps == [500]  # only the iteration in progress is replayed
        text = out.data[EffectLogger].model_dump_json()
    assert calls.scores == list(range(501))

    out = out.resume(7)
    assert isinstance(out, Suspend)
    assert out.value == "bonus at 900?"
    log = out.data[EffectLogger]
    assert len(log.entries) == 3
    calls.steps.clear()
    out = start(with_handler(summing(calls, N, ask), EffectLogger(log)), State(0), calls.handler())
    assert isinstance(out, Suspend)
    assert calls.steps == [900]
    # State is replayed only from the loop state on: the loop's state carries what matters.
    assert out.resume(1000) == Done(expected(N, 1007))
    assert calls.scores == list(range(N))


def test_positions_stay_increasing_after_pruning() -> None:
    """Pruned iterations leave gaps; positions still increase, so the log stays valid."""
    calls = Calls()
    out = start(
        with_handler(summing(calls, 10, frozenset({5})), EffectLogger()), State(0), calls.handler()
    )
    assert isinstance(out, Suspend)
    seqs = [e.seq for e in out.data[EffectLogger].entries]
    assert seqs == sorted(set(seqs))
    assert seqs[0] > 5


def test_without_a_logger_it_is_a_plain_loop() -> None:
    """Without an EffectLogger, durable_loop just loops."""
    calls = Calls()
    assert run(summing(calls, 50), State(0), calls.handler()) == expected(50)


class Progress(pydantic.BaseModel):
    """A loop state model."""

    done: list[int] = []
    label: str = ""


def test_model_state_round_trips() -> None:
    """A pydantic model state is stored as JSON and comes back as the model."""
    seen: list[Any] = []

    def step(p: Progress) -> Generator[Any, Any, Any]:
        seen.append(type(p))
        if len(p.done) == 3:
            return LoopDone(p)
        answer = yield Yield(f"item {len(p.done)}?")
        return Progress(done=[*p.done, answer], label=f"after {answer}")

    out = start(with_handler(durable_loop(step, Progress()), EffectLogger()))
    assert isinstance(out, Suspend)
    out = out.resume(10)
    assert isinstance(out, Suspend)
    log = Log.model_validate_json(out.data[EffectLogger].model_dump_json())
    seen.clear()
    out = start(with_handler(durable_loop(step, Progress()), EffectLogger(log)))
    assert isinstance(out, Suspend)
    assert out.value == "item 1?"
    assert seen == [Progress]
    out = out.resume(20)
    assert isinstance(out, Suspend)
    assert out.resume(30) == Done(Progress(done=[10, 20, 30], label="after 30"))


def test_nested_loops() -> None:
    """A loop inside a loop's step: both stay bounded and a cold resume continues exactly."""
    calls = Calls()

    def inner(state: tuple[int, int, int]) -> Generator[Any, Any, Any]:
        outer_i, j, acc = state
        if j == 4:
            return LoopDone(acc)
        s = yield Score(outer_i * 10 + j)
        if (outer_i, j) == (2, 3):
            yield Yield("halfway")
        return (outer_i, j + 1, acc + s)

    def outer(state: tuple[int, int]) -> Generator[Any, Any, Any]:
        i, total = state
        if i == 5:
            return LoopDone(total)
        part = yield from durable_loop(inner, (i, 0, 0), key="inner")
        return (i + 1, total + part)

    def comp() -> Generator[Any, Any, Any]:
        return (yield from durable_loop(outer, (0, 0), key="outer"))

    want = sum(3 * (i * 10 + j) for i in range(5) for j in range(4))
    out = start(with_handler(comp(), EffectLogger()), calls.handler())
    assert isinstance(out, Suspend)
    log = out.data[EffectLogger]
    assert [e.effect.rsplit(".", 1)[1] for e in log.entries] == [
        "LoopState",
        "LoopState",
        "Score",
        "Yield",
    ]
    before = len(calls.scores)
    out = start(
        with_handler(comp(), EffectLogger(Log.model_validate_json(log.model_dump_json()))),
        calls.handler(),
    )
    assert isinstance(out, Suspend)
    assert len(calls.scores) == before
    assert out.resume(None) == Done(want)
    assert calls.scores == [i * 10 + j for i in range(5) for j in range(4)]


def test_unserializable_state_fails_at_the_iteration() -> None:
    """A loop state without a JSON form fails when the iteration completes, naming the loop."""

    def step(state: Any) -> Generator[Any, Any, Any]:
        yield State.get()
        return {"handle": object()}

    out = start(with_handler(durable_loop(step, {}, key="bad"), EffectLogger()), State(0))
    assert isinstance(out, Throw)
    assert isinstance(out.error, SerializationError)
    assert "durable_loop 'bad': state" in str(out.error)
