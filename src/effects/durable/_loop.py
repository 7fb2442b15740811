"""`durable_loop`: long or endless loops whose log stays bounded.

The loop's state is explicit and serializable. Under an `EffectLogger`, each completed
iteration is pruned from the log and replaced by one `LoopState` entry holding the iteration
number and the state it produced, so the log holds the loop's latest state plus the entries of
the iteration in progress, however many iterations ran. A cold resume reads that entry and
restarts from the latest iteration's state instead of replaying the loop from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from .._computation import Computation
from .._effect import Effect
from .._exceptions import MissingHandlerError
from ._identity import type_name
from ._serialize import Codec, register_arg_fields

S = TypeVar("S")
T = TypeVar("T")


class LoopDone(Generic[T]):
    """Returned by a `durable_loop` step to end the loop with `value`."""

    __slots__ = ("value",)
    __match_args__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is LoopDone and other.value == self.value

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LoopDone({self.value!r})"


class LoopHandle:
    """The logger's bookkeeping for one running loop (opaque to the loop)."""

    __slots__ = ("codec", "index", "iteration", "key", "seq")

    def __init__(self, key: str, index: int, seq: int, iteration: int, state_codec: Codec) -> None:
        self.key = key
        self.index = index  # position of the loop's LoopState entry in the logger's entries
        self.seq = seq
        self.iteration = iteration
        self.codec = state_codec


class LoopState(Effect[Any]):
    """Enter loop `key`: answered with `(handle, iteration, state)`: `(handle, 0, initial)` on a
    new run, the latest recorded iteration and state on replay."""

    key: str
    initial: Any
    state_type: Any


class NextIteration(Effect[None]):
    """The iteration of the loop behind `handle` completed with `state`: prune it from the log."""

    handle: Any
    state: Any


LoopState.__module__ = NextIteration.__module__ = "effects.durable"
register_arg_fields(LoopState, ("key",))


def _default_key(step: Callable[..., Any]) -> str:
    fn = getattr(step, "__func__", step)
    if hasattr(fn, "__qualname__") and hasattr(fn, "__module__"):
        return type_name(fn)
    return type_name(type(fn))


def durable_loop(
    step: Callable[[S], Computation[S | LoopDone[T]]],
    state: S,
    *,
    state_type: Any = None,
    key: str | None = None,
) -> Generator[Any, Any, T]:
    """Run `state = yield from step(state)` until a step returns `LoopDone(value)`; return
    `value`.

    `step(state)` is a computation (it may perform any effect, suspend at `Yield`, nest other
    loops) returning the next state or `LoopDone`. Under an `EffectLogger` the log keeps only the
    latest state and the current iteration's entries. The state is stored as JSON through
    `state_type` (default: `type(state)`; give it for unions, `None` or containers of models).
    `key` names the loop in the log (default: the step function's qualified name). Without a
    logger this is a plain loop.
    """
    st = type(state) if state_type is None else state_type
    try:
        handle, _, state = yield LoopState(key or _default_key(step), state, st)
    except MissingHandlerError:
        handle = None
    while True:
        out = yield from step(state)
        if type(out) is LoopDone:
            return out.value
        state = out  # type: ignore[assignment]
        if handle is not None:
            yield NextIteration(handle, state)
