"""The interpreter: one loop that runs a computation until it finishes, suspends or must await.

Written once, without I/O. `drive` (sync) and `adrive` (anyio) are the two thin drivers: they
differ only in what they do with an awaitable a handler returned.

The run is a stack of frames instead of recursion: a frame is a generator, the handler table
its effects are looked up in, and the handler scope it opened (if any). Entering
`with_handler` pushes a frame whose table is a copy of the current one with the new handlers
added, so lookup is one dict access whatever the depth.

Fairness: a step that performs effects without ever awaiting would hold the event loop for as
long as it runs. The loop counts its iterations and reads the clock every `_TICKS` of them; under
the async driver, once a step has run `SLICE` seconds since it last gave control back, the loop
returns a `_Pause` and the driver awaits a checkpoint (which is also where a cancellation of the
step's task is noticed) before going on. The sync driver never pauses.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Awaitable, Generator
from types import GeneratorType
from typing import Any

import anyio
import anyio.lowlevel

from ._computation import Comp
from ._diagnostics import not_handled
from ._effect import Effect
from ._exceptions import (
    AsyncHandlerError,
    Cancellation,
    YieldDuringCancellation,
)
from ._handler import Handler, HandlerFn, Table, WithHandler
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


class _Pause:
    """Returned by `Run.step` when the step's time slice is used up: the driver gives control
    to the event loop, then continues by sending `value` (the pending result)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# The loop reads the clock every len(_TICKS) iterations (an effect is one iteration): at ~0.2 us per
# effect that is a clock read every ~25 us, against a slice of SLICE seconds. The counter is
# what the hot loop pays for fairness (measured with bench/dispatch.py: within noise).
_TICKS = range(128)
SLICE = 0.005
"""Seconds of work after which the async driver gives control back to the event loop."""
_clock = time.perf_counter


class _Scope:
    """The handlers one `with_handler` installed, innermost first."""

    __slots__ = ("cleanups", "decorators", "handlers", "outputs")

    def __init__(self, handlers: list[Handler]) -> None:
        self.handlers = handlers
        # Only handlers that override a hook are called on exit / suspension (most override
        # none: one dict lookup each, no list built).
        outputs: tuple[Handler, ...] = ()
        cleanups: tuple[Handler, ...] = ()
        decorators: tuple[Handler, ...] = ()
        for h in handlers:
            t = type(h)
            try:
                hooks = _hooks[t]
            except KeyError:
                hooks = (
                    t.output is not Handler.output,
                    t.cleanup is not Handler.cleanup,
                    t.decorate is not Handler.decorate,
                )
                _hooks[t] = hooks = _NO_HOOKS if hooks == _NO_HOOKS else hooks
            if hooks is not _NO_HOOKS:
                if hooks[0]:
                    outputs += (h,)
                if hooks[1]:
                    cleanups += (h,)
                if hooks[2]:
                    decorators += (h,)
        self.outputs = outputs
        self.cleanups = cleanups
        self.decorators = decorators


_NO_HOOKS = (False, False, False)
_hooks: dict[type, tuple[bool, bool, bool]] = {}


class Tables:
    """A scope's two views of its handlers.

    `meta` maps effect type -> `(fn, home, owner)` (what `Handler.intercept` sees and edits);
    `fast` maps effect type -> one callable, the only thing the hot loop touches: a pure
    handler's own function, or for a general handler a wrapper that classifies its result.
    """

    __slots__ = ("derived", "direct", "fast", "meta")

    def __init__(
        self,
        fast: dict[type, Any],
        meta: Table,
        derived: frozenset[type],
        direct: dict[type, Any] | None = None,
    ) -> None:
        self.fast = fast
        self.meta = meta
        self.derived = derived  # subclass entries cached by lookup, dropped when shadowed
        # The DIRECT entries an interceptor made, as they are in `meta` (their functions
        # classify their own results): an interceptor installed further in is shown general
        # views of them (`_general_views`), made only then.
        self.direct = direct or _NO_DIRECT


_NO_DIRECT: dict[type, Any] = {}


class _Signal(BaseException):
    """Raised by a general handler's wrapper when its result is not a plain value."""

    __slots__ = ("kind", "payload", "tables")

    def __init__(self, kind: int, payload: Any, tables: Tables | None = None) -> None:
        self.kind = kind
        self.payload = payload
        self.tables = tables


class InScope:
    """A handler's result meaning "answer this effect by running `comp` in `scope`".

    `scope` is the `home` of an entry of the table that `Handler.intercept` receives: the
    handler scope in which that entry's own handler runs the computations it returns (the scope
    outside that handler's installation). An interceptor that wraps such an entry calls the
    original function itself; when that returns a computation, the wrapper returns
    `InScope(observed(computation), home)` so the computation still runs where the original
    handler meant it to — there, effects of the type being handled reach the next handler out,
    not the wrapper again. The computation's value (or error) answers the effect.

    Only results of general entries (non-`None` home) are interpreted this way; a `pure` entry's
    results are passed on as they are.
    """

    __slots__ = ("comp", "scope")

    def __init__(self, comp: Any, scope: Any) -> None:
        if not isinstance(scope, Tables):
            raise TypeError(
                f"InScope needs the `home` of a handler table entry as its scope, got {scope!r}"
            )
        self.comp = comp
        self.scope = scope

    def __repr__(self) -> str:
        return f"InScope({self.comp!r})"


class ScopeEffect(Effect[Any]):
    """Base of the few effects the interpreter answers itself, with the run and the tables of
    the scope that performed them (`transaction` reads the handlers in scope, `Parallel`
    starts branches in it). No handler table holds them: they are found on the slow path of
    lookup, so the hot loop pays nothing, and an `EffectLogger` never records them (what they
    do is deterministic, or records its own effects)."""

    __slots__ = ()

    def answer(self, run: Run, tables: Tables) -> Any:
        """The effect's result, classified like a general handler's (a computation runs in
        `tables`, an awaitable is awaited by the async driver)."""
        raise NotImplementedError


_PUSH, _SUSPEND, _AWAIT = range(3)
# Results of these types are plain values; checking them first keeps the classifier cheap.
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, dict, list, tuple, set})


def classify(result: Any, effect: Any, home: Tables | None = None) -> Any:
    """What the hot loop makes of a general handler's result for `effect`: a plain value is
    returned; a computation (run in `home`, or with `None` in the home of the entry that
    answered), an `InScope`, `SUSPEND` or an awaitable raises the interpreter's signal for it;
    an exception is raised (thrown into the computation at its `yield`).

    Package-internal: a `DIRECT` entry calls it on its results that are not plain values."""
    rtype = type(result)
    if rtype is GeneratorType or rtype is Comp or rtype is WithHandler:
        raise _Signal(_PUSH, result, home)
    if rtype is InScope:
        raise _Signal(_PUSH, result.comp, result.scope)
    if result is SUSPEND:
        raise _Signal(_SUSPEND, effect)
    if isinstance(result, BaseException):
        raise result
    if getattr(rtype, "__await__", None) is not None:
        raise _Signal(_AWAIT, result)
    return result


def _general(fn: HandlerFn, home: Tables) -> HandlerFn:
    def general(effect: Any) -> Any:
        result = fn(effect)
        if type(result) in _PLAIN:
            return result
        return classify(result, effect, home)

    return general


class _Direct:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DIRECT"


DIRECT: Any = _Direct()
"""The `home` an interceptor gives an entry whose function classifies its own results
(package-internal: the effect logger's fast path). The hot loop calls such a function with no
wrapper: it returns plain values and passes anything else through `classify` (a computation
with no scope runs outside the interceptor, as a general entry's would). Interceptors further
in see an ordinary general entry (its results unclassified again)."""


def _unclassified(fn: HandlerFn, home: Tables) -> HandlerFn:
    # A DIRECT function as an ordinary general entry, for interceptors installed inside it:
    # the results it raised as signals come back as values.
    def general(effect: Any) -> Any:
        try:
            return fn(effect)
        except _Signal as signal:
            if signal.kind == _PUSH:
                return InScope(signal.payload, signal.tables or home)
            if signal.kind == _SUSPEND:
                return SUSPEND
            return signal.payload

    return general


Frame = tuple[Generator[Any, Any, Any], Tables, "_Scope | None"]


def _start_generator(comp: Any) -> Generator[Any, Any, Any]:
    if type(comp) is GeneratorType:
        if comp.gi_frame is None or comp.gi_suspended:
            # Running a used generator again would silently give None: say so instead.
            raise TypeError(
                f"{comp.__qualname__} generator was already started or finished; generators "
                "run once (use @computation for a re-startable computation)"
            )
        return comp
    if isinstance(comp, Comp | Effect | WithHandler):
        return iter(comp)
    raise TypeError(
        f"not a computation: {comp!r} (expected a generator, a Comp, an Effect or with_handler)"
    )


def _general_views(meta: Table, direct: dict[type, Any]) -> bool:
    """Replace the DIRECT entries in `meta` (also cached under a subclass: the same tuple) by
    general views of them, for an interceptor about to see `meta`; whether there were any."""
    raw = {id(entry) for entry in direct.values()}
    views: dict[HandlerFn, HandlerFn] = {}  # an interceptor may answer many types with one
    viewed = False
    for t, entry in meta.items():  # (only values change: safe to iterate)
        if id(entry) in raw:
            fn, home, owner = entry
            view = views.get(fn)
            if view is None:
                view = views[fn] = _unclassified(fn, home)
            meta[t] = (view, home, owner)
            viewed = True
    return viewed


def _install(outer: Tables, handlers: tuple[Handler, ...]) -> tuple[Tables, _Scope]:
    fast, meta, derived = outer.fast.copy(), outer.meta.copy(), set(outer.derived)
    direct = outer.direct
    home = outer
    installed: list[Handler] = []
    for i, h in enumerate(reversed(handlers)):  # outermost first, so inner ones shadow
        inst = h.install()
        if type(inst).intercept is not Handler.intercept:
            # An interceptor (the effect logger) rewrites entries of the handlers outside it.
            # A rewritten general entry's computations run *outside the interceptor*, where the
            # effect still reaches the original handler: `yield effect` from a wrapper works.
            # Installed first in its scope, nothing has changed the tables yet: `outer` is
            # what is outside it (unless an interceptor further out needs views made).
            viewed = bool(direct) and _general_views(meta, direct)
            outside = (
                outer
                if i == 0 and not viewed
                else Tables(fast.copy(), dict(meta), frozenset(derived), direct)
            )
            inst.intercept(meta)
            before = outside.meta.get
            for t, entry in meta.items():  # (only values change: safe to iterate)
                if before(t) is not entry:
                    fn, entry_home, owner = entry
                    if entry_home is DIRECT:
                        # Kept as it is, with the home where its computations run: the hot
                        # loop calls `fn` itself.
                        entry = meta[t] = (fn, outside, owner)
                        if direct is outer.direct:
                            direct = dict(direct)
                        direct[t] = entry
                        fast[t] = fn
                        continue
                    if entry_home is not None:
                        meta[t] = (fn, outside, owner)
                    fast[t] = fn if entry_home is None else _general(fn, outside)
        own = inst.effect_handlers()
        if own:
            # Inner shadows outer, also across subclasses: an outer entry for a subclass of a
            # type this handler interprets (installed for it, or cached by lookup) must not
            # hide this one; dropped, the subclass resolves to this handler through its MRO.
            # Walking each type's subclasses (most have none: one C call) is cheaper than an
            # `issubclass` test per table entry.
            for base in own:
                subs: list[type] = base.__subclasses__() if isinstance(base, type) else []
                while subs:
                    sub = subs.pop()
                    if sub in meta and sub not in own:
                        del fast[sub], meta[sub]
                        derived.discard(sub)
                    subs.extend(sub.__subclasses__())
            if not inst.pure and i > 0:
                # A general handler's computations run outside it: snapshot the tables as they
                # are before its own entries (the outermost one can use `outer` as is).
                home = Tables(fast.copy(), meta.copy(), frozenset(derived), direct)
            entry_home = None if inst.pure else home
            for t, fn in own.items():
                meta[t] = (fn, entry_home, inst)
                fast[t] = fn if entry_home is None else _general(fn, entry_home)
        installed.append(inst)
    installed.reverse()
    return Tables(fast, meta, frozenset(derived), direct), _Scope(installed)


def extend(tables: Tables, handlers: tuple[Handler, ...]) -> tuple[Tables, _Scope]:
    """Package-internal: `tables` with `handlers` installed inside them (first innermost), as
    `with_handler` would, and the scope they make."""
    return _install(tables, handlers)


class Run:
    """The state of one run: its frame stack. Driven by `drive` / `adrive`."""

    __slots__ = (
        "__weakref__",
        "cancel_reason",
        "cancelling",
        "discard_on_interrupt",
        "frames",
        "interrupt_reason",
        "parent",
        "slice_end",
        "unwound",
    )

    def __init__(self, comp: Any, handlers: tuple[Handler, ...]) -> None:
        gen = _start_generator(comp)
        tables, scope = _install(root_tables(), handlers)
        self.frames: list[Frame] = [(gen, tables, scope)]
        self.cancelling = False
        self.cancel_reason: Any = None
        # Set by an owner before it cancels the task awaiting a step: the reason the
        # computation's cleanup sees. `unwound` is the outcome of that unwinding.
        self.interrupt_reason: Any = None
        self.unwound: Outcome | None = None
        # Durable runs treat a cancellation nobody asked for (the process shutting down) as a
        # crash: the log is the truth and recovery continues the run, so cleanup must not run
        # (and perform effects) now. Such runs are discarded instead of unwound.
        self.discard_on_interrupt = False
        # When the current slice of work ends (`_clock()` time); infinite under the sync driver.
        self.slice_end = math.inf
        self.parent: Run | None = None

    @classmethod
    def branch(cls, comp: Any, tables: Tables, scope: _Scope | None, parent: Run) -> Run:
        """A run of `comp` in an existing scope (`Parallel`'s branches): it starts from
        `tables` instead of the root, and is cancelled the way its parent is."""
        run = cls.__new__(cls)
        run.frames = [(_start_generator(comp), tables, scope)]
        run.cancelling, run.cancel_reason = parent.cancelling, parent.cancel_reason
        run.interrupt_reason, run.unwound = None, None
        run.discard_on_interrupt = parent.discard_on_interrupt
        run.slice_end = math.inf
        run.parent = parent
        return run

    # -- the loop -------------------------------------------------------------------------

    def step(self, value: Any, exc: BaseException | None) -> Outcome | _Await | _Pause:
        """Run until the computation finishes, suspends, a handler returns an awaitable or the
        time slice (`slice_end`) is used up."""
        frames = self.frames
        gen, tables, scope = frames[-1]
        table, send = tables.fast, gen.send
        while True:
            # The inner `for` is the iteration counter: cheaper than counting by hand.
            for _ in _TICKS:
                try:
                    if exc is None:
                        eff = send(value)
                    else:
                        err, exc = exc, None
                        eff = gen.throw(err)
                except StopIteration as stop:
                    value = stop.value
                except BaseException as err:
                    value, exc = None, err
                else:
                    # Two separate `try`s: a handler raising KeyError is not a missing handler.
                    try:
                        fn = table[type(eff)]
                    except KeyError:
                        found = self._resolve(eff, tables)
                        if found is None:  # a scope or a sub-computation was pushed
                            gen, tables, scope = frames[-1]
                            table, send = tables.fast, gen.send
                            value = None
                            continue
                        if isinstance(found, BaseException):
                            value, exc = None, found
                            continue
                        fn = found
                    try:
                        value = fn(eff)
                        continue
                    except _Signal as signal:
                        # A general handler's result was not a plain value. Signalling this by
                        # raising keeps the common path free of any per-effect check; the raise
                        # costs only on suspensions, awaits and handler computations.
                        kind, payload = signal.kind, signal.payload
                        home = signal.tables
                    except BaseException as err:
                        value, exc = None, err
                        continue
                    value = None
                    if kind == _PUSH:
                        if home is None:  # from a DIRECT entry: where its entry runs them
                            home = self._home(eff, tables)
                        if type(payload) is WithHandler:
                            frames.append(self._enter(payload, home))
                        else:
                            frames.append((_start_generator(payload), home, None))
                        gen, tables, scope = frames[-1]
                        table, send = tables.fast, gen.send
                    elif kind == _SUSPEND:
                        if self.cancelling:
                            exc = YieldDuringCancellation(
                                f"{eff!r} while the run is being cancelled: cleanup may perform "
                                "effects but cannot wait for input"
                            )
                            continue
                        return self._suspend(payload)
                    else:
                        return _Await(payload)
                    continue
                # The current frame returned or raised: close its handler scope and pop it; the
                # value or error goes to the frame below.
                if scope is not None:
                    value, exc = _exit_scope(scope, value, exc)
                frames.pop()
                if not frames:
                    return self._finish(value, exc)
                gen, tables, scope = frames[-1]
                table, send = tables.fast, gen.send
            # Only between effects (no error in flight): a cancellation noticed at the pause is
            # thrown at the computation's current `yield`, as if the effect whose result is
            # pending had been an await that got cancelled.
            if exc is None and _clock() >= self.slice_end:
                return _Pause(value)

    def _resolve(self, eff: Any, tables: Tables) -> HandlerFn | BaseException | None:
        """The slow path of lookup: scopes, sub-computations, subclasses, missing handlers."""
        etype = type(eff)
        if etype is WithHandler:
            self.frames.append(self._enter(eff, tables))
            return None
        if etype is GeneratorType or isinstance(eff, Comp):
            self.frames.append((_start_generator(eff), tables, None))
            return None
        if isinstance(eff, ScopeEffect):
            return _general(lambda e: e.answer(self, tables), tables)
        for base in etype.__mro__[1:]:
            entry = tables.meta.get(base)
            if entry is not None:
                fn: HandlerFn = tables.fast[base]
                if tables is not _root:  # the root tables are shared by every run: no cache
                    # Cache: the next lookup of this subclass is one dict access.
                    tables.fast[etype] = fn
                    tables.meta[etype] = entry
                    tables.derived = tables.derived | {etype}
                return fn
        return not_handled(eff, tables.meta)

    def _home(self, eff: Any, tables: Tables) -> Tables:
        """The home of the entry that answered `eff` (a subclass's is cached by `_resolve`)."""
        for base in type(eff).__mro__:
            entry = tables.meta.get(base)
            if entry is not None and entry[1] is not None:
                home: Tables = entry[1]
                return home
        raise AssertionError(f"no general entry answered {eff!r}")

    def _enter(self, w: WithHandler[Any], tables: Tables) -> Frame:
        gen = _start_generator(w.comp)
        new_tables, scope = _install(tables, w.handlers)
        return (gen, new_tables, scope)

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
        self.slice_end = math.inf  # nobody else to run: never pause
        try:
            while True:
                out = self.step(value, exc)
                if type(out) is not _Await:
                    return out  # type: ignore[return-value]
                close_awaitable(out.awaitable)
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
        """Async driver: awaits what handlers return and gives control back to the event loop
        every `SLICE` seconds of work; on cancellation by anyio (at either), unwinds the
        computation (shielded, so cleanup may still await) and re-raises.

        This is the one async driver: `astart`/`arun`, `AsyncComputation` and durable runs all
        drive computations through it."""
        if isinstance(exc, Cancellation):
            self.cancelling, self.cancel_reason = True, exc.reason
        token = _async_driver.set(True)
        try:
            while True:
                self.slice_end = _clock() + SLICE
                out = self.step(value, exc)
                kind = type(out)
                if kind is not _Await and kind is not _Pause:
                    return out  # type: ignore[return-value]
                try:
                    if kind is _Pause:
                        await anyio.lowlevel.checkpoint()
                        value, exc = out.value, None  # type: ignore[union-attr]
                    else:
                        value, exc = await out.awaitable, None  # type: ignore[union-attr]
                except anyio.get_cancelled_exc_class():
                    reason = self.interrupt_reason
                    parent = self.parent
                    while reason is None and parent is not None:
                        # A branch cancelled with its parent: the parent's owner gave the reason.
                        reason, parent = parent.interrupt_reason, parent.parent
                    if reason is None and self.discard_on_interrupt:
                        # Treated as a crash: the cancellation must go on, whatever a
                        # `finally` block raises while the generators are closed.
                        with contextlib.suppress(Exception):
                            self.discard()
                        raise
                    if reason is None:
                        reason = "cancelled by the task group"
                    with anyio.CancelScope(shield=True):
                        self.unwound = await self.adrive(None, Cancellation(reason))
                    raise
                except BaseException as err:
                    value, exc = None, err
        finally:
            _async_driver.reset(token)

    def discard(self) -> None:
        """Close an abandoned run's generators and handler scopes, innermost first, without
        running effects (nobody is left to answer them)."""
        frames, self.frames = self.frames, []
        error: Exception | None = None
        for gen, _, scope in reversed(frames):
            try:
                _close(gen)
            except Exception as err:
                # A `finally` block raised: every outer frame and scope is still closed, then
                # the first such error is raised (from `Suspend.__del__`, Python prints it as
                # it does for any generator whose cleanup fails when collected).
                if error is None:
                    error = err
            if scope is not None:
                for h in scope.cleanups:
                    with contextlib.suppress(Exception):
                        h.cleanup()
        if error is not None:
            raise error


# More cleanup levels than any real computation nests; a generator that keeps yielding when
# closed (it catches GeneratorExit in a loop) is left to the garbage collector after that.
_CLOSE_ATTEMPTS = 1000


def _close(gen: Any) -> None:
    """Close an abandoned generator for good, innermost delegate first.

    A `finally` block that performs an effect makes `close()` raise "generator ignored
    GeneratorExit" and leaves that generator suspended inside the block: nobody is left to
    answer the effect. If it was a delegate (`yield from`), the error moves on to the generator
    that delegated to it and the delegate is orphaned, still suspended. Either way, the garbage
    collector would later close it and print the error as an unraisable exception. So: close
    the innermost generator of the `yield from` chain, once per attempt, until `gen` has
    finished; each attempt abandons at least one level of cleanup.
    """
    if type(gen) is not GeneratorType:
        with contextlib.suppress(RuntimeError):
            gen.close()  # not a generator (an iterator with close): nothing to walk
        return
    for _ in range(_CLOSE_ATTEMPTS):
        if gen.gi_frame is None:
            return
        inner = gen
        while True:
            sub = inner.gi_yieldfrom
            if type(sub) is not GeneratorType or sub.gi_frame is None:
                break
            inner = sub
        try:
            inner.close()
        except RuntimeError:
            pass


def close_awaitable(aw: Any) -> None:
    """Close an awaitable that will never be awaited (no 'never awaited' warning)."""
    close = getattr(aw, "close", None)
    if close is not None:
        close()


def returning(value: Any) -> Generator[Any, Any, Any]:
    """A computation that returns `value` as is: how a handler hands back a generator, an
    exception or an awaitable as a plain value instead of having it interpreted."""
    return value
    yield  # pragma: no cover - makes this a generator


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


_root: Tables | None = None


def root_tables() -> Tables:
    """The tables every run starts from: the runner defaults for Yield, Throw and Call."""
    global _root
    if _root is None:
        from ._std.call import CallHandler
        from ._std.control import ThrowHandler, YieldHandler

        empty = Tables({}, {}, frozenset())
        _root, _ = _install(empty, (YieldHandler(), ThrowHandler(), CallHandler()))
    return _root
