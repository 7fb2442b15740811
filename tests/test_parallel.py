"""`Parallel.all / race / map`: branches run concurrently on anyio (asyncio and trio) and one
after another under the sync runner, with the same results; losers and failed siblings are
cancelled with their cleanup; each branch has its own in-memory state."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import anyio
import pytest

from effects import (
    AsyncComputation,
    Call,
    Cancellation,
    Cancelled,
    ConfigurationError,
    Effect,
    EventAccumulator,
    Handler,
    Parallel,
    State,
    UnhandledSuspension,
    Writer,
    Yield,
    arun,
    bracket,
    current_branch,
    handler,
    run,
    with_handler,
)
from effects.testing import respond


def counted(i: int) -> Generator[Any, Any, Any]:
    yield State.modify(lambda x: x + i)
    yield Writer.tell(f"told {i}")
    yield EventAccumulator.emit(i)
    return (yield State.get()), current_branch()


def three() -> Generator[Any, Any, Any]:
    results = yield from Parallel.all(counted(1), counted(2), counted(3))
    return results, (yield State.get())


def handlers(streamed: list[Any]) -> tuple[Any, ...]:
    return State(10), Writer(), EventAccumulator(output=True, on_event=streamed.append)


EXPECTED = (
    (
        ([(11, "0"), (12, "1"), (13, "2")], 10),
        ["told 1", "told 2", "told 3"],
    ),
    [1, 2, 3],
)


def test_all_under_the_sync_runner() -> None:
    """Results in order; each branch starts from the parent's State and keeps its changes to
    itself; Writer items and events are merged back in branch order (and streamed then)."""
    streamed: list[Any] = []
    assert run(three(), *handlers(streamed)) == EXPECTED
    assert streamed == [1, 2, 3]


@pytest.mark.anyio
async def test_all_under_the_async_runner_gives_the_same_results() -> None:
    """The same computation on arun: same results, same merge order."""
    streamed: list[Any] = []
    assert await arun(three(), *handlers(streamed)) == EXPECTED
    assert streamed == [1, 2, 3]


class Wait(Effect[str]):
    name: str


class Open(Effect[None]):
    name: str


def gates() -> tuple[Any, dict[str, anyio.Event]]:
    events: dict[str, anyio.Event] = {}

    def event(name: str) -> anyio.Event:
        return events.setdefault(name, anyio.Event())

    async def wait(e: Wait) -> str:
        await event(e.name).wait()
        return e.name

    def open_(e: Open) -> None:
        event(e.name).set()

    return handler({Wait: wait, Open: open_}), events


@pytest.mark.anyio
async def test_branches_run_concurrently_and_merge_in_branch_order() -> None:
    """Branch 0 waits for something branch 1 does: only concurrent branches finish. Branch 1
    finishes first, yet the merged Writer items are in branch order."""

    def first() -> Generator[Any, Any, str]:
        got = yield Wait("from second")
        yield Writer.tell("first")
        return got

    def second() -> Generator[Any, Any, str]:
        yield Writer.tell("second")
        yield Open("from second")
        return "done"

    gate, _ = gates()
    result = await arun(Parallel.all(first(), second()), Writer(), gate)
    assert result == (["from second", "done"], ["first", "second"])


@pytest.mark.anyio
async def test_a_failing_branch_cancels_its_siblings_with_their_cleanup() -> None:
    """all: the first error is raised; the siblings still running are cancelled, their
    `finally` blocks run (and may perform effects) with the reason 'a sibling branch failed'."""
    cleaned: list[Any] = []
    gate, _ = gates()

    def waits_forever() -> Generator[Any, Any, None]:
        try:
            yield Open("started")
            yield Wait("never")
        except Cancellation as cancel:
            cleaned.append(cancel.reason)
            raise
        finally:
            yield Writer.tell("cleanup ran")

    def fails() -> Generator[Any, Any, None]:
        yield Wait("started")  # the sibling is running: it will be cancelled, not skipped
        yield Writer.tell("failing")
        raise KeyError("boom")

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield from Parallel.all(waits_forever(), fails())
        except KeyError as err:
            return str(err)
        return "no error"

    assert await arun(comp(), Writer(), gate) == ("'boom'", ["cleanup ran", "failing"])
    assert cleaned == ["a sibling branch failed"]


def test_a_failing_branch_under_the_sync_runner_stops_the_rest() -> None:
    """Sync: branches after the failing one never start."""
    started: list[int] = []

    def branch(i: int) -> Generator[Any, Any, int]:
        started.append(i)
        yield State.get()
        if i == 1:
            raise ValueError(i)
        return i

    with pytest.raises(ValueError, match="1"):
        run(Parallel.all(branch(0), branch(1), branch(2)), State(0))
    assert started == [0, 1]


@pytest.mark.anyio
async def test_race_returns_the_first_and_cancels_the_losers_with_cleanup() -> None:
    """race: the first branch to finish wins; the losers' brackets release and their finally
    blocks see Cancellation('lost the race')."""
    released: list[str] = []
    reasons: list[Any] = []
    gate, _ = gates()

    def loser(name: str) -> Generator[Any, Any, str]:
        def use(resource: str) -> Generator[Any, Any, str]:
            try:
                yield Open(f"{name} started")
                return (yield Wait(f"{name} never"))
            except Cancellation as cancel:
                reasons.append(cancel.reason)
                raise

        return (yield from bracket(State.get(), use, lambda _: released.append(name)))

    def winner() -> Generator[Any, Any, str]:
        yield Wait("a started")
        yield Wait("b started")
        return "winner"

    result = await arun(Parallel.race(loser("a"), winner(), loser("b")), State(None), gate)
    assert result == "winner"
    assert sorted(released) == ["a", "b"]
    assert reasons == ["lost the race", "lost the race"]


def test_race_under_the_sync_runner_is_won_by_the_first_branch() -> None:
    """Sync: the first branch runs to its end and wins; the others never start."""
    started: list[str] = []

    def branch(name: str) -> Generator[Any, Any, str]:
        started.append(name)
        yield State.get()
        return name

    assert run(Parallel.race(branch("a"), branch("b")), State(0)) == "a"
    assert started == ["a"]


@pytest.mark.anyio
async def test_race_raises_the_error_of_the_first_branch_to_finish() -> None:
    """A branch that raises before any returns decides the race with its error."""
    gate, _ = gates()

    def slow() -> Generator[Any, Any, str]:
        return (yield Wait("never"))

    def fails() -> Generator[Any, Any, str]:
        yield State.get()
        raise LookupError("first")

    with pytest.raises(LookupError, match="first"):
        await arun(Parallel.race(slow(), fails()), State(0), gate)


@pytest.mark.anyio
async def test_map_keeps_at_most_limit_branches_running() -> None:
    """map(fn, items, limit=2): results in item order, never more than 2 branches at once."""
    running = 0
    peak = 0

    async def work(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        running -= 1
        return x * x

    def square(x: int) -> Generator[Any, Any, int]:
        return (yield Call(work, x))

    assert await arun(Parallel.map(square, range(6), limit=2)) == [0, 1, 4, 9, 16, 25]
    assert peak == 2
    assert await arun(Parallel.map(square, range(6))) == [0, 1, 4, 9, 16, 25]
    assert peak == 6
    assert run(
        Parallel.map(lambda x: State.modify(lambda s: s + x), [1, 2], limit=1), State(0)
    ) == [1, 2]
    with pytest.raises(ValueError, match="at least 1"):
        Parallel.map(square, [1], limit=0)


@pytest.mark.anyio
async def test_a_yield_in_a_branch_is_an_error_there_unless_answered_inside() -> None:
    """A branch cannot suspend the run: the Yield raises UnhandledSuspension in the branch
    (which may catch it); `respond` inside the branch answers it."""

    def asks() -> Generator[Any, Any, str]:
        try:
            return (yield Yield("name?"))
        except UnhandledSuspension as err:
            return f"refused: {'inside a Parallel branch' in str(err)}"

    comp = Parallel.all(asks(), respond(asks(), lambda prompt: "ada"))
    assert run(comp) == ["refused: True", "ada"]
    assert await arun(Parallel.all(asks(), respond(asks(), lambda prompt: "ada"))) == [
        "refused: True",
        "ada",
    ]


@pytest.mark.anyio
async def test_cancelling_the_run_cancels_every_branch_with_its_reason() -> None:
    """AsyncComputation.cancel while branches wait: each branch's cleanup runs with the
    owner's reason, and the run ends Cancelled."""
    reasons: list[Any] = []
    gate, events = gates()

    def waits(name: str) -> Generator[Any, Any, None]:
        try:
            yield Open(f"{name} waiting")
            yield Wait("never")
        except Cancellation as cancel:
            reasons.append(cancel.reason)
            raise

    async with anyio.create_task_group() as tg:
        runner = await AsyncComputation.start(
            Parallel.all(waits("a"), waits("b")), tag="p", task_group=tg, handlers=[gate]
        )
        await events.setdefault("a waiting", anyio.Event()).wait()
        await events.setdefault("b waiting", anyio.Event()).wait()
        outcome = await runner.cancel_sync("stop", timeout=5)
    assert outcome == Cancelled("stop")
    assert reasons == ["stop", "stop"]


def test_nested_parallel_branch_ids() -> None:
    """Branch ids name the path: "1.0" is the first branch of a Parallel in the second."""

    def where() -> Generator[Any, Any, Any]:
        yield State.get()
        return current_branch()

    def inner() -> Generator[Any, Any, Any]:
        return (yield from Parallel.all(where(), where()))

    assert current_branch() is None
    assert run(Parallel.all(where(), inner()), State(0)) == ["0", ["1.0", "1.1"]]


def test_handlers_installed_in_a_branch_are_its_own() -> None:
    """A branch's own installation shadows outer handlers for that branch only."""

    def reads() -> Generator[Any, Any, Any]:
        return (yield State.get())

    comp = Parallel.all(reads(), with_handler(reads(), State("own")))
    assert run(comp, State("outer")) == ["outer", "own"]


class Spy(Handler):
    """An interceptor that does not know about branches."""

    def intercept(self, table: Any) -> None:
        pass


def test_an_interceptor_that_cannot_branch_is_refused() -> None:
    """Interleaved branch effects would confuse an interceptor: a clear error at the Parallel."""

    def comp() -> Generator[Any, Any, Any]:
        return (yield from Parallel.all(State.get(), State.get()))

    with pytest.raises(ConfigurationError, match="cannot observe Parallel branches"):
        run(with_handler(comp(), Spy()), State(0))
