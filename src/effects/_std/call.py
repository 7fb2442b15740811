"""`Call(fn, *args, **kwargs)`: a side effect in a plain or async function, with retry and
timeout. Its default handler is installed by every runner."""

from __future__ import annotations

import builtins
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, overload

import anyio
import anyio.lowlevel
import anyio.to_thread
from typing_extensions import TypeVar

from .._effect import Effect
from .._exceptions import AsyncHandlerError, ConfigurationError
from .._exceptions import TimeoutError as EffectsTimeoutError
from .._handler import Handler, handles
from .._interpreter import close_awaitable, returning, running_async
from .._threads import run_in_thread

# The function's result type: a bare `Call` is `Call[Any]`.
T = TypeVar("T", default=Any)
P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry policy: up to `attempts` calls in all, waiting `backoff * factor**n` seconds
    (capped at `max_delay`) between them, for exceptions that are instances of `on`."""

    attempts: int = 3
    backoff: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError("Retry.attempts must be at least 1")

    def delays(self) -> Iterator[float]:
        """The waits between attempts (one fewer than `attempts`)."""
        for n in range(self.attempts - 1):
            yield min(self.backoff * self.factor**n, self.max_delay)


class Call(Effect[T]):
    """Perform `fn(*args, **kwargs)` as an effect. `fn` may be a plain or an async function.

    Under the async runners a plain function runs in a worker thread (the event loop goes on
    meanwhile; a cancellation waits for the function to return), an async one on the loop.
    Options (keyword-only, not passed to `fn`): `retry=Retry(...)`, `timeout=seconds`.
    Durable runs record the result, so a completed call is never repeated on replay.

    Typed from `fn`: `yield from Call(fetch, url)` is what `fetch` returns (awaited, for an
    async function), and the arguments are checked against `fn`'s parameters. With `retry` or
    `timeout` (which Python's typing cannot add to `fn`'s parameters) only the result is typed.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retry: Retry | None
    timeout: float | None

    # Overloads for type checkers; the order matters (an async function also matches the plain
    # form, with the coroutine as its result).
    @overload
    def __init__(
        self: Call[T], fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> None: ...
    @overload
    def __init__(
        self: Call[T], fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> None: ...
    @overload
    def __init__(  # type: ignore[overload-cannot-match]
        self: Call[T],
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: Retry,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(  # type: ignore[overload-cannot-match]
        self: Call[T],
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        timeout: float,
        retry: Retry | None = None,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(  # type: ignore[overload-cannot-match]
        self: Call[T],
        fn: Callable[..., T],
        /,
        *args: Any,
        retry: Retry,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(  # type: ignore[overload-cannot-match]
        self: Call[T],
        fn: Callable[..., T],
        /,
        *args: Any,
        timeout: float,
        retry: Retry | None = None,
        **kwargs: Any,
    ) -> None: ...
    # (mypy: P.kwargs might hold a `retry` or `timeout` for `fn`, which the options take.)
    def __init__(  # type: ignore[misc]
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._retry = retry
        self._timeout = timeout

    def __hash__(self) -> int:
        return hash((type(self), self._fn, self._args))

    def __repr__(self) -> str:
        name = getattr(self._fn, "__qualname__", repr(self._fn))
        parts = [repr(a) for a in self._args] + [f"{k}={v!r}" for k, v in self._kwargs.items()]
        return f"Call({name}{', ' if parts else ''}{', '.join(parts)})"


class CallHandler(Handler):
    """The default handler of `Call`: calls the function, with its retry and timeout."""

    external = True

    def install(self) -> CallHandler:
        return self

    @handles(Call)
    def _call(self, effect: Call[Any]) -> Any:
        if running_async():
            return self._acall(effect)
        if effect.timeout is not None:
            raise ConfigurationError(
                f"{effect!r}: a timeout needs the async runner (arun/astart/AsyncComputation); "
                "a plain function cannot be interrupted from the sync runner"
            )
        delays = effect.retry.delays() if effect.retry else iter(())
        retry_on = effect.retry.on if effect.retry else ()
        while True:
            try:
                result = effect.fn(*effect.args, **effect.kwargs)
            except retry_on:
                delay = next(delays, None)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            if inspect.isawaitable(result):
                close_awaitable(result)
                raise AsyncHandlerError(
                    f"{effect!r} returned an awaitable but the computation runs under the sync "
                    "runner; use arun/astart"
                )
            return returning(result)

    async def _acall(self, effect: Call[Any]) -> Any:
        delays = effect.retry.delays() if effect.retry else iter(())
        retry_on = effect.retry.on if effect.retry else ()
        while True:
            try:
                return await _invoke(effect)
            except retry_on:
                delay = next(delays, None)
                if delay is None:
                    raise
                await anyio.sleep(delay)


async def _invoke(effect: Call[Any]) -> Any:
    if effect.timeout is None:
        return await _perform(effect, abandon=False)
    try:
        with anyio.fail_after(effect.timeout):
            return await _perform(effect, abandon=True)
    except builtins.TimeoutError as err:
        # The library's subclass: caught by `except TimeoutError` whichever name is imported.
        raise EffectsTimeoutError(f"{effect!r} timed out after {effect.timeout} s") from err


async def _perform(effect: Call[Any], *, abandon: bool) -> Any:
    fn, args, kwargs = effect.fn, effect.args, effect.kwargs
    if _is_async(fn):
        return await fn(*args, **kwargs)
    # A plain function runs in a worker thread, so that while it blocks the event loop goes on:
    # other tasks, the web server, and a durable runner's lease heartbeat (a blocked loop would
    # let another process take the run while the call still runs). A thread cannot be
    # interrupted: a cancellation waits until the function returns, so the step never ends
    # while its call still runs, and is then delivered here, at the Call, like the cancellation
    # of an async function midway (the result is dropped). Only a `timeout` abandons the
    # thread (it finishes unobserved).
    result = await run_in_thread(functools.partial(fn, *args, **kwargs), abandon=abandon)
    await anyio.lowlevel.checkpoint_if_cancelled()
    # A plain function may return an awaitable (a lambda around a coroutine function).
    return await result if inspect.isawaitable(result) else result


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an `async def __call__`
    )
