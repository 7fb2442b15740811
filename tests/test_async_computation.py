"""AsyncComputation: a computation run in a task group, driven step by step by its owner."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from pydantic import BaseModel

import effects
from effects import (
    AsyncComputation,
    Call,
    Cancelled,
    ConflictError,
    Done,
    Effect,
    InvalidInput,
    Message,
    ResumeError,
    RunNotFound,
    State,
    Suspend,
    Throw,
    Yield,
    bracket,
    handler,
)

pytestmark = pytest.mark.anyio

GROUP_CANCELLED = "cancelled by the task group"


@asynccontextmanager
async def owner(limit: float = 10) -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group for the test, with a safety-net deadline."""
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            yield tg


class Person(BaseModel):
    name: str
    age: int


def wizard(log: list[str] | None = None) -> Generator[Any, Any, Any]:
    """Two prompts, the second validated; records its cleanup."""
    try:
        name = yield Yield("name?")
        person = yield Yield(f"details for {name}?", input=Person)
        return person
    finally:
        if log is not None:
            log.append("wizard cleanup")


async def wait_shielded(event: anyio.Event) -> None:
    with anyio.CancelScope(shield=True):
        await event.wait()


class Boom(Exception):
    pass


class Explode(Effect[None]):
    pass


# -- round trips ---------------------------------------------------------------------------


async def test_round_trip_yield_resume_to_done() -> None:
    """yield / resume / yield / resume / done, each `_sync` call returning its step's outcome."""
    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(wizard(), task_group=tg, tag="w")
        assert type(out) is Suspend
        assert out.value == "name?"
        assert runner.state == "suspended"
        assert runner.prompt == "name?"
        out = await runner.resume_sync("ada")
        assert type(out) is Suspend
        assert out.value == "details for ada?"
        assert out.input is Person
        out = await runner.resume_sync({"name": "ada", "age": 36})
        assert out == Done(Person(name="ada", age=36))
        assert runner.state == "finished"
        assert runner.outcome == out
        assert runner.seq == 3


async def test_immediate_done_from_start_sync() -> None:
    """A computation that never suspends: `start_sync` returns `Done` and the runner is over."""

    def comp() -> Generator[Any, Any, int]:
        return 42
        yield

    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(comp(), task_group=tg)
        assert out == Done(42)
        assert runner.state == "finished"
        with pytest.raises(ResumeError, match="has finished"):
            await runner.resume(1)


async def test_immediate_throw_from_start_sync_carries_the_original_exception() -> None:
    """An exception raised before the first suspension arrives as `Throw(the same object)`."""
    err = Boom("bad")

    def comp() -> Generator[Any, Any, None]:
        raise err
        yield

    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(comp(), task_group=tg)
        assert type(out) is Throw
        assert out.error is err
        assert runner.state == "finished"
        assert out.error.__traceback__ is not None


async def test_handler_exception_arrives_as_throw() -> None:
    """An exception raised by a handler, uncaught by the computation, is the run's `Throw`."""
    err = Boom("handler failed")

    def explode(effect: Explode) -> None:
        raise err

    def comp() -> Generator[Any, Any, None]:
        yield Yield("go?")
        yield Explode()

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(
            comp(), task_group=tg, handlers=handler({Explode: explode})
        )
        out = await runner.resume_sync()
        assert type(out) is Throw
        assert out.error is err


async def test_command_processor_loop_with_only_sync_calls() -> None:
    """An owner that answers prompts from a script using `_sync` calls only."""

    def counter() -> Generator[Any, Any, int]:
        total = 0
        while True:
            command = yield Yield(f"total {total}; command?")
            if command == "stop":
                return total
            total += int(command)

    script = ["1", "2", "3", "stop"]
    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(counter(), task_group=tg, messages=False)
        prompts = []
        for command in script:
            assert type(out) is Suspend
            prompts.append(out.value)
            out = await runner.resume_sync(command)
        assert out == Done(6)
        assert prompts == [f"total {t}; command?" for t in (0, 1, 3, 6)]


async def test_mixed_async_and_sync_resumes() -> None:
    """Fire-and-forget resumes (outcomes read from the iterator) mix with `resume_sync`."""

    def three() -> Generator[Any, Any, list[Any]]:
        a = yield Yield(1)
        b = yield Yield(2)
        c = yield Yield(3)
        return [a, b, c]

    async with owner() as tg:
        runner = await AsyncComputation.start(three(), task_group=tg, tag="m")
        first = await runner.__anext__()
        assert first.outcome.value == 1
        await runner.resume("a")
        second = await runner.__anext__()
        assert (second.tag, second.outcome.value, second.seq) == ("m", 2, 2)
        out = await runner.resume_sync("b")
        assert type(out) is Suspend
        assert out.value == 3
        await runner.resume("c")
        rest = [m async for m in runner]
        assert [m.outcome for m in rest[1:]] == [Done(["a", "b", "c"])]
        assert rest[0].outcome.value == 3


async def test_async_call_effects_are_awaited_in_the_runner() -> None:
    """Handlers that return awaitables (here `Call` of an async function) run in the step task."""

    async def fetch(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 2

    def comp() -> Generator[Any, Any, int]:
        n = yield Yield("n?", input=int)
        doubled = yield Call(fetch, n)
        return doubled  # type: ignore[no-any-return]

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg)
        assert await runner.resume_sync("21") == Done(42)


# -- messages ------------------------------------------------------------------------------


async def test_every_outcome_is_reported_once_to_callback_and_iterator() -> None:
    """Each outcome goes once to `on_message` and once to the iterator, in order, then stops."""
    seen: list[Message] = []
    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(
            wizard(), task_group=tg, tag="t", on_message=seen.append, messages=True
        )
        await runner.resume_sync("ada")
        await runner.resume_sync({"name": "ada", "age": 1})
        await runner.cancel_sync()  # no-op after the end: nothing more is reported
        iterated = [m async for m in runner]
        assert [m.seq for m in seen] == [1, 2, 3]
        assert [m.seq for m in iterated] == [1, 2, 3]
        assert all(m.tag == "t" for m in seen)
        assert seen[-1] == Message("t", Done(Person(name="ada", age=1)))
        assert [a.outcome for a in seen] == [b.outcome for b in iterated]
        assert [m async for m in runner] == []


async def test_reported_suspensions_cannot_be_resumed_directly() -> None:
    """A `Suspend` in a message or `_sync` result is a report: resume through the runner."""
    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(wizard(), task_group=tg)
        assert type(out) is Suspend
        assert not out.resumable
        with pytest.raises(ResumeError):
            await out.aresume("ada")
        assert runner.state == "suspended"
        assert type(await runner.resume_sync("ada")) is Suspend
        tg.cancel_scope.cancel()


async def test_decorations_are_present_on_every_suspension() -> None:
    """Scoped handlers' decorations (`Suspend.data`) come with each reported suspension."""

    def comp() -> Generator[Any, Any, None]:
        for i in range(1, 4):
            yield State.put(i)
            yield Yield(f"step {i}")

    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(comp(), task_group=tg, handlers=State(0))
        data = [out.data]
        for _ in range(2):
            out = await runner.resume_sync()
            assert type(out) is Suspend
            data.append(out.data)
        assert [d[State] for d in data] == [1, 2, 3]
        messages = []
        async for m in runner:
            messages.append(m)
            if m.seq == 3:
                break
        assert [m.outcome.data[State] for m in messages] == [1, 2, 3]
        assert await runner.resume_sync() == Done(None)


async def test_iterator_needs_kept_messages() -> None:
    """A runner that keeps no messages (callback owner) says so when iterated."""
    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(
            wizard(), task_group=tg, on_message=lambda m: None
        )
        with pytest.raises(effects.ConfigurationError, match="does not keep messages"):
            await runner.__anext__()
        tg.cancel_scope.cancel()


async def test_sync_wait_returns_its_own_step_not_the_latest() -> None:
    """`resume_sync` returns the outcome of the step it started, even when the owner's callback
    has already resumed the runner again before the waiter woke up."""

    def comp() -> Generator[Any, Any, Any]:
        first = yield Yield("manual")
        second = yield Yield("auto")
        return (first, second)

    async with owner() as tg:
        runner: AsyncComputation

        def auto_answer(message: Message) -> None:
            if type(message.outcome) is Suspend and message.outcome.value == "auto":
                tg.start_soon(runner.resume, "answered")

        runner, _ = await AsyncComputation.start_sync(
            comp(), task_group=tg, on_message=auto_answer, messages=True
        )
        out = await runner.resume_sync("typed")
        assert type(out) is Suspend
        assert out.value == "auto"
        messages = [m async for m in runner]
        assert messages[-1].outcome == Done(("typed", "answered"))


# -- re-entrancy and races -----------------------------------------------------------------


async def test_resume_while_a_step_runs_is_an_error() -> None:
    """Resuming a runner that is running a step raises `ResumeError`; no second step starts."""
    gate = anyio.Event()
    ran: list[str] = []

    def comp() -> Generator[Any, Any, str]:
        yield Yield("go?")
        ran.append("step")
        yield Call(gate.wait)
        return "ok"

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg)
        await runner.resume()
        assert runner.state == "running"
        with pytest.raises(ResumeError, match="running a step"):
            await runner.resume_sync("again")
        gate.set()
        async for m in runner:
            last = m
        assert last.outcome == Done("ok")
        assert ran == ["step"]


async def test_two_tasks_racing_resume_sync_exactly_one_wins() -> None:
    """Two tasks resume one suspended runner at once: one gets the outcome, one `ResumeError`."""
    results: list[Any] = []

    async def contender(runner: AsyncComputation, value: str) -> None:
        try:
            results.append(await runner.resume_sync(value))
        except ResumeError as err:
            results.append(err)

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(wizard(), task_group=tg)
        async with anyio.create_task_group() as race:
            race.start_soon(contender, runner, "a")
            race.start_soon(contender, runner, "b")
        outcomes = [r for r in results if isinstance(r, Suspend)]
        errors = [r for r in results if isinstance(r, ResumeError)]
        assert len(outcomes) == 1
        assert len(errors) == 1
        assert outcomes[0].value in ("details for a?", "details for b?")
        tg.cancel_scope.cancel()


async def test_many_runners_resumed_concurrently() -> None:
    """Fifty runners in one group, each resumed by its own task, all reach `Done`."""

    async def drive(runner: AsyncComputation, i: int, done: list[Any]) -> None:
        await runner.resume_sync(f"p{i}")
        done.append(await runner.resume_sync({"name": f"p{i}", "age": i}))

    async with owner() as tg:
        runners = [
            (await AsyncComputation.start_sync(wizard(), task_group=tg, tag=i))[0]
            for i in range(50)
        ]
        done: list[Any] = []
        async with anyio.create_task_group() as drivers:
            for i, r in enumerate(runners):
                drivers.start_soon(drive, r, i, done)
        assert sorted(d.value.age for d in done) == list(range(50))


# -- invalid input -------------------------------------------------------------------------


async def test_invalid_input_keeps_the_runner_at_the_same_prompt() -> None:
    """Bad input raises `InvalidInput` (a ValueError with pydantic's errors); nothing is lost."""
    seen: list[Message] = []
    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(
            wizard(), task_group=tg, on_message=seen.append
        )
        await runner.resume_sync("ada")
        with pytest.raises(InvalidInput) as info:
            await runner.resume_sync({"name": "ada", "age": "old"})
        assert isinstance(info.value, ValueError)
        assert info.value.errors[0]["loc"] == ("age",)
        with pytest.raises(InvalidInput):
            await runner.resume({"name": "ada"})  # fire-and-forget validates too
        assert runner.state == "suspended"
        assert runner.prompt == "details for ada?"
        assert len(seen) == 2
        out = await runner.resume_sync({"name": "ada", "age": "36"})
        assert out == Done(Person(name="ada", age=36))


# -- timeouts ------------------------------------------------------------------------------


async def test_resume_sync_timeout_stops_the_wait_not_the_runner() -> None:
    """A `_sync` timeout raises `effects.TimeoutError`; the step goes on and reports later."""
    gate = anyio.Event()

    def comp() -> Generator[Any, Any, str]:
        yield Yield("go?")
        yield Call(gate.wait)
        return "finished"

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg)
        with pytest.raises(effects.TimeoutError) as info:
            await runner.resume_sync(timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert info.value.runner is runner
        assert runner.state == "running"
        gate.set()
        messages = [m async for m in runner]
        assert messages[-1].outcome == Done("finished")


async def test_start_sync_timeout_carries_the_runner() -> None:
    """`start_sync` times out with the started runner on the error; it can be used after."""
    gate = anyio.Event()

    def comp() -> Generator[Any, Any, Any]:
        yield Call(gate.wait)
        return (yield Yield("ready"))

    async with owner() as tg:
        with pytest.raises(effects.TimeoutError) as info:
            await AsyncComputation.start_sync(comp(), task_group=tg, timeout=0.05)
        runner = info.value.runner
        assert isinstance(runner, AsyncComputation)
        gate.set()
        first = await runner.__anext__()
        assert first.outcome.value == "ready"
        assert await runner.resume_sync("go") == Done("go")


# -- cancellation --------------------------------------------------------------------------


async def test_cancel_from_a_third_task_runs_cleanup_innermost_first() -> None:
    """A task that is neither owner nor resumer cancels: cleanup runs innermost first (and may
    perform effects), then `Cancelled(reason)` is reported to the owner."""
    log: list[str] = []

    def comp() -> Generator[Any, Any, Any]:
        def use(resource: str) -> Generator[Any, Any, Any]:
            try:
                return (yield Yield(f"using {resource}"))
            finally:
                yield Call(log.append, "inner finally")

        try:
            return (yield from bracket(Call(lambda: "db"), use, lambda r: log.append("release")))
        finally:
            log.append("outer finally")

    async with owner() as tg:
        runner, out = await AsyncComputation.start_sync(comp(), task_group=tg, tag="c")
        assert out.value == "using db"  # type: ignore[union-attr]
        results: list[Any] = []

        async def third() -> None:
            results.append(await runner.cancel_sync("user left"))

        async with anyio.create_task_group() as others:
            others.start_soon(third)
        assert results == [Cancelled("user left")]
        assert log == ["inner finally", "release", "outer finally"]
        messages = [m async for m in runner]
        assert [m.outcome for m in messages][-1] == Cancelled("user left")
        with pytest.raises(ResumeError, match="has finished"):
            await runner.resume_sync(1)


async def test_cancel_of_a_waiting_step_interrupts_it() -> None:
    """Cancelling a step that awaits (here a gate nobody opens) cuts the await short."""
    log: list[str] = []
    gate = anyio.Event()

    def comp() -> Generator[Any, Any, None]:
        yield Yield("go?")
        try:
            yield Call(gate.wait)
        finally:
            log.append("cleanup")

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg)
        waiter_result: list[Any] = []

        async def waiter() -> None:
            waiter_result.append(await runner.resume_sync())

        async with anyio.create_task_group() as side:
            side.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert runner.state == "running"
            assert await runner.cancel_sync("stop") == Cancelled("stop")
        assert waiter_result == [Cancelled("stop")]
        assert log == ["cleanup"]


async def test_cancel_during_a_step_that_then_suspends_wins() -> None:
    """A cancel that arrives while a step runs (and cannot interrupt it) is not lost when the
    step then suspends: the run ends `Cancelled`, the intermediate prompt is never reported."""
    gate = anyio.Event()
    log: list[str] = []
    seen: list[Message] = []

    def comp() -> Generator[Any, Any, None]:
        yield Yield("first")
        try:
            yield Call(wait_shielded, gate)  # not interruptible
            yield Yield("second")
        finally:
            log.append("cleanup")

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg, on_message=seen.append)
        await runner.resume()
        await anyio.wait_all_tasks_blocked()
        await runner.cancel("late")
        await runner.cancel("later")  # the first reason is kept
        with pytest.raises(ResumeError, match="being cancelled"):
            await runner.resume()
        gate.set()
        assert await runner.cancel_sync() == Cancelled("late")
        assert [m.outcome for m in seen][1:] == [Cancelled("late")]
        assert log == ["cleanup"]


async def test_cancel_before_the_first_step_ran() -> None:
    """A runner cancelled before its first step ran never starts the computation."""
    ran: list[str] = []

    def comp() -> Generator[Any, Any, None]:
        ran.append("started")
        yield Yield("never")

    async with owner() as tg:
        runner = await AsyncComputation.start(comp(), task_group=tg)
        await runner.cancel("early")
        messages = [m async for m in runner]
        assert [m.outcome for m in messages] == [Cancelled("early")]
        assert ran == []


async def test_cancel_after_finish_is_a_no_op() -> None:
    """`cancel` on a finished runner does nothing; `cancel_sync` returns its final outcome."""
    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(wizard(), task_group=tg)
        await runner.resume_sync("a")
        done = await runner.resume_sync({"name": "a", "age": 2})
        await runner.cancel("too late")
        assert await runner.cancel_sync("too late") == done
        assert runner.seq == 3


async def test_cleanup_that_fails_is_reported_as_throw() -> None:
    """A cleanup that raises while cancelling makes the final outcome that `Throw`."""
    err = Boom("cleanup failed")

    def comp() -> Generator[Any, Any, None]:
        try:
            yield Yield("x")
        finally:
            raise err

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg)
        out = await runner.cancel_sync("go")
        assert type(out) is Throw
        assert out.error is err


# -- linked and unlinked -------------------------------------------------------------------


async def test_linked_runner_dies_with_its_task_group_cleanup_runs() -> None:
    """Cancelling the owner's task group cancels its suspended and running runners, with
    cleanup, and each reports `Cancelled`."""
    log: list[str] = []
    seen: list[Message] = []
    gate = anyio.Event()

    def busy() -> Generator[Any, Any, None]:
        try:
            yield Yield("go?")
            yield Call(gate.wait)
        finally:
            log.append("busy cleanup")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            idle, _ = await AsyncComputation.start_sync(
                wizard(log), task_group=tg, tag="idle", on_message=seen.append
            )
            running, _ = await AsyncComputation.start_sync(
                busy(), task_group=tg, tag="busy", on_message=seen.append
            )
            await running.resume()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert sorted(log) == ["busy cleanup", "wizard cleanup"]
    finals = {m.tag: m.outcome for m in seen if type(m.outcome) is not Suspend}
    assert finals == {"idle": Cancelled(GROUP_CANCELLED), "busy": Cancelled(GROUP_CANCELLED)}
    assert idle.state == running.state == "finished"


async def test_group_cancelled_right_after_a_resume() -> None:
    """A step scheduled just before the group is cancelled still ends `Cancelled`, cleanup run."""
    log: list[str] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            runner, _ = await AsyncComputation.start_sync(wizard(log), task_group=tg)
            await runner.resume("ada")
            tg.cancel_scope.cancel()
    assert runner.outcome == Cancelled(GROUP_CANCELLED)
    assert log == ["wizard cleanup"]


async def test_task_group_waits_for_its_linked_runners() -> None:
    """A runner is a child of its group: the group's block does not exit while it is
    suspended, and exits once it finishes."""
    started = anyio.Event()
    exited = anyio.Event()
    box: list[AsyncComputation] = []

    async def page() -> None:
        async with anyio.create_task_group() as tg:
            runner, _ = await AsyncComputation.start_sync(wizard(), task_group=tg)
            box.append(runner)
            started.set()
        exited.set()

    async with owner() as outer:
        outer.start_soon(page)
        await started.wait()
        await anyio.wait_all_tasks_blocked()
        assert not exited.is_set()
        runner = box[0]
        await runner.resume_sync("ada")
        await runner.resume_sync({"name": "ada", "age": 3})
        await exited.wait()


async def test_unlinked_runner_survives_its_owner_and_is_reattached_by_id() -> None:
    """An unlinked runner lives in the app group: its first owner goes away, a second one
    attaches by id, sees the current prompt and finishes it."""
    first_seen: list[Message] = []
    second_seen: list[Message] = []
    async with owner() as app:
        run_ids: list[str] = []

        async def first_page() -> None:
            async with anyio.create_task_group() as page:
                runner, _ = await AsyncComputation.start_sync(
                    wizard(), task_group=app, linked=False, on_message=first_seen.append
                )
                run_ids.append(runner.id)
                await runner.resume_sync("ada")
                page.cancel_scope.cancel()  # the connection drops

        await first_page()
        runner = AsyncComputation.attach(run_ids[0], on_message=second_seen.append)
        assert runner.linked is False
        assert runner.state == "suspended"
        assert runner.outcome.value == "details for ada?"  # type: ignore[union-attr]
        out = await runner.resume_sync({"name": "ada", "age": 5})
        assert out == Done(Person(name="ada", age=5))
        assert [m.seq for m in first_seen] == [1, 2]
        assert [m.seq for m in second_seen] == [3]
        with pytest.raises(RunNotFound):
            AsyncComputation.attach(run_ids[0])


async def test_unlinked_ids_are_unique_and_chosen_ids_conflict() -> None:
    """Generated ids differ; a second live runner with a chosen id raises `ConflictError`."""
    async with owner() as app:
        a, _ = await AsyncComputation.start_sync(wizard(), task_group=app, linked=False)
        b, _ = await AsyncComputation.start_sync(wizard(), task_group=app, linked=False)
        assert a.id != b.id
        assert len(a.id) >= 16
        c, _ = await AsyncComputation.start_sync(
            wizard(), task_group=app, linked=False, run_id="order-7"
        )
        assert AsyncComputation.attach("order-7") is c
        with pytest.raises(ConflictError):
            await AsyncComputation.start(wizard(), task_group=app, linked=False, run_id="order-7")
        with pytest.raises(RunNotFound):
            AsyncComputation.attach("no-such-run")
        app.cancel_scope.cancel()
    assert c.outcome == Cancelled(GROUP_CANCELLED)
    with pytest.raises(RunNotFound):
        AsyncComputation.attach("order-7")


async def test_start_rejects_what_is_not_a_computation() -> None:
    """Starting something that is not a computation raises at once, nothing is left behind."""
    async with owner() as tg:
        with pytest.raises(TypeError, match="not a computation"):
            await AsyncComputation.start(42, task_group=tg)  # type: ignore[arg-type]


async def test_concurrent_commands_keep_the_message_sequence_consistent() -> None:
    """Tasks that resume and cancel the same runners at once never start a second step: each
    runner reports outcomes numbered 1, 2, 3... with exactly one final outcome, last."""

    def loop() -> Generator[Any, Any, int]:
        n = 0
        while n < 5:
            n += yield Yield(n, input=int)
            yield Call(anyio.lowlevel.checkpoint)
        return n

    rng = random.Random(7)
    seen: dict[int, list[Message]] = {}

    async def poke(runner: AsyncComputation) -> None:
        for _ in range(20):
            action = rng.choice(["resume", "resume_sync", "bad", "cancel"])
            try:
                if action == "resume":
                    await runner.resume(1)
                elif action == "resume_sync":
                    await runner.resume_sync(1)
                elif action == "bad":
                    await runner.resume("not a number")
                elif runner.tag % 2 == 0 and rng.random() < 0.2:
                    await runner.cancel("poked")
            except (ResumeError, InvalidInput):
                pass
            await anyio.lowlevel.checkpoint()

    async with owner() as tg:
        runners = []
        for i in range(20):
            seen[i] = []
            runner, _ = await AsyncComputation.start_sync(
                loop(), task_group=tg, tag=i, on_message=seen[i].append
            )
            runners.append(runner)
        async with anyio.create_task_group() as pokers:
            for runner in runners:
                for _ in range(3):
                    pokers.start_soon(poke, runner)
        await anyio.wait_all_tasks_blocked()  # steps still in flight report first
        for runner in runners:
            if runner.tag % 2 == 0:
                await runner.cancel_sync("end of test")
            while runner.state == "suspended":  # odd runners are never cancelled: finish them
                await runner.resume_sync(1)
    for messages in seen.values():
        assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
        finals = [m for m in messages if type(m.outcome) is not Suspend]
        assert finals == [messages[-1]]
        assert type(messages[-1].outcome) in (Done, Cancelled)
    assert all(seen[i][-1].outcome == Done(5) for i in range(1, 20, 2))


async def test_interrupted_step_cleanup_sees_reason_and_may_fail() -> None:
    """Cleanup of a step cut short by cancel sees the caller's reason; if cleanup raises, the
    run reports Throw, as it does when a suspended run is cancelled."""
    seen: list[Any] = []
    gate = anyio.Event()

    def comp() -> Generator[Any, Any, None]:
        yield Yield("go?")
        try:
            yield Call(gate.wait)
        except BaseException as err:
            seen.append(getattr(err, "reason", None))
            raise RuntimeError("cleanup failed") from err

    async with owner() as tg:
        runner, _ = await AsyncComputation.start_sync(comp(), task_group=tg)
        await runner.resume(None)
        await anyio.wait_all_tasks_blocked()
        out = await runner.cancel_sync("user left")
        assert isinstance(out, Throw)
        assert str(out.error) == "cleanup failed"
        assert seen == ["user left"]
