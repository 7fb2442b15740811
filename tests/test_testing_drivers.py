"""effects.testing: `collect`, `feed` and `respond` drive a computation's Yields."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pydantic
import pytest

from effects import (
    Cancelled,
    Done,
    Effect,
    InvalidInput,
    State,
    Suspend,
    Throw,
    UnhandledSuspension,
    Yield,
    run,
    start,
    with_handler,
)
from effects.durable import EffectLogger, Log
from effects.testing import Collected, acollect, afeed, collect, feed, respond


class Age(pydantic.BaseModel):
    years: int


class Lookup(Effect[str]):
    key: str


def survey() -> Generator[Any, Any, Any]:
    name = yield Yield("name?")
    age = yield Yield("age?", input=Age)
    yield State.modify(lambda n: n + 1)
    return f"{name}:{age.years}"


def test_collect_answers_every_yield_and_lists_the_prompts() -> None:
    """collect answers each Yield with the same answer and returns the prompts in order."""
    got = collect(survey(), State(0), answer={"years": 3})
    assert got.yields == ["name?", "age?"]
    assert got.outcome == Done("{'years': 3}:3")
    assert got.done


def test_collect_answer_with_a_function_of_the_prompt() -> None:
    """answer_with computes each answer from the prompt."""
    answers = {"name?": "ada", "age?": {"years": 36}}
    got = collect(survey(), State(0), answer_with=answers.__getitem__)
    assert got.value == "ada:36"


def test_collect_keeps_a_thrown_error() -> None:
    """A computation that raises ends in Throw; `value` raises that error."""

    def failing() -> Generator[Any, Any, Any]:
        yield Yield(1)
        raise KeyError("boom")

    got = collect(failing())
    assert got.yields == [1]
    assert type(got.outcome) is Throw
    with pytest.raises(KeyError, match="boom"):
        _ = got.value


def test_collect_stops_an_endless_prompt_loop() -> None:
    """More Yields than the limit fail instead of looping forever."""

    def endless() -> Generator[Any, Any, Any]:
        while True:
            yield Yield("again")

    with pytest.raises(AssertionError, match="more than 5 times"):
        collect(endless(), limit=5)


def test_collect_invalid_answer_raises_invalid_input() -> None:
    """Answers are validated against the Yield's input type."""
    with pytest.raises(InvalidInput):
        collect(survey(), State(0), answer="not an age")


def test_feed_answers_in_order_and_stops_when_inputs_run_out() -> None:
    """feed stops at the first Yield it has no input for; that Suspend can still be resumed."""
    got = feed(survey(), ["ada"], State(0))
    assert got.yields == ["name?", "age?"]
    assert type(got.outcome) is Suspend
    assert got.outcome.resume({"years": 5}) == Done("ada:5")
    with pytest.raises(UnhandledSuspension):
        _ = feed(survey(), [], State(0)).value


def test_feed_reports_unused_inputs() -> None:
    """Inputs left over when the computation ends are in `unused`."""
    got = feed(survey(), ["ada", {"years": 1}, "extra"], State(0))
    assert got == Collected(Done("ada:1"), ["name?", "age?"], ["extra"])


@pytest.mark.anyio
async def test_async_twins_await_async_handlers() -> None:
    """acollect / afeed drive the async runner (an async handler is awaited)."""
    from effects import handler

    async def lookup(e: Lookup) -> str:
        return e.key.upper()

    def comp() -> Generator[Any, Any, Any]:
        a = yield Lookup("x")
        b = yield Yield(a)
        return a + b

    lookups = handler({Lookup: lookup})
    assert (await acollect(comp(), lookups, answer="!")).outcome == Done("X!")
    got = await afeed(comp(), [], lookups)
    assert got.yields == ["X"]
    assert type(got.outcome) is Suspend
    await got.outcome.acancel("stop")


def test_respond_answers_yields_from_inside() -> None:
    """respond answers Yields by a function; the runner never sees a suspension."""
    answers = {"name?": "bo", "age?": {"years": 7}}
    assert run(respond(survey(), answers.__getitem__), State(0)) == "bo:7"


def test_respond_validates_and_can_raise_at_the_yield() -> None:
    """An invalid answer raises InvalidInput at the Yield; an exception answer is raised there."""

    def guarded() -> Generator[Any, Any, Any]:
        try:
            yield Yield("age?", input=Age)
        except InvalidInput:
            return "invalid"
        return "ok"

    assert run(respond(guarded(), lambda p: {"years": "x"})) == "invalid"
    with pytest.raises(LookupError, match="no"):
        run(respond(survey(), lambda p: LookupError("no")), State(0))


def test_respond_with_a_computation_passes_its_yields_outward() -> None:
    """A computation answer runs outside the responder: its own Yield reaches the runner."""

    def ask_outside(prompt: Any) -> Generator[Any, Any, Any]:
        return (yield Yield(f"outer {prompt}"))

    outcome = start(respond(survey(), ask_outside), State(0))
    assert isinstance(outcome, Suspend)
    assert outcome.value == "outer name?"
    outcome = outcome.resume("cy")
    assert isinstance(outcome, Suspend)
    assert outcome.value == "outer age?"
    assert outcome.resume({"years": 2}) == Done("cy:2")


def test_respond_outside_a_logger_records_the_answers_and_replays_them() -> None:
    """Installed outside an EffectLogger, the answers are recorded: replay needs no responder."""
    logger = EffectLogger()
    answers = {"name?": "di", "age?": {"years": 9}}
    assert run(respond(with_handler(survey(), logger), answers.__getitem__), State(0)) == "di:9"
    log = Log.model_validate_json(logger.log.model_dump_json())
    assert [e.effect for e in log.entries] == ["effects.Yield", "effects.Yield"]
    # Replayed with no responder at all: the logged answers come back.
    assert run(with_handler(survey(), EffectLogger(log)), State(0)) == "di:9"


def test_respond_cancellation_runs_cleanup() -> None:
    """A run suspended in a responder's computation is cancelled like any other: the
    computation's `finally` runs and may still perform effects."""
    state = State("start", output=True)

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield Yield("a")
            yield Yield("b")
        finally:
            yield State.put("cleaned")

    def answer(prompt: Any) -> Any:
        if prompt == "a":
            return None
        return Yield("outer")  # an effect is a computation: asks the runner

    got = feed(respond(comp(), answer), [], state)
    assert got.yields == ["outer"]
    assert isinstance(got.outcome, Suspend)
    assert got.outcome.cancel("bye") == Cancelled("bye")
