"""The runners: `run` / `arun` (to a value) and `start` / `astart` (to an outcome)."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from ._computation import Computation
from ._exceptions import Cancellation, UnhandledSuspension
from ._handler import Handler, PairedOutput, Stack, flatten
from ._interpreter import Run
from ._outcome import Cancelled, Done, Outcome, Suspend, Throw

T = TypeVar("T")
S = TypeVar("S")
H = Handler | Stack

# Each runner has the overloads of `with_handler`: a `PairedOutput` handler (`Writer()`,
# `State(x, output=True)`) among the first three makes the result `(value, S)`.


def _value(outcome: Outcome[Any]) -> Any:
    if type(outcome) is Done:
        return outcome.value
    if type(outcome) is Throw:
        raise outcome.error
    if type(outcome) is Suspend:
        # Nobody can resume it now: close the run here rather than whenever the garbage
        # collector frees the Suspend (kept alive by this exception's traceback, it is freed
        # with a cycle, and then its generators may be closed first, noisily, and out of order).
        refused = UnhandledSuspension(
            f"the computation suspended at Yield({outcome.value!r}); drive suspending "
            "computations with start()/astart() or AsyncComputation"
        )
        cont, _ = outcome._take(None, validate=False)
        try:
            cont.discard()
        except Exception as err:  # a cleanup failed while closing it: keep that visible
            raise refused from err
        raise refused
    assert type(outcome) is Cancelled
    raise Cancellation(outcome.reason)


@overload
def start(comp: Computation[T], h: PairedOutput[S], /, *handlers: H) -> Outcome[tuple[T, S]]: ...
@overload
def start(
    comp: Computation[T], h1: H, h: PairedOutput[S], /, *handlers: H
) -> Outcome[tuple[T, S]]: ...
@overload
def start(
    comp: Computation[T], h1: H, h2: H, h: PairedOutput[S], /, *handlers: H
) -> Outcome[tuple[T, S]]: ...
@overload
def start(comp: Computation[T], *handlers: H) -> Outcome[T]: ...
def start(comp: Computation[Any], *handlers: Handler | Stack) -> Outcome[Any]:
    """Run `comp` with `handlers` (first listed innermost) until it finishes or suspends."""
    return Run(comp, flatten(handlers)).drive(None, None)


@overload
async def astart(
    comp: Computation[T], h: PairedOutput[S], /, *handlers: H
) -> Outcome[tuple[T, S]]: ...
@overload
async def astart(
    comp: Computation[T], h1: H, h: PairedOutput[S], /, *handlers: H
) -> Outcome[tuple[T, S]]: ...
@overload
async def astart(
    comp: Computation[T], h1: H, h2: H, h: PairedOutput[S], /, *handlers: H
) -> Outcome[tuple[T, S]]: ...
@overload
async def astart(comp: Computation[T], *handlers: H) -> Outcome[T]: ...
async def astart(comp: Computation[Any], *handlers: Handler | Stack) -> Outcome[Any]:
    """Async twin of `start`: awaits what async handlers return (asyncio or trio)."""
    return await Run(comp, flatten(handlers)).adrive(None, None)


@overload
def run(comp: Computation[T], h: PairedOutput[S], /, *handlers: H) -> tuple[T, S]: ...
@overload
def run(comp: Computation[T], h1: H, h: PairedOutput[S], /, *handlers: H) -> tuple[T, S]: ...
@overload
def run(comp: Computation[T], h1: H, h2: H, h: PairedOutput[S], /, *handlers: H) -> tuple[T, S]: ...
@overload
def run(comp: Computation[T], *handlers: H) -> T: ...
def run(comp: Computation[Any], *handlers: Handler | Stack) -> Any:
    """Run `comp` to its value; an uncaught exception is raised as itself."""
    return _value(start(comp, *handlers))


@overload
async def arun(comp: Computation[T], h: PairedOutput[S], /, *handlers: H) -> tuple[T, S]: ...
@overload
async def arun(comp: Computation[T], h1: H, h: PairedOutput[S], /, *handlers: H) -> tuple[T, S]: ...
@overload
async def arun(
    comp: Computation[T], h1: H, h2: H, h: PairedOutput[S], /, *handlers: H
) -> tuple[T, S]: ...
@overload
async def arun(comp: Computation[T], *handlers: H) -> T: ...
async def arun(comp: Computation[Any], *handlers: Handler | Stack) -> Any:
    """Async twin of `run` (anyio: works on asyncio and trio)."""
    return _value(await astart(comp, *handlers))
