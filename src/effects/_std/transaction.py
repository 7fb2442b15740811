"""`transaction(comp)`: in-memory handler state changed inside is rolled back if `comp` raises.

A handler takes part by being *transactional*: it has `snapshot()` (returns an opaque value)
and `restore(snapshot)`. `State`, `Writer` and `EventAccumulator` are. `transaction` snapshots
every transactional handler visible in its scope when it starts and, if the computation raises
or is cancelled, restores them innermost transaction first, then lets the error go on.
Nothing is recorded: in a durable run the same errors are replayed at the same points, so a
replay rolls back exactly what the recorded run rolled back.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._computation import Computation
from .._exceptions import Cancellation
from .._handler import Handler
from .._interpreter import Run, ScopeEffect, Tables

T = TypeVar("T")


@runtime_checkable
class Transactional(Protocol):
    """The protocol of a handler whose per-scope state `transaction` rolls back.

    `snapshot()` returns whatever `restore` needs to put the state back as it was; it is called
    when a transaction starts, `restore(snapshot)` only if the transaction fails. Snapshots
    must be cheap (a reference or a length, not a deep copy): the state's values are treated
    as immutable, as they are by replay.
    """

    def snapshot(self) -> Any:
        """Capture the handler's current state."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Put back the state captured by `snapshot`."""
        ...


class _Participants(ScopeEffect):
    """Answered by the interpreter: the transactional handlers visible where it is performed."""

    __slots__ = ()

    def answer(self, run: Run, tables: Tables) -> Any:
        seen: dict[int, Handler] = {}
        for _, _, owner in tables.meta.values():
            if id(owner) not in seen and isinstance(owner, Transactional):
                seen[id(owner)] = owner
        return list(seen.values())


def transaction(
    comp: Computation[T], *, preserve: Iterable[type[Handler]] = ()
) -> Generator[Any, Any, T]:
    """Run `comp`; if it raises (or is cancelled), undo what it changed in the transactional
    handlers in scope (`State`, `Writer`, `EventAccumulator`, or any handler with
    `snapshot`/`restore`) and re-raise.

    Transactions nest: an inner one that fails restores the state as it was when *it* began,
    and the outer one goes on. `preserve` names handler classes (e.g. a tagged State family
    used as a counter) whose changes are kept even on failure. A `Yield` inside is a pause,
    not a failure: nothing is rolled back when the run suspends there. Effects that reached
    the outside world (a `Call`, a sent mail) are not undone: pair them with compensations.
    Events already streamed by `EventAccumulator(on_event=...)` stay streamed; only the
    collected list is rolled back.
    """
    kept = tuple(preserve)
    handlers: list[Any] = yield _Participants()
    saved = [(h, h.snapshot()) for h in handlers if not isinstance(h, kept)]
    try:
        return (yield from comp)
    except (Exception, Cancellation):
        for h, snap in reversed(saved):
            h.restore(snap)
        raise
