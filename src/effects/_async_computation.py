"""`AsyncComputation`: a computation run in an anyio task group that reports to its owner.

A runner is a small state machine: *running* a step, *suspended* at a `Yield`, or *finished*.
Each step (the first one, every resume, a cancellation) runs in a short task spawned into the
runner's task group, and that task ends when the step reports its outcome. A suspended runner
therefore holds no task at all, only its one-shot `Suspend` (the interpreter's frame stack):
see docs/concepts/async-computation.md for the measurements behind that choice.

Cancellation by the task group still reaches suspended runners: the first runner started in a
task group spawns one *home* task there, shared by every runner of that group, which waits
until they have all finished; when the group is cancelled, it cancels the suspended ones with
their cleanup. So a runner behaves as a child task of its group (the group waits for it and
its cancellation unwinds it), whether or not a task currently backs it.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, cast

import anyio
import anyio.lowlevel
from typing_extensions import TypeVar

from ._exceptions import (
    Cancellation,
    ConfigurationError,
    ConflictError,
    ResumeError,
    RunNotFound,
    TimeoutError,
)
from ._handler import Handler, Stack, flatten
from ._interpreter import Run
from ._outcome import Cancelled, Outcome, Suspend, _Continuation

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._computation import Computation

__all__ = ("AsyncComputation", "Message")

# The computation's result type (a bare `AsyncComputation` is `AsyncComputation[Any]`).
R = TypeVar("R", default=Any)
T = TypeVar("T")

#: The reason reported when the runner's task group is cancelled (the interpreter uses the
#: same words for the `Cancellation` it delivers in that case).
GROUP_CANCELLED: Final = "cancelled by the task group"

RunnerState = Literal["running", "suspended", "finished"]
_RUNNING: Final = "running"
_SUSPENDED: Final = "suspended"
_FINISHED: Final = "finished"


class _NoCancel:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_CANCEL"


_NO_CANCEL: Final = _NoCancel()


@dataclass(frozen=True, slots=True)
class Message(Generic[R]):
    """One outcome of a runner, as reported to its owner: `Message(tag, outcome)`.

    `outcome` is `Done`, `Suspend`, `Throw` or `Cancelled`. A reported `Suspend` carries the
    prompt (`value`), the handlers' decorations (`data`) and the `input` type, but cannot be
    resumed itself: resume through the runner. `seq` numbers a runner's outcomes from 1 (it
    does not take part in `==`), so an owner that re-attaches can skip what it already saw.
    """

    tag: Any
    outcome: Outcome[R]
    seq: int = field(default=0, compare=False)


class _Step:
    """A step in flight: the `_sync` methods wait for *this* step's outcome, not the latest."""

    __slots__ = ("event", "outcome", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.outcome: Outcome[Any] | None = None
        self.event: anyio.Event | None = None  # created only when somebody waits


class _Home:
    """The runners of one task group and the task that cancels them with the group."""

    __slots__ = ("idle", "runners", "task_group")

    def __init__(self, task_group: TaskGroup) -> None:
        self.task_group = task_group
        self.runners: set[AsyncComputation[Any]] = set()
        self.idle = anyio.Event()


_homes: weakref.WeakKeyDictionary[TaskGroup, _Home] = weakref.WeakKeyDictionary()

# Unlinked runners by id, while they are not finished.
_registry: dict[str, AsyncComputation[Any]] = {}


def _home_for(task_group: TaskGroup) -> _Home:
    home = _homes.get(task_group)
    if home is None:
        home = _Home(task_group)
        # Spawn first: on a closed task group this raises and nothing is registered.
        task_group.start_soon(_guard, home, name="AsyncComputation home")
        _homes[task_group] = home
    return home


async def _guard(home: _Home) -> None:
    """Live while `home` has runners; on cancellation, cancel the suspended ones."""
    try:
        await home.idle.wait()
    except anyio.get_cancelled_exc_class():
        if _homes.get(home.task_group) is home:
            del _homes[home.task_group]
        # Runners that are running a step are unwound by their own (cancelled) step task.
        with anyio.CancelScope(shield=True):
            for runner in list(home.runners):
                await runner._cancel_with_group()
        raise


class AsyncComputation(Generic[R]):
    """A computation running in an anyio task group, driven by its owner step by step.

    `R` is the computation's result type: `AsyncComputation.start(comp)` of a
    `Computation[R]` gives an `AsyncComputation[R]`, whose outcomes are `Outcome[R]`.

    Start one with `await AsyncComputation.start(comp, task_group=tg)` (or `start_sync`, which
    also returns the first outcome). Each outcome is reported once as a `Message(tag, outcome)`:
    to `on_message` (a plain function, called in order) and to the runner's async iterator
    (`async for message in runner`, which ends after the final message). When the run suspends
    at a `Yield`, continue it with `resume(value)` or `resume_sync(value)`; stop it with
    `cancel(reason)` or `cancel_sync(reason)`, from any task.

    The runner is a child of its task group: the group waits for it to finish, and cancelling
    the group cancels it, cleanup included. `linked=False` declares the group an
    application-level one and registers the runner under `id`, so a later owner can find it
    with `AsyncComputation.attach(id)`.

    Only one step runs at a time: resuming a runner that is running a step or has finished
    raises `ResumeError`. Timeouts of the `_sync` methods end the waiting, never the run.
    """

    __slots__ = (
        "__weakref__",
        "_cancel_reason",
        "_cont",
        "_home",
        "_inbox",
        "_last",
        "_reader",
        "_scope",
        "_state",
        "_step",
        "_suspend",
        "id",
        "linked",
        "on_message",
        "tag",
    )

    def __init__(
        self,
        tag: Any,
        run_id: str,
        linked: bool,
        on_message: Callable[[Message[R]], object] | None,
        messages: bool,
    ) -> None:
        """Internal: use `AsyncComputation.start` or `start_sync`."""
        self.tag = tag
        self.id = run_id
        self.linked = linked
        self.on_message = on_message
        self._state: RunnerState = _RUNNING
        self._suspend: Suspend[R] | None = None
        self._step: _Step | None = None
        self._scope: anyio.CancelScope | None = None
        self._cancel_reason: Any = _NO_CANCEL
        self._cont: Any = None
        self._last: Message[R] | None = None
        self._inbox: list[Message[R]] | None = [] if messages else None
        self._reader: anyio.Event | None = None
        self._home: _Home | None = None

    # -- starting -------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        comp: Computation[T],
        *,
        task_group: TaskGroup,
        tag: Any = None,
        handlers: Handler | Stack | Iterable[Handler | Stack] = (),
        on_message: Callable[[Message[T]], object] | None = None,
        messages: bool | None = None,
        linked: bool = True,
        run_id: str | None = None,
    ) -> AsyncComputation[T]:
        """Start `comp` with `handlers` (first listed innermost) in `task_group`; return the
        runner at once, while its first step runs.

        `tag` is copied into every `Message`. `on_message(message)` is called for each outcome,
        in order, from the task that produced it (a plain function: do not block in it).
        `messages` keeps the outcomes for `async for message in runner`; by default only when
        no `on_message` is given. `linked=False` registers the runner under `run_id` (default:
        an unguessable token) for `AsyncComputation.attach`; pass the application's task
        group then, not a request's. A computation that is not one, or a handler that fails to
        install, raises here.
        """
        run = Run(comp, flatten(handlers))
        if run_id is None:
            run_id = secrets.token_urlsafe(16)
        elif not linked and run_id in _registry:
            run.discard()
            raise ConflictError(f"an unlinked runner with id {run_id!r} is already running")
        if messages is None:
            messages = on_message is None
        # `cls` is the class as written (`AsyncComputation[Any]` to a checker): same type, new R.
        runner = cast("AsyncComputation[T]", cls(tag, run_id, linked, None, messages))
        runner.on_message = on_message
        try:
            home = _home_for(task_group)
        except BaseException:
            run.discard()
            raise
        home.runners.add(runner)
        runner._home = home
        if not linked:
            _registry[run_id] = runner
        runner._launch(run, None, None)
        return runner

    @classmethod
    async def start_sync(
        cls,
        comp: Computation[T],
        *,
        task_group: TaskGroup,
        tag: Any = None,
        handlers: Handler | Stack | Iterable[Handler | Stack] = (),
        on_message: Callable[[Message[T]], object] | None = None,
        messages: bool | None = None,
        linked: bool = True,
        run_id: str | None = None,
        # The spec'd API: the wait has its own deadline and error (carrying the runner).
        timeout: float | None = 5,  # noqa: ASYNC109
    ) -> tuple[AsyncComputation[T], Outcome[T]]:
        """`start`, then wait up to `timeout` seconds for the first outcome; returns
        `(runner, outcome)`. On timeout raises `effects.TimeoutError` whose `runner` is the
        started runner (it goes on running)."""
        runner = await cls.start(
            comp,
            task_group=task_group,
            tag=tag,
            handlers=handlers,
            on_message=on_message,
            messages=messages,
            linked=linked,
            run_id=run_id,
        )
        step = runner._step
        assert step is not None
        return runner, await runner._wait(step, timeout, "the first outcome")

    @classmethod
    def attach(
        cls, run_id: str, *, on_message: Callable[[Message[Any]], object] | None = None
    ) -> AsyncComputation[Any]:
        """The unlinked runner registered as `run_id`, for an owner that comes back (a page
        reconnecting). `on_message`, if given, replaces the previous owner's callback.
        `runner.outcome` is the latest outcome to show. Raises `RunNotFound` when no unlinked
        runner with that id is running (it finished, or never existed)."""
        runner = _registry.get(run_id)
        if runner is None:
            raise RunNotFound(f"no unlinked runner {run_id!r} is running")
        if on_message is not None:
            runner.on_message = on_message
        return runner

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> RunnerState:
        """`"running"` (a step is in progress), `"suspended"` (waiting for `resume`) or
        `"finished"` (Done, Throw or Cancelled was reported)."""
        return self._state

    @property
    def outcome(self) -> Outcome[R] | None:
        """The latest reported outcome (`None` until the first step reports)."""
        return None if self._last is None else self._last.outcome

    @property
    def seq(self) -> int:
        """How many outcomes have been reported so far."""
        return 0 if self._last is None else self._last.seq

    @property
    def prompt(self) -> Any:
        """The `Yield` prompt the runner is suspended at (`None` when not suspended)."""
        return None if self._suspend is None else self._suspend.value

    # -- commands -------------------------------------------------------------------------

    async def resume(self, value: Any = None) -> None:
        """Continue the suspended run with `value` and return at once (the next outcome is
        reported as a message). Raises `InvalidInput` if `value` fails the `Yield`'s `input`
        validation (the runner stays suspended at the same prompt) and `ResumeError` if the
        runner is not suspended."""
        self._resume(value)

    async def resume_sync(
        self,
        value: Any = None,
        *,
        timeout: float | None = 5,  # noqa: ASYNC109 - the spec'd API (see start_sync)
    ) -> Outcome[R]:
        """`resume`, then wait up to `timeout` seconds for the outcome of *this* step and
        return it. On timeout raises `effects.TimeoutError`; the step goes on."""
        return await self._wait(self._resume(value), timeout, "the next outcome")

    async def cancel(self, reason: Any = None) -> None:
        """Cancel the run and return at once: its cleanup runs innermost first, then
        `Cancelled(reason)` is reported. A running step is interrupted at its next await, and
        if it suspends instead, the cancellation wins. No-op on a finished runner or one that
        is already being cancelled (the first reason is kept)."""
        self._request_cancel(reason)

    async def cancel_sync(
        self,
        reason: Any = None,
        *,
        timeout: float | None = 5,  # noqa: ASYNC109 - the spec'd API (see start_sync)
    ) -> Outcome[R]:
        """`cancel`, then wait up to `timeout` seconds for the final outcome and return it:
        `Cancelled(reason)`, or whatever the run ended with if it finished first (also when it
        had finished before the call)."""
        step = self._request_cancel(reason)
        if step is None:
            assert self._last is not None
            return self._last.outcome
        return await self._wait(step, timeout, "the end of the cancellation")

    # -- messages -------------------------------------------------------------------------

    def __aiter__(self) -> AsyncComputation[R]:
        """`async for message in runner`: the messages not yet read, ending after the final
        one. Each message goes to one reader."""
        return self

    async def __anext__(self) -> Message[R]:
        """The next unread message; the iteration ends after the final one."""
        inbox = self._inbox
        if inbox is None:
            raise ConfigurationError(
                "this runner does not keep messages (started with on_message and without "
                "messages=True); use the callback"
            )
        while not inbox:
            if self._state is _FINISHED:
                raise StopAsyncIteration
            if self._reader is None:
                self._reader = anyio.Event()
            await self._reader.wait()
        return inbox.pop(0)

    # -- internals ------------------------------------------------------------------------

    def _resume(self, value: Any) -> _Step:
        # No await before the state changes: of two tasks resuming at once, exactly one wins.
        if self._state is not _SUSPENDED:
            raise ResumeError(self._not_suspended())
        suspend = self._suspend
        assert suspend is not None
        # Validates before consuming the one-shot suspension (InvalidInput leaves it usable).
        cont, value = suspend._take(value)
        self._suspend = None
        return self._launch(cont, value, None)

    def _request_cancel(self, reason: Any) -> _Step | None:
        if self._state is _FINISHED:
            return None
        if self._state is _RUNNING:
            if self._cancel_reason is _NO_CANCEL:
                self._cancel_reason = reason
                if self._scope is not None:
                    if self._cont is not None:
                        # The computation's cleanup sees the caller's reason.
                        self._cont.interrupt_reason = reason
                    self._scope.cancel()
            return self._step
        suspend = self._suspend
        assert suspend is not None
        cont, _ = suspend._take(None, validate=False)
        self._suspend = None
        self._cancel_reason = reason
        return self._launch(cont, None, Cancellation(reason))

    def _launch(self, cont: _Continuation, value: Any, exc: BaseException | None) -> _Step:
        step = _Step(self.seq + 1)
        self._step = step
        self._state = _RUNNING
        self._cont = cont
        assert self._home is not None
        self._home.task_group.start_soon(self._drive, cont, value, exc, step)
        return step

    async def _drive(
        self, cont: _Continuation, value: Any, exc: BaseException | None, step: _Step
    ) -> None:
        """The task of one step: drive the computation to its next outcome and report it."""
        if exc is None and self._cancel_reason is not _NO_CANCEL:
            # Cancelled before this task got to run: do not start the step at all.
            value, exc = None, Cancellation(self._cancel_reason)
        out: Outcome[Any] | None = None
        self._scope = scope = anyio.CancelScope()
        try:
            with scope:
                out = await cont.adrive(value, exc)
        except anyio.get_cancelled_exc_class():
            # The task group was cancelled while the step awaited: the interpreter has already
            # unwound the computation (shielded), so only the report is left.
            self._scope = None
            self._report(step, Cancelled(GROUP_CANCELLED))
            raise
        self._scope = None
        self._cont = None
        if out is None:  # `cancel` cut an await short; the interpreter ran the cleanup
            unwound = getattr(cont, "unwound", None)
            out = unwound if unwound is not None else Cancelled(self._cancel_reason)
        elif type(out) is Suspend:
            try:
                # A step with no await in it never saw a cancellation of the group.
                await anyio.lowlevel.checkpoint_if_cancelled()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    out = await out.acancel(GROUP_CANCELLED)
                self._report(step, out)
                raise
            if self._cancel_reason is not _NO_CANCEL:
                # `cancel` arrived while this step ran and the step then suspended: it wins.
                with anyio.CancelScope(shield=True):
                    out = await out.acancel(self._cancel_reason)
        self._report(step, out)

    async def _cancel_with_group(self) -> None:
        """Called (shielded) by the home task when the task group is cancelled."""
        if self._state is not _SUSPENDED:
            return  # finished, or its own step task is being cancelled with the group
        suspend = self._suspend
        assert suspend is not None
        self._suspend = None
        self._cancel_reason = GROUP_CANCELLED
        step = _Step(self.seq + 1)
        self._step = step
        self._state = _RUNNING
        self._report(step, await suspend.acancel(GROUP_CANCELLED))

    def _report(self, step: _Step, out: Outcome[Any]) -> None:
        if type(out) is Suspend:
            self._suspend = out
            out = out.report()
            self._state = _SUSPENDED
        else:
            self._state = _FINISHED
            self._unregister()
        self._step = None
        message = Message(self.tag, out, step.seq)
        self._last = message
        step.outcome = out
        if step.event is not None:
            step.event.set()
        if self._inbox is not None:
            self._inbox.append(message)
        if self._reader is not None and (self._inbox or self._state is _FINISHED):
            self._reader.set()
            self._reader = None
        if self.on_message is not None:
            self.on_message(message)

    def _unregister(self) -> None:
        if not self.linked and _registry.get(self.id) is self:
            del _registry[self.id]
        home = self._home
        if home is not None:
            home.runners.discard(self)
            if not home.runners:
                home.idle.set()
                if _homes.get(home.task_group) is home:
                    del _homes[home.task_group]

    async def _wait(self, step: _Step, limit: float | None, what: str) -> Outcome[Any]:
        if step.outcome is None:
            if step.event is None:
                step.event = anyio.Event()
            with anyio.move_on_after(limit):
                await step.event.wait()
            if step.outcome is None:
                raise TimeoutError(
                    f"{what} of {self!r} did not arrive within {limit} s; the runner goes on",
                    runner=self,
                )
        return step.outcome

    def _not_suspended(self) -> str:
        if self._state is _FINISHED:
            return f"{self!r} has finished with {self.outcome!r}; it cannot be resumed"
        if self._cancel_reason is not _NO_CANCEL:
            return f"{self!r} is being cancelled; it cannot be resumed"
        return f"{self!r} is running a step; resume it after its next Suspend (one step at a time)"

    def __repr__(self) -> str:
        return f"<AsyncComputation tag={self.tag!r} {self._state}>"
