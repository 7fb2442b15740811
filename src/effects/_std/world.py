"""Effects whose answers come from the world and differ between runs: `Fresh`, `Random`, `Clock`.

A durable run records their results, so a replay sees the same uuid, number and time.
Test handlers with fixed answers live in `effects.testing`.
"""

from __future__ import annotations

import os
import random as _random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import anyio

from .._effect import Effect
from .._handler import Handler, handles
from .._interpreter import running_async


class NewUuid(Effect[UUID]):
    """Ask for a new unique id."""


class RandomFloat(Effect[float]):
    """Ask for a float in [0, 1)."""


class RandomInt(Effect[int]):
    """Ask for an int in [low, high] (both included)."""

    low: int
    high: int


class RandomChoice(Effect[Any]):
    """Ask for one element of `options`."""

    options: Sequence[Any]


class Now(Effect[datetime]):
    """Ask for the current time (timezone-aware, UTC)."""


class Sleep(Effect[None]):
    """Wait `seconds`. Under an `EffectLogger` it is a durable timer: the wake-up time is
    recorded before the wait, so a replay waits only for what is left (docs/durable/timers.md)."""

    seconds: float


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class Fresh(Handler):
    """Production handler for fresh ids: `Fresh.uuid()`; uuid4 by default, `Fresh(version=7)`
    for time-ordered ids."""

    pure = True
    _new: ClassVar[NewUuid] = NewUuid()

    def __init__(self, *, version: int = 4) -> None:
        if version not in (4, 7):
            raise ValueError("Fresh supports uuid version 4 or 7")
        self.version = version

    @classmethod
    def uuid(cls) -> NewUuid:
        """The effect that asks for a new UUID."""
        return cls._new

    def install(self) -> Fresh:
        return self

    @handles(NewUuid)
    def _uuid(self, effect: NewUuid) -> UUID:
        return uuid7() if self.version == 7 else uuid.uuid4()


class Random(Handler):
    """Random numbers: `Random.random()`, `Random.randint(a, b)`, `Random.choice(seq)`.
    `Random(seed=42)` is reproducible; `Random()` draws from the system's entropy."""

    pure = True

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.rng = _random.Random(seed)

    def install(self) -> Random:
        inst = super().install()
        inst.rng = _random.Random(self.seed)  # each scope replays the same seeded sequence
        return inst

    @staticmethod
    def random() -> RandomFloat:
        """The effect that asks for a float in [0, 1)."""
        return RandomFloat()

    @staticmethod
    def randint(low: int, high: int) -> RandomInt:
        """The effect that asks for an int in [low, high]."""
        return RandomInt(low, high)

    @staticmethod
    def choice(options: Sequence[Any]) -> RandomChoice:
        """The effect that asks for one element of `options`."""
        return RandomChoice(options)

    @handles(RandomFloat)
    def _float(self, effect: RandomFloat) -> float:
        return self.rng.random()

    @handles(RandomInt)
    def _int(self, effect: RandomInt) -> int:
        return self.rng.randint(effect.low, effect.high)

    @handles(RandomChoice)
    def _choice(self, effect: RandomChoice) -> Any:
        return self.rng.choice(effect.options)


class Clock(Handler):
    """The real-time clock: `Clock.now()` (UTC) and `Clock.sleep(seconds)` (anyio sleep under
    the async runner, blocking sleep under the sync one; a durable timer in a logged run)."""

    @staticmethod
    def now() -> Now:
        """The effect that asks for the current time."""
        return Now()

    @staticmethod
    def sleep(seconds: float) -> Sleep:
        """The effect that waits `seconds`."""
        return Sleep(seconds)

    def install(self) -> Clock:
        return self

    @handles(Now)
    def _now(self, effect: Now) -> datetime:
        return datetime.now(UTC)

    @handles(Sleep)
    def _sleep(self, effect: Sleep) -> Any:
        if running_async():
            return anyio.sleep(effect.seconds)
        time.sleep(effect.seconds)
        return None
