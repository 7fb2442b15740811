"""Test doubles: a scripted handler, fixed and advancing clocks, seeded random, deterministic ids.

Install them in place of production handlers; the computation under test does not change::

    script = Scripted((GetUser(1), alice), (SendMail(alice.email, "hi"), None))
    assert run(onboard(1), script) == "ok"
    script.assert_done()
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ._computation import Computation
from ._effect import Effect
from ._handler import Handler, HandlerFn, Stack, WithHandler, handles
from ._interpreter import returning
from ._outcome import Done, Outcome, Suspend, validate_input
from ._runners import _value, astart, start
from ._std.control import Yield, _is_computation
from ._std.world import NewUuid, Now, RandomChoice, RandomFloat, RandomInt, Sleep
from ._std.world import Random as _Random

__all__ = (
    "AdvancingClock",
    "Collected",
    "DeterministicFresh",
    "FixedClock",
    "FixedRandom",
    "ScriptMismatch",
    "Scripted",
    "SeededRandom",
    "acollect",
    "afeed",
    "collect",
    "feed",
    "respond",
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


# -- driving Yields: collect, feed, respond ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Collected:
    """What `collect` / `feed` saw: the prompts of every `Yield` in order, and how it ended.

    `outcome` is `Done`, `Throw` or `Cancelled`, or the `Suspend` the run is still waiting at
    when `feed` ran out of inputs (it can be resumed). `unused` holds the inputs `feed` did not
    need. `value` is the result (raises the error of a `Throw`, like `run`).
    """

    outcome: Outcome
    yields: list[Any] = field(default_factory=list)
    unused: list[Any] = field(default_factory=list)

    @property
    def value(self) -> Any:
        """The computation's result; raises its error (or `UnhandledSuspension` if it is still
        suspended) as `run` does."""
        return _value(self.outcome)

    @property
    def done(self) -> bool:
        """Whether the computation returned."""
        return type(self.outcome) is Done


_STOP: Any = object()
_LIMIT = 10_000


class _Answers:
    """The policy both drivers share: which answer the next `Yield` gets, or `_STOP`."""

    def __init__(
        self,
        answer: Any,
        answer_with: Callable[[Any], Any] | None,
        inputs: list[Any] | None,
        limit: int,
    ) -> None:
        self.answer = answer
        self.answer_with = answer_with
        self.inputs = inputs
        self.limit = limit
        self.yields: list[Any] = []

    def next(self, prompt: Any) -> Any:
        self.yields.append(prompt)
        if len(self.yields) > self.limit:
            raise AssertionError(
                f"the computation yielded more than {self.limit} times (an endless Yield "
                "loop?); pass limit= to allow more"
            )
        if self.inputs is not None:
            return self.inputs.pop(0) if self.inputs else _STOP
        if self.answer_with is not None:
            return self.answer_with(prompt)
        return self.answer

    def collected(self, outcome: Outcome) -> Collected:
        return Collected(outcome, self.yields, list(self.inputs or ()))


def _drive(
    comp: Computation[Any], handlers: tuple[Handler | Stack, ...], answers: _Answers
) -> Collected:
    outcome = start(comp, *handlers)
    while type(outcome) is Suspend:
        answer = answers.next(outcome.value)
        if answer is _STOP:
            break
        outcome = outcome.resume(answer)
    return answers.collected(outcome)


async def _adrive(
    comp: Computation[Any], handlers: tuple[Handler | Stack, ...], answers: _Answers
) -> Collected:
    outcome = await astart(comp, *handlers)
    while type(outcome) is Suspend:
        answer = answers.next(outcome.value)
        if answer is _STOP:
            break
        outcome = await outcome.aresume(answer)
    return answers.collected(outcome)


def collect(
    comp: Computation[Any],
    *handlers: Handler | Stack,
    answer: Any = None,
    answer_with: Callable[[Any], Any] | None = None,
    limit: int = _LIMIT,
) -> Collected:
    """Run `comp` (sync runner) to its end, answering every `Yield` and collecting its prompts.

    Each `Yield` gets `answer` (default `None`), or `answer_with(prompt)` when given; answers
    are validated against the `Yield`'s `input` type (`InvalidInput` is raised here). More
    than `limit` Yields fail the test (an endless prompt loop). Returns a `Collected`.
    """
    return _drive(comp, handlers, _Answers(answer, answer_with, None, limit))


async def acollect(
    comp: Computation[Any],
    *handlers: Handler | Stack,
    answer: Any = None,
    answer_with: Callable[[Any], Any] | None = None,
    limit: int = _LIMIT,
) -> Collected:
    """Async twin of `collect` (async handlers are awaited; asyncio or trio)."""
    return await _adrive(comp, handlers, _Answers(answer, answer_with, None, limit))


def feed(comp: Computation[Any], inputs: Iterable[Any], *handlers: Handler | Stack) -> Collected:
    """Run `comp` (sync runner) answering its Yields with `inputs`, in order.

    When the inputs run out at a `Yield`, the run stops there: `outcome` is that `Suspend`
    (resumable) and its prompt is the last of `yields`. Inputs left when the computation ends
    are in `unused`.
    """
    return _drive(comp, handlers, _Answers(None, None, list(inputs), _LIMIT))


async def afeed(
    comp: Computation[Any], inputs: Iterable[Any], *handlers: Handler | Stack
) -> Collected:
    """Async twin of `feed`."""
    return await _adrive(comp, handlers, _Answers(None, None, list(inputs), _LIMIT))


class _Responder(Handler):
    """Answers the `Yield`s of its scope by a function of the prompt (see `respond`)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def install(self) -> _Responder:
        return self  # stateless

    @handles(Yield)
    def _yield(self, effect: Yield) -> Any:
        answer = self.fn(effect.value)
        if _is_computation(answer):
            return _validated(answer, effect.input)
        if isinstance(answer, BaseException):
            return answer  # raised at the Yield, as any handler's exception result
        return _returned(validate_input(effect.input, answer))

    def __repr__(self) -> str:
        return f"respond({getattr(self.fn, '__qualname__', self.fn)!r})"


def _validated(comp: Any, input_type: Any) -> Generator[Any, Any, Any]:
    answer = yield from comp
    return validate_input(input_type, answer)


def _returned(value: Any) -> Any:
    # A validated answer that happens to be a generator or an awaitable is an answer, not
    # something for the interpreter to run.
    if _is_computation(value) or hasattr(value, "__await__"):
        return returning(value)
    return value


def respond(comp: Computation[Any], fn: Callable[[Any], Any]) -> WithHandler[Any]:
    """`comp` with its `Yield`s answered from inside the computation by `fn(prompt)`.

    `fn` returns the answer (validated against the `Yield`'s `input` type; invalid answers
    raise `InvalidInput` at the `Yield`), an exception (raised at the `Yield`), or a
    computation whose result is the answer (run outside this scope, so its own Yields reach
    the runner). A computation, so it works under every runner and in durable runs (inside an
    `EffectLogger` it is part of the computation and runs again on replay; outside, the answers
    are recorded).
    """
    return WithHandler(comp, (_Responder(fn),))
