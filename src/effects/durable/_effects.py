"""What the effect logger says to the world outside it: `Checkpoint`, the durable timer's
`StartTimer` and `AwaitTimer`, idempotency keys and the at-most-once mark."""

from __future__ import annotations

import contextvars
from typing import Any, Literal, TypeVar

from .._effect import Effect
from .._handler import Handler
from .._std.control import Yield
from ._log import Log

T = TypeVar("T", bound="type[Effect[Any]] | Handler")

CheckpointReason = Literal["external", "write_ahead", "cancelled", "timer"]


class Checkpoint(Effect[None]):
    """Persist `log` now. Yielded by `EffectLogger(checkpoints=True)` in the scope outside it.

    `reason` is `"external"` after an effect of an external handler completed (so it is never
    repeated after a crash), `"write_ahead"` just before an at-most-once effect runs (its
    `pending` entry is the log's last), `"cancelled"` when a cancellation was delivered at an
    effect (the log records where, so a replay cancels there again), or `"timer"` once a
    sleep's wake-up time is recorded (so a restarted run sleeps only what is left). The handler
    (a durable store) must finish writing before it returns; the computation continues only
    then. `log` is a snapshot: entries are immutable and later changes to the run's log do not
    show in it.
    """

    log: Log
    reason: CheckpointReason


Checkpoint.__module__ = "effects.durable"


class StartTimer(Effect[float]):
    """A durable sleep of `seconds` starts: answer its wake-up time, UTC epoch seconds.

    Yielded by `EffectLogger` outside it when the computation performs `Clock.sleep(seconds)`
    live; the answer is recorded (and, with `checkpoints=True`, checkpointed) before the sleep
    begins, and a replay reuses it. `DurableRunner` answers by the database's clock. With no
    handler for it, the logger asks the clock in scope (`Clock.now()`), or the system clock.
    """

    seconds: float


class AwaitTimer(Effect[None]):
    """Wait until `wake_at` (UTC epoch seconds), the recorded wake-up time of a sleep.

    Yielded by `EffectLogger` outside it, live, after `StartTimer` (or after replaying a sleep
    that had started). `DurableRunner` waits in memory when little is left, else releases the
    run as `sleeping` until it is due. With no handler for it, the logger performs
    `Sleep(what is left)` by the clock in scope.
    """

    wake_at: float


StartTimer.__module__ = "effects.durable"
AwaitTimer.__module__ = "effects.durable"

_idempotency_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "effects_idempotency_key", default=None
)


def idempotency_key() -> str | None:
    """The stable key of the logged effect whose handler is running: `"{run_id}:{seq}"`.

    A handler (or an awaitable it returns) reads it to make a side effect idempotent: when a
    crash interrupts the effect before its result was checkpointed, the replayed run performs it
    again at the same position, with the same key. `None` outside a logged effect's handler.
    """
    return _idempotency_key.get()


def at_most_once(target: T) -> T:
    """Mark an effect class or a handler as at-most-once; returns it (usable as a decorator).

    Before such an effect runs, the logger records a write-ahead `pending` entry (and, with
    `checkpoints=True`, checkpoints it). If a crash leaves that entry without a result, replay
    does not run the effect again: it raises `InterruptedEffect` at that point. Declaring
    `at_most_once: ClassVar[bool] = True` on an effect class or a `Handler` subclass does the
    same.
    """
    target.at_most_once = True  # type: ignore[union-attr]
    _outside.clear()
    from ._serialize import _infos  # (imported here: _serialize imports this module)

    _infos.clear()  # they hold `needs_outside` too
    return target


def is_at_most_once(owner: Any) -> bool:
    """Whether a handler (or an effect class) is marked at-most-once."""
    return bool(getattr(owner, "at_most_once", False))


_outside: dict[type, bool] = {}


def needs_outside(effect_type: type) -> bool:
    """Whether the logger must run an effect through its general path (a computation outside
    the logger): a `Yield` (its answer arrives on resume) or an at-most-once effect (its
    write-ahead record comes first)."""
    try:
        return _outside[effect_type]
    except KeyError:
        flag = _outside[effect_type] = issubclass(effect_type, Yield) or is_at_most_once(
            effect_type
        )
        return flag
