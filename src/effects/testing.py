"""Test doubles: a scripted handler, fixed and advancing clocks, seeded random, deterministic ids.

Install them in place of production handlers; the computation under test does not change::

    script = Scripted((GetUser(1), alice), (SendMail(alice.email, "hi"), None))
    assert run(onboard(1), script) == "ok"
    script.assert_done()
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ._effect import Effect
from ._handler import Handler, HandlerFn
from ._std.world import NewUuid, Now, RandomChoice, RandomFloat, RandomInt, Sleep
from ._std.world import Random as _Random

__all__ = (
    "AdvancingClock",
    "DeterministicFresh",
    "FixedClock",
    "FixedRandom",
    "ScriptMismatch",
    "Scripted",
    "SeededRandom",
)


class ScriptMismatch(AssertionError):
    """The computation performed an effect the script did not expect (message holds a diff)."""


class Scripted(Handler):
    """Answers effects from an ordered script of `(expected_effect, result)` pairs.

    It handles every effect type that appears in the script. Each performed effect must equal
    the next expected one, else `ScriptMismatch` is raised with a diff of the two. A result that
    is an exception instance is raised at the `yield`. `assert_done()` checks the whole script
    was used. The script is shared by all scopes it is installed in (it is one sequence).
    """

    def __init__(self, *pairs: tuple[Effect[Any], Any]) -> None:
        self.script = list(pairs)
        self.position = 0

    def install(self) -> Scripted:
        return self

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        return {type(expected): self._answer for expected, _ in self.script}

    def _answer(self, effect: Effect[Any]) -> Any:
        if self.position >= len(self.script):
            raise ScriptMismatch(
                f"unexpected effect after the script ended ({len(self.script)} steps): {effect!r}"
            )
        expected, result = self.script[self.position]
        if effect != expected:
            diff = "\n".join(
                difflib.ndiff([repr(expected)], [repr(effect)])  # shows where they differ
            )
            raise ScriptMismatch(
                f"step {self.position}: expected {expected!r}, got {effect!r}\n{diff}"
            )
        self.position += 1
        return result

    @property
    def remaining(self) -> list[tuple[Effect[Any], Any]]:
        """The pairs not used yet."""
        return self.script[self.position :]

    def assert_done(self) -> None:
        """Fail unless every scripted effect was performed."""
        if self.remaining:
            raise ScriptMismatch(
                f"{len(self.remaining)} scripted effect(s) never performed, next: "
                f"{self.remaining[0][0]!r}"
            )


class FixedClock(Handler):
    """A clock stopped at `at`: `Clock.now()` always returns it, `Clock.sleep` returns at once."""

    pure = True

    def __init__(self, at: datetime | None = None) -> None:
        self.at = at or datetime(2024, 1, 1, tzinfo=UTC)

    def install(self) -> FixedClock:
        return self

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        return {Now: lambda e: self.at, Sleep: lambda e: None}


class AdvancingClock(Handler):
    """A fake clock that moves only when asked: each `Clock.now()` advances it by `tick`, each
    `Clock.sleep(s)` by `s` (returning at once). `elapsed` tells how far it moved."""

    pure = True

    def __init__(self, start: datetime | None = None, *, tick: timedelta = timedelta(0)) -> None:
        self.start = start or datetime(2024, 1, 1, tzinfo=UTC)
        self.now = self.start
        self.tick = tick

    def install(self) -> AdvancingClock:
        return self  # one timeline shared by every scope, like a real clock

    @property
    def elapsed(self) -> timedelta:
        """How far the clock moved since `start`."""
        return self.now - self.start

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        return {Now: self._now, Sleep: self._sleep}

    def _now(self, effect: Now) -> datetime:
        current = self.now
        self.now += self.tick
        return current

    def _sleep(self, effect: Sleep) -> None:
        self.now += timedelta(seconds=effect.seconds)


class SeededRandom(_Random):
    """`Random` with a required seed: the same sequence in every run."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)


class FixedRandom(Handler):
    """Answers random effects from a fixed list of values, in order, cycling.

    `Random.random()` takes the next value as is, `Random.randint(a, b)` the next value (checked
    to be in range), `Random.choice(seq)` the element at the next value's index.
    """

    pure = True

    def __init__(self, values: Iterable[Any]) -> None:
        self.values = list(values)
        if not self.values:
            raise ValueError("FixedRandom needs at least one value")
        self.position = 0

    def install(self) -> FixedRandom:
        return self

    def _next(self) -> Any:
        value = self.values[self.position % len(self.values)]
        self.position += 1
        return value

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        return {
            RandomFloat: lambda e: self._next(),
            RandomInt: self._int,
            RandomChoice: lambda e: e.options[self._next()],
        }

    def _int(self, effect: RandomInt) -> int:
        value = self._next()
        if not effect.low <= value <= effect.high:
            raise ValueError(f"FixedRandom value {value} outside [{effect.low}, {effect.high}]")
        return int(value)


class DeterministicFresh(Handler):
    """Fresh ids that are the same in every run: UUIDs counting up from `start`."""

    pure = True

    def __init__(self, start: int = 1) -> None:
        self.counter = start  # each installation counts from here on its own copy

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        return {NewUuid: self._uuid}

    def _uuid(self, effect: NewUuid) -> uuid.UUID:
        value = uuid.UUID(int=self.counter)
        self.counter += 1
        return value
