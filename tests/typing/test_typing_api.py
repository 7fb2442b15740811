"""What type checkers see of the public API, checked by mypy --strict and pyright (strict) in CI
(`.ci/run`), and run by pytest so every example here also works.

`assert_type` fails a checker when a type regresses to `Any` or changes. Lines that must stay
errors carry both checkers' ignore comments: mypy (`warn_unused_ignores`) and pyright
(`reportUnnecessaryTypeIgnoreComment`) fail when such an error goes away.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any, assert_type

import anyio
import pydantic
import pytest

from effects import (
    AsyncComputation,
    Call,
    Cancelled,
    Comp,
    Done,
    Effect,
    EventAccumulator,
    Handler,
    Outcome,
    Reader,
    Stack,
    State,
    Suspend,
    Throw,
    WithHandler,
    Writer,
    Yield,
    computation,
    handler,
    handles,
    run,
    start,
    with_handler,
)
from effects.durable import DurableRunner, Run


class User(pydantic.BaseModel):
    id: int
    name: str


class GetUser(Effect[User]):
    user_id: int


class Users(Handler):
    @handles(GetUser)
    def get(self, effect: GetUser) -> User:
        return User(id=effect.user_id, name="Ada")


def greet(user_id: int) -> Generator[Any, Any, str]:
    user = yield from GetUser(user_id)
    assert_type(user, User)
    return f"hello {user.name}"


def test_effect_results_and_handler_scopes() -> None:
    scoped = with_handler(greet(1), Users())
    assert_type(scoped, WithHandler[str])
    assert_type(run(scoped), str)
    stacked = Stack(Users(), Reader(1))(greet(2))
    assert_type(stacked, WithHandler[str])
    assert run(stacked) == "hello Ada"
    assert_type(run(greet(3), Users()), str)


@computation
def add(a: int, b: int) -> Generator[Any, Any, int]:
    x = yield from State.get()
    yield State.put(x + a + b)
    n: int = yield from Reader.ask()
    return a + b + n


def test_computation_functions_and_state() -> None:
    comp = add(1, 2)
    assert_type(comp, Comp[int])
    assert run(comp, State(0), Reader(0)) == 3
    assert_type(run(add(1, 2), State(0), Reader(10)), int)
    assert run(add(1, 2), State(0), Reader(10)) == 13
    # `output=True` forms pair the result with the handler's own output.
    paired = run(add(1, 2), Reader(0), State(5, output=True))
    assert_type(paired, tuple[int, int])
    assert paired == (3, 8)
    logged = run(add(1, 2), State(0), Reader(0), Writer())
    assert_type(logged, tuple[int, list[Any]])
    events = run(with_handler(add(1, 1), EventAccumulator(output=True), State(0), Reader(0)))
    assert_type(events, tuple[int, list[Any]])
    assert_type(run(add(1, 1), Writer(output=False), State(0), Reader(0)), int)


def wrong_arguments() -> Generator[Any, Any, int]:
    return (yield from add("1", 2))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


class Person(pydantic.BaseModel):
    name: str
    age: int


def register() -> Generator[Any, Any, str]:
    person = yield from Yield("Who are you?", input=Person)
    assert_type(person, Person)
    note = yield from Yield("Anything else?")
    assert_type(note, Any)
    return f"{person.name} ({person.age}) {note}"


def test_outcomes_narrow_and_resume() -> None:
    first = start(register())
    assert_type(first, Outcome[str])
    assert_type(first, Done[str] | Suspend[str] | Throw | Cancelled)
    assert isinstance(first, Suspend)
    second = first.resume({"name": "Ada", "age": 36})
    assert_type(second, Outcome[str])
    assert isinstance(second, Suspend)
    last = second.resume("no")
    match last:
        case Done(value):
            assert_type(value, str)
            assert value == "Ada (36) no"
        case _:
            pytest.fail(f"unexpected {last!r}")


def not_narrowed(outcome: Outcome[str]) -> None:
    # Only a `Suspend` can be resumed: narrow the outcome first (as above).
    outcome.resume(1)  # type: ignore[union-attr]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]


def fetch_name(user_id: int, *, upper: bool = False) -> str:
    return "ADA" if upper else "Ada"


async def fetch_age(user_id: int) -> int:
    return 36


def calls() -> Generator[Any, Any, tuple[str, int]]:
    name = yield from Call(fetch_name, 1, upper=True)
    assert_type(name, str)
    age = yield from Call(fetch_age, 1)
    assert_type(age, int)
    again = yield from Call(fetch_age, 1, timeout=5)
    assert_type(again, int)
    return name, age + again - 36


def wrong_calls() -> Generator[Any, Any, None]:
    yield Call(fetch_name, "1")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    yield Call(fetch_name, 1, lower=True)  # type: ignore[call-arg,arg-type]  # pyright: ignore[reportCallIssue]


def test_call_is_typed_from_its_function() -> None:
    async def main() -> tuple[str, int]:
        async with anyio.create_task_group() as tg:
            runner, outcome = await AsyncComputation.start_sync(calls(), task_group=tg)
            assert_type(runner, AsyncComputation[tuple[str, int]])
            assert_type(outcome, Outcome[tuple[str, int]])
            assert_type(runner.outcome, Outcome[tuple[str, int]] | None)
            assert isinstance(outcome, Done)
            return outcome.value
        raise AssertionError("unreachable: the task group returned")

    assert anyio.run(main) == ("ADA", 36)


class Wrong(Handler):
    @handles(GetUser)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    def get(self, effect: GetUser) -> str:
        return "not a user"


def test_functions_handlers_take_any_function() -> None:
    users = handler({GetUser: lambda e: User(id=e.user_id, name="Bo")})
    assert run(greet(1), users) == "hello Bo"


async def durable_start(runner: DurableRunner) -> int:
    started = await runner.start(add(1, 2))
    assert_type(started, Run[int])
    assert_type(started.outcome, Outcome[int] | None)
    if isinstance(started.outcome, Done):
        return started.outcome.value
    raise AssertionError(started)


def test_durable_runs_are_typed(tmp_path: Path) -> None:
    async def main() -> int:
        url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
        async with DurableRunner(url, handlers=[State(0), Reader(5)]) as runner:
            return await durable_start(runner)
        raise AssertionError("unreachable: the runner returned")

    assert anyio.run(main) == 8
