"""Every exception the library raises, in one place.

Tree::

    EffectsError (Exception)
    ├── MissingHandlerError (LookupError)    no handler in scope for an effect
    ├── AsyncHandlerError (RuntimeError)     a handler returned an awaitable under the sync runner
    ├── UnhandledSuspension (RuntimeError)   `run`/`arun` reached a `Yield` nobody answers
    ├── ResumeError (RuntimeError)           resuming what is not suspended (or twice)
    ├── YieldDuringCancellation (RuntimeError)
    ├── InvalidInput (ValueError)            a resume value failed `Yield(input=...)` validation
    ├── TimeoutError (builtins.TimeoutError) a `_sync` wait timed out; the run goes on
    ├── ConfigurationError (ValueError)      an option combination that cannot work
    ├── SerializationError (TypeError)       an effect's argument or result has no JSON form
    ├── LogError (ValueError)                a log that is corrupted or from another run
    ├── DivergenceError (RuntimeError)       replay met a different effect than the log holds
    ├── ConflictError (RuntimeError)         another process or task won the race for a run
    ├── InterruptedEffect (RuntimeError)     an at-most-once effect was cut off by a crash
    └── RunNotFound (LookupError)

    Cancellation (BaseException)             delivered into a computation being cancelled
"""

from __future__ import annotations

import builtins
from typing import Any, final


class EffectsError(Exception):
    """Base class of every error raised by the library."""


class MissingHandlerError(EffectsError, LookupError):
    """No handler in scope handles the effect. The message names the effect, lists the handlers
    that are in scope and says how to install one (`with_handler(comp, handler({...}))`, or the
    runner's handler arguments)."""


class AsyncHandlerError(EffectsError, RuntimeError):
    """A handler returned an awaitable, but the computation runs under a sync runner."""


class UnhandledSuspension(EffectsError, RuntimeError):
    """`run`/`arun` reached a `Yield`; use `start`/`astart` to drive suspending computations."""


class ResumeError(EffectsError, RuntimeError):
    """A suspension was resumed twice, or a runner was resumed while not suspended."""


class YieldDuringCancellation(EffectsError, RuntimeError):
    """A computation tried to suspend (`Yield`) while its cancellation was unwinding."""


class InvalidInput(EffectsError, ValueError):
    """A resume value failed the `Yield(input=Model)` validation; the run stays suspended.

    `errors` holds pydantic's error list (`ValidationError.errors()`).
    """

    def __init__(self, message: str, errors: list[Any]) -> None:
        super().__init__(message)
        self.errors = errors

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.errors))


class TimeoutError(EffectsError, builtins.TimeoutError):
    """A `_sync` wait ran out of time. Only the waiting stopped: the run goes on.

    From `AsyncComputation.start_sync` it carries the started runner as `runner`.
    """

    def __init__(self, message: str, runner: Any = None) -> None:
        super().__init__(message)
        self.runner = runner

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),))  # the runner stays behind (a live object)


class ConfigurationError(EffectsError, ValueError):
    """An option or a combination of options that cannot work."""


class SerializationError(EffectsError, TypeError):
    """An effect's argument or result cannot be stored as JSON; names the effect and field."""


class LogError(EffectsError, ValueError):
    """A log that is corrupted, malformed or belongs to another run or computation."""


class DivergenceError(EffectsError, RuntimeError):
    """Replay met an effect that differs from the log at the same position.

    `position` is the log position; `expected` and `got` describe both sides.
    """

    def __init__(self, message: str, position: int, expected: str, got: str) -> None:
        super().__init__(message)
        self.position = position
        self.expected = expected
        self.got = got

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.position, self.expected, self.got))


class ConflictError(EffectsError, RuntimeError):
    """Another task or process changed the run first (its revision moved, or it holds the lease)."""


class InterruptedEffect(EffectsError, RuntimeError):
    """An at-most-once effect started before a crash and may or may not have happened.

    The run fails with this error instead of repeating the effect; the application resolves it.
    """


class RunNotFound(EffectsError, LookupError):
    """No run with that id (or not visible to this caller)."""


@final
class Cancellation(BaseException):
    """Delivered at the suspension point of a computation that is being cancelled.

    A `BaseException`, so `except Exception` does not swallow it: `finally` blocks and bracket
    releases run (and may still perform effects, but not `Yield`), innermost first.
    """

    def __init__(self, reason: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason


# Tracebacks and reprs name the public module (`effects.MissingHandlerError`), where users import
# them from, rather than this private one; pickling finds them there too.
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, BaseException) and _cls.__module__ == __name__:
        _cls.__module__ = "effects"
del _cls
