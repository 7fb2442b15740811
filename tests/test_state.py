"""In-memory families: State, Reader, Writer, EventAccumulator, and tagged families."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from effects import EventAccumulator, Reader, State, Suspend, Writer, Yield, run, start


def test_state_get_put_modify_and_output() -> None:
    """State reads, writes and modifies; output=True returns (result, final state)."""

    def comp() -> Generator[Any, Any, Any]:
        yield State.put(2)
        new = yield State.modify(lambda s: s * 10)
        return new

    assert run(comp(), State(0)) == 20
    assert run(comp(), State(0, output=True)) == (20, 20)


def test_tagged_states_coexist() -> None:
    """Counter = State.tagged(...) is an independent family with its own effects."""
    Counter = State.tagged("counter")

    def comp() -> Generator[Any, Any, Any]:
        yield Counter.put(1)
        yield State.put("plain")
        return ((yield Counter.get()), (yield State.get()))

    assert run(comp(), Counter(0), State(None)) == (1, "plain")
    assert type(Counter.get()) is not type(State.get())


def test_reader_ask_and_local() -> None:
    """Reader.local changes the value for a sub-computation and restores it."""

    def comp() -> Generator[Any, Any, Any]:
        before = yield Reader.ask()
        inside = yield from Reader.local(lambda v: v + 1, Reader.ask())
        after = yield Reader.ask()
        return before, inside, after

    assert run(comp(), Reader(1)) == (1, 2, 1)


def test_writer_collects_in_order() -> None:
    """Writer returns (result, items) in tell order by default."""

    def comp() -> Generator[Any, Any, str]:
        yield Writer.tell("a")
        yield Writer.tell("b")
        return "r"

    assert run(comp(), Writer()) == ("r", ["a", "b"])
    assert run(comp(), Writer(output=False)) == "r"


def test_event_accumulator_order_output_and_stream() -> None:
    """Events keep emission order; output=True returns them; on_event streams them live."""
    streamed: list[Any] = []

    def comp() -> Generator[Any, Any, str]:
        yield EventAccumulator.emit({"n": 1})
        yield Yield("pause")
        yield EventAccumulator.emit({"n": 2})
        return "ok"

    s = start(comp(), EventAccumulator(output=True, on_event=streamed.append))
    assert isinstance(s, Suspend)
    assert streamed == [{"n": 1}]
    assert s.data[EventAccumulator] == [{"n": 1}]
    done = s.resume(None)
    assert done.value == ("ok", [{"n": 1}, {"n": 2}])  # type: ignore[union-attr]
    assert streamed == [{"n": 1}, {"n": 2}]


def test_state_is_per_run() -> None:
    """A reused State handler starts from its initial value in every run."""
    h = State(0)
    assert run(State.modify(lambda s: s + 1), h) == 1
    assert run(State.modify(lambda s: s + 1), h) == 1


def test_all_four_families_decorate_suspend_data() -> None:
    """Each family adds its current value under its class, Reader included (and the value a
    `Reader.local` or tagged Reader sees, not the outer one)."""
    s = start(Yield("?"), Reader(5), State(1), Writer(), EventAccumulator())
    assert isinstance(s, Suspend)
    assert s.data == {Reader: 5, State: 1, Writer: [], EventAccumulator: []}

    Tenant = Reader.tagged("tenant")
    local = start(Reader.local(lambda v: v * 10, Yield("?")), Reader(5), Tenant("t1"))
    assert isinstance(local, Suspend)
    assert local.data == {Reader: 50, Tenant: "t1"}
