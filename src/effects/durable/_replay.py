"""`replay(log, comp, handlers)`: check a stored log against the code deployed now.

A CI step before a deploy replays every stored run with the new code: a run whose log the new
code no longer reproduces would fail with `DivergenceError` on its next cold resume or
recovery in production, so the deploy should stop first (or the change be guarded with
`patched`).

The replay performs nothing. Recorded effects return their logged results (as on a cold
resume); the replayable in-memory handlers (State, Reader, Writer, EventAccumulator, TaskTree)
run again; and the first effect the log does not hold — where the run would go on live — ends
the replay instead of reaching a handler. No Call, no user effect, no sleep, no checkpoint:
nothing is written anywhere, whichever handlers are passed. (Handlers a computation installs
*inside* itself are part of the computation and run on every replay, this one included, as
they do on a cold resume.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

from .._computation import Comp
from .._exceptions import DivergenceError, MissingHandlerError
from .._handler import Handler, HandlerFn, Stack, flatten, handles, with_handler
from .._outcome import Cancelled, Outcome, Suspend, Throw
from .._runners import start
from .._std.tasks import TaskTree
from ._effects import AwaitTimer, Checkpoint, StartTimer
from ._log import Log
from ._logger import EffectLogger

ReplayEnd = Literal["done", "failed", "cancelled", "suspended", "in progress"]


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay found: the log is consistent with the code.

    - `end`: where the replay stopped. `done`, `failed`, `cancelled`: the computation ended
      (consuming the whole log); `suspended`: at the log's pending `Yield`; `in progress`: the
      log ends mid-step (a running or sleeping run) and the code goes on with `next`, an
      effect the log does not hold yet.
    - `outcome`: the computation's outcome (`None` for `in progress`).
    - `entries`: how many log entries were replayed.
    - `next`: the first effect past the end of the log (`in progress` only), as text.
    """

    end: ReplayEnd
    outcome: Outcome | None
    entries: int
    next: str | None = None


class _EndOfLog(BaseException):
    """Thrown where the code leaves the log: the replay stops (a `BaseException`, so the
    computation's `except Exception` cannot go on past it)."""

    def __init__(self, effect: Any) -> None:
        super().__init__(effect)
        self.effect = effect


class _ReplayLogger(EffectLogger):
    """An `EffectLogger` that never goes live: where it would perform an effect for real (the
    log is exhausted), it stops the replay."""

    def install(self) -> _ReplayLogger:
        # `EffectLogger.install` makes a plain `EffectLogger` per installation.
        inst = super().install()
        inst.__class__ = _ReplayLogger
        return cast(_ReplayLogger, inst)

    def _guard(self, recorder: HandlerFn) -> HandlerFn:
        def guarded(effect: Any) -> Any:
            if self._cursor >= self._n_old:
                raise _EndOfLog(effect)
            return recorder(effect)

        return guarded

    def _live(self, effect: Any, *args: Any) -> Any:
        raise _EndOfLog(effect)


class _NoWaiting(Handler):
    """Innermost outside the logger: a replay that ends inside a sleep (the log holds its
    wake-up time, not its end) stops there instead of sleeping, and nothing is checkpointed."""

    @handles(StartTimer, AwaitTimer)
    def _timer(self, effect: Any) -> Any:
        raise _EndOfLog(effect)

    @handles(Checkpoint)
    def _checkpoint(self, effect: Checkpoint) -> None:
        return None


def replay(
    log: Log,
    comp: Comp[Any],
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
) -> Replayed:
    """Replay `log` with `comp` (the run's computation called with its arguments) and the
    `handlers` the run is executed with, performing nothing; returns `Replayed` if the code
    reproduces the log.

    Raises `DivergenceError` at the first step where the code now does something else than the
    log records (`position`, `expected` and `got` say where and what), `LogError` if the log
    belongs to another computation or a newer version, and `MissingHandlerError` if a recorded
    effect has no handler among `handlers` (pass the ones the run is executed with; they are
    never called for recorded effects).
    """
    logger = _ReplayLogger(log, computation=comp, run_id=log.run_id)
    # `_NoWaiting` innermost (the logger asks timers and checkpoints just outside itself), a
    # `TaskTree` outermost as a runner installs one (task effects replay in memory).
    outcome = start(with_handler(comp, logger), _NoWaiting(), *flatten(handlers), TaskTree())
    count = len(log.entries)
    if type(outcome) is Throw:
        err = outcome.error
        if isinstance(err, _EndOfLog):
            return Replayed("in progress", None, count, _describe(err.effect))
        if isinstance(err, DivergenceError | MissingHandlerError):
            raise err
        return Replayed("failed", outcome, count)
    if type(outcome) is Suspend:
        return Replayed("suspended", outcome, count)
    if type(outcome) is Cancelled:
        return Replayed("cancelled", outcome, count)
    return Replayed("done", outcome, count)


def _describe(effect: Any) -> str:
    text = repr(effect)
    return text if len(text) <= 200 else text[:199] + "…"
