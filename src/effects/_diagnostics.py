"""Mistakes explained: what a computation yielded that no handler takes, and the debug mode.

Everything here runs only where something already went wrong (a failed handler lookup) or in the
debug mode, which is chosen once, at import, from the environment: with it off, effects and
computations are built and dispatched exactly as without this module.

Debug mode (`EFFECTS_DEBUG=1` in the environment before `effects` is imported) warns, with a
`RuntimeWarning` pointing at the line, about an effect or a `@computation` call that is created
and dropped on the spot, never yielded: `State.put(1)` or `send_mail(user)` written as a statement
where `yield State.put(1)` or `yield from send_mail(user)` was meant. It records where each effect
and `Comp` is created (a few hundred nanoseconds each), so it is for development and tests.
"""

from __future__ import annotations

import dis
import os
import sys
import warnings
from collections.abc import Callable, Generator
from types import CoroutineType, FrameType
from typing import Any

from ._exceptions import MissingHandlerError

DEBUG: bool = os.environ.get("EFFECTS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
"""Whether the debug mode is on (`EFFECTS_DEBUG` set to anything but 0/false/no at import)."""

_POP_TOP = dis.opmap["POP_TOP"]


# -- a value no handler takes -----------------------------------------------------------------


def not_handled(value: Any, table: dict[type, Any]) -> BaseException:
    """The error thrown at a `yield` whose value no handler in scope takes.

    An `Effect` without a handler gets `MissingHandlerError`, saying how to install one. A value
    that is no effect at all (a list of effects, a coroutine, `None` from a bare `yield`) gets a
    `TypeError` saying what to write instead.
    """
    from ._effect import Effect

    if isinstance(value, Effect):
        return MissingHandlerError(_missing(value, table))
    vtype = type(value)
    if vtype in (list, tuple, set, frozenset) and any(isinstance(v, Effect) for v in value):
        return TypeError(
            f"the computation yielded a {vtype.__name__} of effects ({_short(value)}): a yield "
            "performs one effect. Yield each in turn (`for effect in effects: yield effect`), "
            "or run them at once with `yield from Parallel.all(*effects)`"
        )
    if value is None:
        return TypeError(
            "the computation yielded None (a bare `yield`?): yield an effect, e.g. "
            "`x = yield from GetUser(1)`"
        )
    if vtype is CoroutineType:
        value.close()  # never awaited: close it here rather than warn about it later
        return TypeError(
            f"the computation yielded a coroutine ({value.__qualname__}): computations cannot "
            "await. Perform it as an effect: `result = yield from Call(async_function, *args)`"
        )
    return TypeError(
        f"the computation yielded {_short(value)} ({vtype.__qualname__}), which is not an "
        "effect and has no handler: yield an Effect instance, or `yield from` a computation"
    )


def _missing(effect: Any, table: dict[type, Any]) -> str:
    owners: list[str] = []
    for _, _, owner in table.values():
        name = repr(owner)
        if name not in owners:
            owners.append(name)
    name = type(effect).__qualname__
    return (
        f"no handler for {effect!r} (effect type {name}); "
        f"handlers in scope: {', '.join(reversed(owners)) or 'none'}. Install one around the "
        f"computation: `with_handler(comp, handler({{{name}: lambda effect: ...}}))`, or pass "
        f"it to the runner: `run(comp, my_handler)` (a Handler with `@handles({name})` methods)"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- @computation on something else than a generator function -----------------------------------


def not_a_generator(function: Callable[..., Any], result: Any) -> Generator[Any, Any, Any]:
    """What a `Comp` runs when its function returned something else than a generator: another
    computation (a wrapper returning one) runs; anything else is a clear `TypeError`."""
    from ._computation import Comp
    from ._effect import Effect
    from ._handler import WithHandler

    if isinstance(result, Comp | Effect | WithHandler):
        return iter(result)
    if isinstance(result, Generator):
        return result
    if type(result) is CoroutineType:
        result.close()
    name = getattr(function, "__qualname__", repr(function))
    raise TypeError(
        f"@computation function {name} returned {_short(result)} "
        f"({type(result).__qualname__}), not a generator: a computation is a generator function "
        "(it yields effects, e.g. `user = yield from GetUser(1)`; add a `yield` or make it a "
        "plain function)"
    )


def check_computation_function(fn: Callable[..., Any]) -> None:
    """Refuse, at decoration, what can never be a computation: `async def` functions."""
    import inspect

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@computation cannot decorate the async function {fn.__qualname__}: computations "
            "are generator functions (`def` with `yield`); perform async work as an effect, "
            "`result = yield from Call(async_function, *args)`"
        )


# -- the debug mode: effects and computations created and dropped, never run ---------------------

# id(object) -> (the creating frame's id, its code). Entries leave when the object dies.
_created: dict[int, tuple[int, Any]] = {}


def note_created(obj: object, depth: int) -> None:
    """Debug mode: remember where `obj` is being created (`depth` frames up)."""
    frame = sys._getframe(depth + 1)
    _created[id(obj)] = (id(frame), frame.f_code)


def check_dropped(obj: object, what: str, fix: str) -> None:
    """Debug mode, from `__del__`: warn if `obj` dies in the frame that created it, thrown away
    right where it was made (the value of an expression statement).

    A yielded effect is dropped by the interpreter, not by the computation's frame; one stored
    in a variable dies on another instruction than the statement's `POP_TOP`.
    """
    record = _created.pop(id(obj), None)
    if record is None:
        return
    try:
        frame: FrameType = sys._getframe(2)
    except ValueError:  # freed with no Python frame below (at interpreter exit)
        return
    frame_id, code = record
    if id(frame) != frame_id or frame.f_code is not code:
        return
    if code.co_code[frame.f_lasti] != _POP_TOP:
        return
    warnings.warn_explicit(
        f"{what} was created and dropped without being run: write `{fix}`, or remove it "
        "(EFFECTS_DEBUG is on)",
        RuntimeWarning,
        code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__", ""),
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
    )
