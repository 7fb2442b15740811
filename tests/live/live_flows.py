"""Computations served by the live bridge's end-to-end tests (registered once per process)."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel, Field

from effects import Call, Clock, Yield, computation
from effects._std.tasks import Output, Print, Progress, task

# Gates the tests open from their own thread: a computation waits at `Call(wait_gate, name)`.
GATES: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    """The gate called `name` (created closed)."""
    return GATES.setdefault(name, threading.Event())


async def wait_gate(name: str) -> None:
    """Wait, in the server's loop, until the test opens gate `name`."""
    await anyio.to_thread.run_sync(gate(name).wait, abandon_on_cancel=True)


class Person(BaseModel):
    """Step 1 of the signup wizard."""

    name: str = Field(min_length=1, max_length=80)
    age: int = Field(ge=0, le=150)


class Plan(BaseModel):
    """Step 2 of the signup wizard."""

    plan: Literal["free", "pro", "team"]
    newsletter: bool = False


@computation(name="live_tests.signup", version=1)
def signup() -> Generator[Any, Any, str]:
    """A two-step wizard, then a little work with progress."""
    person: Person = yield Yield(
        {"title": "Who are you?", "text": "Tell us about you."}, input=Person
    )
    plan: Plan = yield Yield("Choose a plan", input=Plan)

    def set_up() -> Generator[Any, Any, None]:
        for i in range(3):
            yield Progress(i + 1, 3)
            yield Print("configured", i + 1)

    yield from task("Set up the account", set_up())
    return f"{person.name} ({person.age}) on {plan.plan}"


@computation(name="live_tests.names", version=1)
def names() -> Generator[Any, Any, list[str]]:
    """Three steps that ask the same question: a repeated answer would be accepted by the
    next step, so only deduplication keeps a duplicate POST from advancing the run."""
    out = []
    for i in range(3):
        person: Person = yield Yield(f"Person {i + 1}", input=Person)
        out.append(person.name)
    return out


class Job(BaseModel):
    """The start form of the progress app."""

    items: int = Field(ge=1, le=100_000)
    width: int = Field(default=10, ge=1, le=2000)
    gate: str = ""


@computation(name="live_tests.job", version=1)
def job(items: int, width: int = 10, gate: str = "") -> Generator[Any, Any, int]:
    """Long work: optionally waits at a gate, then `items` progress ticks and output lines of
    `width` characters, in two nested tasks."""
    if gate:
        yield from task("Waiting", _wait(gate))

    def crunch() -> Generator[Any, Any, int]:
        for i in range(items):
            yield Progress.step()
            yield Output(f"{i:06d} " + "x" * width)
            if i % 50 == 49:
                yield Call(anyio.sleep, 0)  # let the event loop (and slow clients) breathe
        return items

    def phase() -> Generator[Any, Any, int]:
        yield Progress(0, items)
        return (yield from crunch())

    return (yield from task("Crunch", phase()))


def _wait(name: str) -> Generator[Any, Any, None]:
    yield Output(f"waiting at {name}")
    yield Call(wait_gate, name)


class Prepared(BaseModel):
    """The start form of `prepared`."""

    gate: str
    then: Literal["fail", "ask"] = "fail"


@computation(name="live_tests.prepared", version=1)
def prepared(gate: str, then: str = "fail") -> Generator[Any, Any, bool]:
    """A task, then a wait at a gate outside any task, then a failure or a question: continued
    after a restart at the gate, the step performs no task effect at all."""

    def prepare() -> Generator[Any, Any, None]:
        yield Progress(0, 2)
        yield Output("prepared")
        yield Progress(2)

    yield from task("Prepare", prepare())
    yield Call(anyio.sleep, 0)  # recorded: after a restart, the task above is replayed
    yield Call(wait_gate, gate)
    if then == "fail":
        raise ValueError("no luck")
    answer: bool = yield Yield("Go on?", input=bool)
    return answer


@computation(name="live_tests.nap", version=1)
def nap() -> Generator[Any, Any, str]:
    """A long durable sleep: the run is released (`sleeping`) while it waits."""
    yield Clock.sleep(600)
    return "rested"
