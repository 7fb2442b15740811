"""`Parallel`: run computations as branches, concurrently on anyio, one after another under the
sync runner.

Each branch is a run of its own (a frame stack, `Run.branch`) that starts in the scope of the
`Parallel` effect: its effects reach the handlers installed outside, and handlers it installs
are its own. In-memory handlers that know how to *branch* (`State`, `Writer`,
`EventAccumulator`, the `EffectLogger`) give each branch its own copy: a branch's State
changes stay in the branch, its Writer items and events are merged back in branch order once
the branches end. So the result never depends on which branch ran first, and a durable run
replays the same whatever order the branches finished in.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Generator, Iterable
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import anyio

from .._computation import Computation
from .._effect import Effect
from .._exceptions import Cancellation, ConfigurationError, UnhandledSuspension
from .._handler import Handler
from .._interpreter import Run, ScopeEffect, Tables, extend, running_async
from .._outcome import Cancelled, Done, Outcome, Suspend, Throw

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - the item type of `Parallel.map`

_ALL: Final = "all"
_RACE: Final = "race"
RACE_LOST: Final = "lost the race"
"""The reason a race's losing branches are cancelled with."""
SIBLING_FAILED: Final = "a sibling branch failed"
"""The reason `Parallel.all` cancels the other branches with when one raises."""

# The path of the branch being run ("" outside any): "1" is the second branch of a Parallel,
# "1.0" the first branch of a Parallel inside it. Each branch task has its own context.
_branch_path: contextvars.ContextVar[str] = contextvars.ContextVar("effects_branch", default="")


def current_branch() -> str | None:
    """The id of the `Parallel` branch being run (`"1"`, `"1.0"` for a nested one), or None
    outside any branch."""
    return _branch_path.get() or None


@runtime_checkable
class Branching(Protocol):
    """A handler that gives each `Parallel` branch its own instance.

    `branch(path, group)` returns the handler installed for the branch `path` (`group` is the
    same object for the branches of one `Parallel`); when the branches have ended,
    `joined(branch)` returns the effects to perform in the parent's scope for each branch's
    instance, in branch order (a Writer's items told again, say)."""

    def branch(self, path: str, group: object) -> Handler:
        """The handler a branch sees in place of this one."""
        ...

    def joined(self, branch: Handler) -> Iterable[Effect[Any]]:
        """What to perform in the parent's scope after the branches end."""
        ...


def _suspended_in_branch(outcome: Suspend) -> UnhandledSuspension:
    return UnhandledSuspension(
        f"Yield({outcome.value!r}) inside a Parallel branch reached the runner: a branch cannot "
        "suspend the run (answer it inside the branch, e.g. with effects.testing.respond, or "
        "ask before the Parallel)"
    )


class _Branch:
    __slots__ = ("copies", "index", "outcome", "path", "run", "started")

    def __init__(self, index: int, path: str, run: Run, copies: list[tuple[Any, Handler]]):
        self.index = index
        self.path = path
        self.run = run
        self.copies = copies  # (the branching handler, this branch's instance)
        self.outcome: Outcome | None = None
        self.started = False


class _Joined:
    """What the `Parallel` effect answers: the merge effects to perform, then the result."""

    __slots__ = ("effects", "error", "value")

    def __init__(self, effects: list[Any], value: Any, error: BaseException | None) -> None:
        self.effects = effects
        self.value = value
        self.error = error


class _Group:
    """The branches of one `Parallel` and how they ended."""

    def __init__(self, mode: str, branches: list[_Branch]) -> None:
        self.mode = mode
        self.branches = branches
        self.stopped = False
        self.decided: _Branch | None = None  # the branch whose outcome is the result

    def settle(self, b: _Branch, outcome: Outcome) -> bool:
        """Record `b`'s outcome; whether the other branches must stop now."""
        b.outcome = outcome
        if self.stopped:
            return False
        kind = type(outcome)
        if self.mode == _RACE:
            if kind is Done or kind is Throw:
                self.decided, self.stopped = b, True
        elif kind is not Done:
            self.decided, self.stopped = b, True
        return self.stopped

    async def drive_async(self, b: _Branch) -> Outcome:
        outcome = await b.run.adrive(None, None)
        while type(outcome) is Suspend:
            cont, _ = outcome._take(None, validate=False)
            outcome = await cont.adrive(None, _suspended_in_branch(outcome))
        return outcome

    def drive_sync(self, b: _Branch) -> Outcome:
        outcome = b.run.drive(None, None)
        while type(outcome) is Suspend:
            cont, _ = outcome._take(None, validate=False)
            outcome = cont.drive(None, _suspended_in_branch(outcome))
        return outcome

    # -- the two drivers --------------------------------------------------------------------

    def run_sync(self) -> _Joined:
        """One branch after another, in order; after a race is won or a branch of `all` fails,
        the branches not started yet never start."""
        for b in self.branches:
            if self.stopped:
                break
            token = _branch_path.set(b.path)
            try:
                b.started = True
                self.settle(b, self.drive_sync(b))
            finally:
                _branch_path.reset(token)
        return self.joined()

    async def run_async(self, limit: int | None) -> _Joined:
        limiter = anyio.CapacityLimiter(limit) if limit else None
        async with anyio.create_task_group() as tg:
            for b in self.branches:
                tg.start_soon(self._one, b, tg.cancel_scope, limiter)
        return self.joined()

    async def _one(self, b: _Branch, scope: anyio.CancelScope, limiter: Any) -> None:
        _branch_path.set(b.path)  # this task's own context
        if limiter is not None:
            async with limiter:
                await self._started(b, scope)
        else:
            await self._started(b, scope)

    async def _started(self, b: _Branch, scope: anyio.CancelScope) -> None:
        if self.stopped:
            return  # decided while this branch waited for the limiter: it never starts
        b.started = True
        if self.settle(b, await self.drive_async(b)):
            reason = RACE_LOST if self.mode == _RACE else SIBLING_FAILED
            for other in self.branches:
                if other.outcome is None:
                    other.run.interrupt_reason = reason
            # The others unwind (their finally blocks and brackets run, shielded) and end.
            scope.cancel()

    # -- the result -------------------------------------------------------------------------

    def joined(self) -> _Joined:
        effects: list[Any] = []
        cleanup_error: BaseException | None = None
        for b in self.branches:
            if not b.started:
                b.run.discard()  # its generator never ran: nothing to clean up
                continue
            for owner, copy in b.copies:
                effects.extend(owner.joined(copy))
            unwound = b.run.unwound
            if b.outcome is None and type(unwound) is Throw and cleanup_error is None:
                cleanup_error = unwound.error  # a cancelled branch's cleanup failed
        if cleanup_error is not None:
            return _Joined(effects, None, cleanup_error)
        decided = self.decided
        if self.mode == _RACE:
            if decided is None:
                return _Joined(effects, None, self._all_cancelled())
            return _Joined(effects, *_result(decided.outcome))
        if decided is not None:
            return _Joined(effects, *_result(decided.outcome))
        values = [b.outcome.value for b in self.branches]  # type: ignore[union-attr]
        return _Joined(effects, values, None)

    def _all_cancelled(self) -> BaseException:
        for b in self.branches:
            if type(b.outcome) is Cancelled:
                return Cancellation(b.outcome.reason)
        return ValueError("Parallel.race needs at least one branch")


def _result(outcome: Outcome | None) -> tuple[Any, BaseException | None]:
    if type(outcome) is Done:
        return outcome.value, None
    if type(outcome) is Throw:
        return None, outcome.error
    assert type(outcome) is Cancelled
    # A branch cancelled by itself (a replayed cancellation): the cancellation goes on.
    return None, Cancellation(outcome.reason)


def _refuse_blind_interceptors(run: Run | None) -> None:
    # An interceptor installed around the Parallel (an effect logger) would see the effects of
    # every branch at once, interleaved in whatever order they happen: unless it branches
    # itself, it cannot tell them apart.
    while run is not None:
        for _, _, scope in run.frames:
            for h in scope.handlers if scope is not None else ():
                if type(h).intercept is not Handler.intercept and not isinstance(h, Branching):
                    raise ConfigurationError(
                        f"{h!r} intercepts effects but cannot observe Parallel branches "
                        "(it does not implement effects.Branching)"
                    )
        run = run.parent


class _Branches(ScopeEffect):
    """Run `comps` as branches (answered by the interpreter in the performing scope)."""

    comps: tuple[Any, ...]
    mode: str
    limit: int | None = None

    def answer(self, run: Run, tables: Tables) -> Any:
        _refuse_blind_interceptors(run)
        owners: dict[int, Any] = {}
        for _, _, owner in tables.meta.values():
            if id(owner) not in owners and isinstance(owner, Branching):
                owners[id(owner)] = owner
        parent = _branch_path.get()
        group_token = object()
        branches: list[_Branch] = []
        try:
            for i, comp in enumerate(self.comps):
                path = f"{parent}.{i}" if parent else str(i)
                fresh = [(o, o.branch(path, group_token)) for o in owners.values()]
                if fresh:
                    child_tables, scope = extend(tables, tuple(h for _, h in fresh))
                    # Pair each branching handler with the instance actually installed.
                    copies = list(zip((o for o, _ in fresh), scope.handlers, strict=True))
                else:
                    child_tables, scope, copies = tables, None, []
                branches.append(
                    _Branch(i, path, Run.branch(comp, child_tables, scope, run), copies)
                )
        except BaseException:
            for b in branches:
                b.run.discard()
            raise
        group = _Group(self.mode, branches)
        if running_async():
            return group.run_async(self.limit)
        return group.run_sync()


def _parallel(comps: tuple[Any, ...], mode: str, limit: int | None) -> Generator[Any, Any, Any]:
    joined: _Joined = yield _Branches(comps, mode, limit)
    # Not `yield from` the list: a list iterator cannot take the results sent back.
    for effect in joined.effects:  # noqa: UP028
        yield effect
    if joined.error is not None:
        raise joined.error
    return joined.value


class Parallel:
    """Run computations as concurrent branches: `Parallel.all`, `Parallel.race`, `Parallel.map`.

    Under the async runner (`arun`, `AsyncComputation`, durable runs) the branches run in an
    anyio task group; under the sync runner one after another, in order, with the same results.
    Each branch runs in the scope where the `Parallel` is performed: it sees the handlers
    installed outside; `State`, `Writer` and `EventAccumulator` give each branch its own copy
    (a branch's State changes stay in it; Writer items and events are merged back in branch
    order). A `Yield` that reaches the runner from a branch raises `UnhandledSuspension` there.
    """

    @staticmethod
    def all(*comps: Computation[Any]) -> Generator[Any, Any, list[Any]]:
        """Run every branch; return their results in order. If one raises, the others are
        cancelled (their cleanup runs) and the error is raised here."""
        return _parallel(comps, _ALL, None)

    @staticmethod
    def race(*comps: Computation[Any]) -> Generator[Any, Any, Any]:
        """Return the result of the first branch to finish (or raise its error); the others
        are cancelled with `Cancellation("lost the race")` and their cleanup runs. Under the
        sync runner the first branch listed always finishes first."""
        if not comps:
            raise ValueError("Parallel.race needs at least one branch")
        return _parallel(comps, _RACE, None)

    @staticmethod
    def map(
        fn: Callable[[I], Computation[T]], items: Iterable[I], *, limit: int | None = None
    ) -> Generator[Any, Any, list[T]]:
        """`Parallel.all(*(fn(item) for item in items))` with at most `limit` branches
        running at once (all of them when None)."""
        if limit is not None and limit < 1:
            raise ValueError(f"Parallel.map limit must be at least 1, got {limit}")
        return _parallel(tuple(fn(item) for item in items), _ALL, limit)
