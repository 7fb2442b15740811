"""`patched(id)`: branch between old and new code paths of a changed computation."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .._effect import Effect
from .._exceptions import MissingHandlerError


class Patched(Effect[bool]):
    """Has the run taken the code path introduced by patch `patch_id`? (See `patched`.)"""

    patch_id: str


Patched.__module__ = "effects.durable"


def patched(patch_id: str) -> Generator[Any, Any, bool]:
    """True on new runs and on runs that reach this point live; False when replaying a log
    that passed this point before the patch existed.

    Use it to change a computation without breaking runs recorded by the old code::

        if (yield from patched("send-receipt")):
            yield from Call(send_receipt, order)   # new code
        # old runs replay without the new effect

    A True decision is recorded in the log (a `Patched` entry), so later cold resumes of the
    same run make the same decision; a False decision is the absence of that entry at this
    position, which replays the same way. Without an `EffectLogger` it is always True.
    """
    try:
        return bool((yield Patched(patch_id)))
    except MissingHandlerError:
        return True
