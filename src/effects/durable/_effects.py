"""What the effect logger says to the world outside it: `Checkpoint`, idempotency keys and the
at-most-once mark."""

from __future__ import annotations

import contextvars
from typing import Any, Literal, TypeVar

from .._effect import Effect
from .._handler import Handler
from .._std.control import Yield
from ._log import Log

T = TypeVar("T", bound="type[Effect[Any]] | Handler")

CheckpointReason = Literal["external", "write_ahead", "cancelled"]


class Checkpoint(Effect[None]):
    """Persist `log` now. Yielded by `EffectLogger(checkpoints=True)` in the scope outside it.

    `reason` is `"external"` after an effect of an external handler completed (so it is never
    repeated after a crash), or `"write_ahead"` just before an at-most-once effect runs (its
    `pending` entry is the log's last), or `"cancelled"` when a cancellation was delivered at
    an effect (the log records where, so a replay cancels there again). The handler (a durable
    store) must finish writing before it returns; the computation continues only then. `log`
    is a snapshot: entries are immutable and later changes to the run's log do not show in it.
    """

    log: Log
    reason: CheckpointReason


Checkpoint.__module__ = "effects.durable"

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
