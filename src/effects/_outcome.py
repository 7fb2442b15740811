"""The four outcomes of a run: `Done`, `Suspend`, `Throw` (also an effect) and `Cancelled`."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol

import pydantic
from typing_extensions import TypeVar

from ._effect import Effect
from ._exceptions import Cancellation, InvalidInput, ResumeError

if TYPE_CHECKING:
    from typing import TypeAlias

# The result type of a run. Defaults to `Any`, so a bare `Done` or `Outcome` is `Done[Any]`.
R = TypeVar("R", default=Any)


class Done(Generic[R]):
    """The computation returned `value` (typed: `start(comp)` of a `Computation[R]` may be a
    `Done[R]`)."""

    __slots__ = ("value",)
    __match_args__ = ("value",)

    def __init__(self, value: R) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Done and other.value == self.value

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Done({self.value!r})"


class Cancelled:
    """The computation was cancelled with `reason`; its cleanup has run."""

    __slots__ = ("reason",)
    __match_args__ = ("reason",)

    def __init__(self, reason: Any = None) -> None:
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return type(other) is Cancelled and other.reason == self.reason

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Cancelled({self.reason!r})"


class Throw(Effect[NoReturn]):
    """As an effect, `yield Throw(err)` raises `err` at that point. As an outcome, the
    computation ended with the exception `error` (the original object, traceback kept)."""

    error: BaseException


class _Continuation(Protocol):
    def drive(self, value: Any, exc: BaseException | None) -> Outcome[Any]: ...

    async def adrive(self, value: Any, exc: BaseException | None) -> Outcome[Any]: ...

    def discard(self) -> None: ...


@functools.cache
def _adapter(input_type: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(input_type)


def validate_input(input_type: Any, value: Any) -> Any:
    """Validate a resume value against a `Yield`'s `input` type; raise `InvalidInput`."""
    if input_type is None:
        return value
    try:
        return _adapter(input_type).validate_python(value)
    except pydantic.ValidationError as err:
        raise InvalidInput(
            f"invalid input for {getattr(input_type, '__name__', input_type)}: {err}",
            err.errors(include_url=False),
        ) from None


class Suspend(Generic[R]):
    """The computation is waiting at a `Yield(value, input=...)`; `R` is the type of the run's
    eventual result, so `resume` returns an `Outcome[R]`.

    `data` holds decorations added by the handlers in scope (for example the effect log under
    the key `EffectLogger`). `resume(answer)` continues it and returns the next outcome; it is
    one-shot: a second resume raises `ResumeError`. An answer that fails the `input` validation
    raises `InvalidInput` and leaves the suspension usable.
    """

    __slots__ = ("_continuation", "data", "input", "value")

    def __init__(
        self,
        value: Any,
        data: dict[Any, Any] | None = None,
        input: Any = None,
        continuation: _Continuation | None = None,
    ) -> None:
        self.value = value
        self.data = data if data is not None else {}
        self.input = input
        self._continuation = continuation

    def _take(self, value: Any, *, validate: bool = True) -> tuple[_Continuation, Any]:
        if self._continuation is None:
            raise ResumeError(
                "this suspension cannot be resumed: it was already resumed or cancelled, "
                "or it is a report (resume through the runner that sent it)"
            )
        if validate:
            # Validate before consuming the one-shot continuation: bad input loses nothing.
            value = validate_input(self.input, value)
        cont, self._continuation = self._continuation, None
        return cont, value

    @property
    def resumable(self) -> bool:
        """Whether `resume`/`cancel` may still be called on this suspension."""
        return self._continuation is not None

    def resume(self, value: Any = None) -> Outcome[R]:
        """Continue the computation with `value` (sync runner); returns the next outcome."""
        cont, value = self._take(value)
        return cont.drive(value, None)

    async def aresume(self, value: Any = None) -> Outcome[R]:
        """Continue the computation with `value` (async runner); returns the next outcome."""
        cont, value = self._take(value)
        return await cont.adrive(value, None)

    def cancel(self, reason: Any = None) -> Outcome[R]:
        """Cancel at this suspension: cleanup runs innermost first, then `Cancelled(reason)`."""
        cont, _ = self._take(None, validate=False)
        return cont.drive(None, Cancellation(reason))

    async def acancel(self, reason: Any = None) -> Outcome[R]:
        """Async twin of `cancel`."""
        cont, _ = self._take(None, validate=False)
        return await cont.adrive(None, Cancellation(reason))

    def report(self) -> Suspend[R]:
        """A copy carrying `value`, `data` and `input` but no way to resume."""
        return Suspend(self.value, self.data, self.input)

    def __del__(self) -> None:
        # An abandoned suspension: close its generators deliberately, innermost first, rather
        # than leaving it to the garbage collector (whose GeneratorExit would make a `finally`
        # that performs effects fail noisily).
        cont = self._continuation
        if cont is not None:
            self._continuation = None
            cont.discard()

    def __repr__(self) -> str:
        return f"Suspend({self.value!r}, data={self.data!r})"


Outcome: TypeAlias = Done[R] | Suspend[R] | Throw | Cancelled
"""What a run is at: `Outcome[R]` for a computation returning `R` (`match` or `isinstance`
narrows it; only a `Suspend` can be resumed)."""
