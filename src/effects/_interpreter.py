"""The interpreter: one loop that runs a computation until it finishes, suspends or must await.

Written once, without I/O. `drive` (sync) and `adrive` (anyio) are the two thin drivers: they
differ only in what they do with an awaitable a handler returned.

The run is a stack of frames instead of recursion: a frame is a generator, the handler table
its effects are looked up in, and the handler scope it opened (if any). Entering
`with_handler` pushes a frame whose table is a copy of the current one with the new handlers
added, so lookup is one dict access whatever the depth.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Generator
from types import GeneratorType
from typing import Any

import anyio

from ._computation import Comp
from ._exceptions import (
    AsyncHandlerError,
    Cancellation,
    MissingHandlerError,
    YieldDuringCancellation,
)
from ._handler import Entry, Handler, Table, WithHandler
from ._outcome import Cancelled, Done, Outcome, Suspend, Throw

# True while the async driver is running a step: handlers whose work can be done either way
# (Clock.sleep, Call) return an awaitable under the async driver and block under the sync one.
_async_driver: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "effects_async_driver", default=False
)


def running_async() -> bool:
    """Whether the current computation is driven by the async runner."""
    return _async_driver.get()


class _SuspendSignal:
    """Returned by the default `Yield` handler: the run stops here and reports `Suspend`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SUSPEND"


SUSPEND: Any = _SuspendSignal()


class _Await:
    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable


class _Scope:
    """The handlers one `with_handler` installed, innermost first."""

    __slots__ = ("cleanups", "decorators", "handlers", "outputs")

    def __init__(self, handlers: list[Handler]) -> None:
        self.handlers = handlers
        # Only handlers that override a hook are called on exit / suspension.
        self.outputs = [h for h in handlers if type(h).output is not Handler.output]
        self.cleanups = [h for h in handlers if type(h).cleanup is not Handler.cleanup]
        self.decorators = [h for h in handlers if type(h).decorate is not Handler.decorate]


Frame = tuple[Generator[Any, Any, Any], Table, "_Scope | None"]


def _start_generator(comp: Any) -> Generator[Any, Any, Any]:
    if type(comp) is GeneratorType:
        return comp
    if isinstance(comp, Comp):
        return iter(comp)
    from ._effect import Effect

    if isinstance(comp, Effect):
        return iter(comp)
    if isinstance(comp, GeneratorType):
        return comp
    raise TypeError(
        f"not a computation: {comp!r} (expected a generator, a Comp, an Effect or with_handler)"
    )


def _install(table: Table, handlers: tuple[Handler, ...]) -> tuple[Table, _Scope]:
    installed: list[Handler] = []
    for h in reversed(handlers):  # outermost first, so inner ones shadow
        inst = h.install()
        home = table
        table = table.copy()
        inst.intercept(table)
        own = inst.effect_handlers()
        if own:
            for cached in [t for t in table if t not in own and any(issubclass(t, o) for o in own)]:
                # A subclass entry cached from an outer handler must not hide this one.
                del table[cached]
            entry_home = None if inst.pure else home
            for t, fn in own.items():
                table[t] = (fn, entry_home, inst)
        installed.append(inst)
    installed.reverse()
    return table, _Scope(installed)


class Run:
    """The state of one run: its frame stack. Driven by `drive` / `adrive`."""

    __slots__ = ("__weakref__", "cancel_reason", "cancelling", "frames")

    def __init__(self, comp: Any, handlers: tuple[Handler, ...]) -> None:
        gen = _start_generator(comp)
        table, scope = _install(root_table(), handlers)
        self.frames: list[Frame] = [(gen, table, scope)]
        self.cancelling = False
        self.cancel_reason: Any = None

    # -- the loop -------------------------------------------------------------------------

    def step(self, value: Any, exc: BaseException | None) -> Outcome | _Await:
        """Run until the computation finishes, suspends or a handler returns an awaitable."""
        frames = self.frames
        gen, table, scope = frames[-1]
        while True:
            try:
                if exc is None:
                    eff = gen.send(value)
                else:
                    err, exc = exc, None
                    eff = gen.throw(err)
            except StopIteration as stop:
                value = stop.value
                if scope is not None:
                    value, exc = _exit_scope(scope, value, None)
                frames.pop()
                if not frames:
                    return self._finish(value, exc)
                gen, table, scope = frames[-1]
                continue
            except BaseException as err:
                exc = err
                if scope is not None:
                    value, exc = _exit_scope(scope, None, exc)
                frames.pop()
                if not frames:
                    return self._finish(None, exc)
                gen, table, scope = frames[-1]
                continue

            try:
                fn, home, _ = table[type(eff)]
            except KeyError:
                entry = self._resolve(eff, table)
                if entry is None:  # a scope or a sub-computation was pushed
                    gen, table, scope = frames[-1]
                    value = None
                    continue
                if isinstance(entry, BaseException):
                    value, exc = None, entry
                    continue
                fn, home, _ = entry

            if home is None:  # pure handler: the result is a plain value
                try:
                    value = fn(eff)
                except BaseException as err:
                    value, exc = None, err
                continue

            try:
                result = fn(eff)
            except BaseException as err:
                value, exc = None, err
                continue
            # Classify what a general handler returned.
            rtype = type(result)
            if rtype is GeneratorType or rtype is Comp:
                frames.append((_start_generator(result), home, None))
                gen, table, scope = frames[-1]
                value = None
            elif result is SUSPEND:
                if self.cancelling:
                    value, exc = (
                        None,
                        YieldDuringCancellation(
                            f"{eff!r} while the run is being cancelled: cleanup may perform "
                            "effects but cannot wait for input"
                        ),
                    )
                    continue
                return self._suspend(eff)
            elif rtype is WithHandler:
                frames.append(self._enter(result, home))
                gen, table, scope = frames[-1]
                value = None
            elif isinstance(result, BaseException):
                value, exc = None, result
            elif inspect.isawaitable(result):
                return _Await(result)
            else:
                value = result

    def _resolve(self, eff: Any, table: Table) -> Entry | BaseException | None:
        """The slow path of lookup: scopes, sub-computations, subclasses, missing handlers."""
        etype = type(eff)
        if etype is WithHandler:
            self.frames.append(self._enter(eff, table))
            return None
        if etype is GeneratorType or isinstance(eff, Comp):
            self.frames.append((_start_generator(eff), table, None))
            return None
        for base in etype.__mro__[1:]:
            entry = table.get(base)
            if entry is not None:
                table[etype] = entry  # cache: next lookup of this subclass is one dict access
                return entry
        return MissingHandlerError(_missing_message(eff, table))

    def _enter(self, w: WithHandler[Any], table: Table) -> Frame:
        gen = _start_generator(w.comp)
        new_table, scope = _install(table, w.handlers)
        return (gen, new_table, scope)

    def _suspend(self, eff: Any) -> Suspend:
        data: dict[Any, Any] = {}
        for _, _, scope in self.frames:  # outermost first, so inner decorations win
            if scope is not None:
                for h in reversed(scope.decorators):
                    h.decorate(data)
        return Suspend(eff.value, data, eff.input, self)

    def _finish(self, value: Any, exc: BaseException | None) -> Outcome:
        if exc is None:
            return Cancelled(self.cancel_reason) if self.cancelling else Done(value)
        if isinstance(exc, Cancellation):
            return Cancelled(exc.reason)
        return Throw(exc)

    # -- drivers --------------------------------------------------------------------------

    def drive(self, value: Any, exc: BaseException | None) -> Outcome:
        """Sync driver: an awaitable from a handler becomes an `AsyncHandlerError`."""
        if isinstance(exc, Cancellation):
            self.cancelling, self.cancel_reason = True, exc.reason
        token = _async_driver.set(False)
        try:
            while True:
                out = self.step(value, exc)
                if type(out) is not _Await:
                    return out  # type: ignore[return-value]
                _close_awaitable(out.awaitable)
                value, exc = (
                    None,
                    AsyncHandlerError(
                        f"a handler returned an awaitable ({out.awaitable!r}) but the computation "
                        "runs under the sync runner; use arun/astart"
                    ),
                )
        finally:
            _async_driver.reset(token)

    async def adrive(self, value: Any, exc: BaseException | None) -> Outcome:
        """Async driver: awaits what handlers return; on cancellation by anyio, unwinds the
        computation (shielded, so cleanup may still await) and re-raises."""
        if isinstance(exc, Cancellation):
            self.cancelling, self.cancel_reason = True, exc.reason
        token = _async_driver.set(True)
        try:
            while True:
                out = self.step(value, exc)
                if type(out) is not _Await:
                    return out  # type: ignore[return-value]
                try:
                    value, exc = await out.awaitable, None
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True):
                        await self.adrive(None, Cancellation("cancelled by the task group"))
                    raise
                except BaseException as err:
                    value, exc = None, err
        finally:
            _async_driver.reset(token)

    def discard(self) -> None:
        """Close an abandoned run's generators, innermost first, without running effects."""
        frames, self.frames = self.frames, []
        for gen, _, _ in reversed(frames):
            try:
                gen.close()
            except RuntimeError:
                # "generator ignored GeneratorExit": a finally block tried to perform an
                # effect; there is nobody left to answer it.
                pass


def _close_awaitable(aw: Any) -> None:
    close = getattr(aw, "close", None)
    if close is not None:
        close()


def _exit_scope(
    scope: _Scope, value: Any, exc: BaseException | None
) -> tuple[Any, BaseException | None]:
    if exc is None:
        for h in scope.outputs:
            try:
                value = h.output(value)
            except BaseException as err:
                value, exc = None, err
                break
    for h in scope.cleanups:
        try:
            h.cleanup()
        except BaseException as err:
            if exc is not None and err.__context__ is None:
                err.__context__ = exc
            value, exc = None, err
    return value, exc


def _missing_message(eff: Any, table: Table) -> str:
    owners: list[str] = []
    for _, _, owner in table.values():
        name = repr(owner)
        if name not in owners:
            owners.append(name)
    return (
        f"no handler for {eff!r} (effect type {type(eff).__qualname__}); "
        f"handlers in scope: {', '.join(reversed(owners)) or 'none'}"
    )


_root: Table | None = None


def root_table() -> Table:
    """The table every run starts from: the runner defaults for Yield, Throw and Call."""
    global _root
    if _root is None:
        from ._std.call import CallHandler
        from ._std.control import ThrowHandler, YieldHandler

        table: Table = {}
        _root, _ = _install(table, (YieldHandler(), ThrowHandler(), CallHandler()))
    return _root
