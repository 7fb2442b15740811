"""Control effects: `Yield` (suspend for input), `Throw`, `catch`, `try_catch`, `bracket`."""

from __future__ import annotations

from collections.abc import Callable, Generator
from types import GeneratorType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from typing_extensions import TypeVar as TypeVar_

from .._computation import Comp, Computation
from .._effect import Effect
from .._handler import Handler, WithHandler, handles
from .._interpreter import SUSPEND
from .._outcome import Throw

T = TypeVar("T")
M = TypeVar("M")
E = TypeVar("E", bound=BaseException)
# The answer's type: a bare `Yield` is `Yield[Any]`.
A = TypeVar_("A", default=Any)


class Yield(Effect[A]):
    """Suspend the run and hand `value` (the prompt) to whoever drives it; the answer comes back
    as the result. With `input=Model` the answer is validated by pydantic before the
    computation sees it (a `dict` answer becomes a `Model`), and type checkers see
    `answer = yield from Yield(prompt, input=Model)` as a `Model`."""

    value: Any = None
    input: Any = None

    if TYPE_CHECKING:

        @overload
        def __init__(self: Yield[M], value: Any = None, *, input: type[M]) -> None: ...
        @overload
        def __init__(self: Yield[Any], value: Any = None, input: Any = None) -> None: ...
        def __init__(self, value: Any = None, input: Any = None) -> None: ...


class YieldHandler(Handler):
    """The runner default for `Yield`: stop the run and report `Suspend`."""

    @handles(Yield)
    def _yield(self, effect: Yield[Any]) -> Any:
        return SUSPEND


class ThrowHandler(Handler):
    """The runner default for `Throw`: raise the error at the `yield`."""

    @handles(Throw)
    def _throw(self, effect: Throw) -> BaseException:
        return effect.error


def _is_computation(x: Any) -> bool:
    return type(x) is GeneratorType or isinstance(x, Comp | WithHandler | Effect)


def catch(
    comp: Computation[T], recover: Callable[[Exception], Computation[T] | T]
) -> Generator[Any, Any, T]:
    """Run `comp`; if it raises an `Exception`, return what `recover(error)` returns (a value or
    a computation run in its place). Cancellation is not an `Exception` and passes through."""
    try:
        return (yield from comp)
    except Exception as err:
        recovered = recover(err)
        if _is_computation(recovered):
            return (yield from recovered)  # type: ignore[misc,no-any-return]
        return recovered  # type: ignore[return-value]


class Ok(Generic[T]):
    """`try_catch` result of a computation that returned `value`."""

    __slots__ = ("value",)
    __match_args__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Ok and other.value == self.value

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Ok({self.value!r})"


class Err(Generic[E]):
    """`try_catch` result of a computation that raised `error`."""

    __slots__ = ("error",)
    __match_args__ = ("error",)

    def __init__(self, error: E) -> None:
        self.error = error

    def __eq__(self, other: object) -> bool:
        return type(other) is Err and other.error is self.error

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Err({self.error!r})"


def try_catch(comp: Computation[T]) -> Generator[Any, Any, Ok[T] | Err[Exception]]:
    """Run `comp` and return `Ok(value)` or `Err(exception)` instead of raising."""
    try:
        return Ok((yield from comp))
    except Exception as err:
        return Err(err)


def bracket(
    acquire: Computation[T],
    use: Callable[[T], Computation[Any]],
    release: Callable[[T], Computation[Any] | None],
) -> Generator[Any, Any, Any]:
    """Acquire a resource, use it, and release it exactly once on every exit path (return,
    exception, cancellation); nested brackets release innermost first. `release` may be a
    plain function or return a computation (it may perform effects)."""
    resource = yield from acquire
    try:
        return (yield from use(resource))
    finally:
        done = release(resource)
        if done is not None and _is_computation(done):
            yield from done
