"""`EffectLogger`: records a computation's effects and replays them from a log."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Generator, Sequence
from types import GeneratorType
from typing import Any

import pydantic

from .._computation import Comp, ComputationFunction
from .._exceptions import (
    Cancellation,
    DivergenceError,
    EffectsError,
    InterruptedEffect,
    LogError,
    MissingHandlerError,
    SerializationError,
)
from .._handler import Handler, HandlerFn, Table, WithHandler, handles
from .._interpreter import DIRECT, SUSPEND, InScope, classify, returning
from .._std.call import Call
from .._std.control import Yield
from .._std.world import Now, Sleep
from ._effects import (
    AwaitTimer,
    Checkpoint,
    StartTimer,
    _idempotency_key,
    is_at_most_once,
)
from ._identity import type_name
from ._log import Log, LogEntry, Recorded, build_recorded, check_log, make_entry, make_log
from ._loop import LoopHandle, LoopState, NextIteration
from ._recorder import recorder
from ._serialize import (
    EffectInfo,
    _infos,
    _lookup,
    codec,
    dump_args,
    dump_error,
    effect_info,
    effect_name,
    fingerprint,
    legacy_fingerprint,
    load_error,
    result_codec,
)
from ._versioning import Patched

_PATCHED = effect_name(Patched)
_OWN = (Patched, LoopState, NextIteration)
_CANCELLATION = type_name(Cancellation)
_NO_REASON: Any = object()


def _cancelled(
    seq: int,
    name: str,
    fp: str,
    args: dict[str, Any],
    reason: Any,
    started_at: float | None,
) -> LogEntry:
    """The entry of an effect that a cancellation interrupted: replay delivers the
    cancellation again at this point, so a crash during the cleanup that followed continues
    that cleanup instead of the run's normal path."""
    error = dump_error(Cancellation(reason)) if reason is not _NO_REASON else None
    if error is None or "args" not in error:
        error = {"type": _CANCELLATION, "message": "cancelled"}  # the reason is not JSON
    return make_entry(seq, name, fp, args, "error", None, error, started_at, _now())


def is_cancelled(entry: LogEntry) -> bool:
    """Whether `entry` records an effect interrupted by a cancellation."""
    return (
        entry.status == "error"
        and entry.error is not None
        and (entry.error["type"] == _CANCELLATION)
    )


def cancellation(entries: Sequence[LogEntry]) -> tuple[bool, Any]:
    """Whether a log records a cancellation, and the reason of the latest one that recorded
    its reason (`None` if none did)."""
    found = False
    for entry in reversed(entries):
        if is_cancelled(entry):
            found = True
            assert entry.error is not None
            args = entry.error.get("args")
            if args:
                return True, args[0]
    return found, None


# The entry recording a sleep's wake-up time; the sleep's own entry follows it once it is over.
_TIMER = "effects.durable.Timer"

_PRIMITIVE = (str, int, float, bool, type(None))
# Entry timestamps: wall-clock UTC epoch seconds, read once when a recorded effect is
# dispatched and once when it completes.
_now = time.time


class _Live:
    """Returned by the matching step when the computation has left the log: run live."""

    __slots__ = ()


_LIVE: Any = _Live()


def _deliver(value: Any) -> Any:
    if type(value) in _PRIMITIVE:
        return value
    if (
        type(value) in (GeneratorType, Comp, WithHandler)
        or isinstance(value, BaseException)
        or inspect.isawaitable(value)
    ):
        return returning(value)
    return value


# What the logger keeps per entry: a `LogEntry`, or for an effect recorded on the fast path
# (an in-memory handler's plain result) a `Recorded` tuple, built into its `LogEntry` when the
# log is read (`_materialized`). `_seq_of` reads the position of either.
_Kept = LogEntry | Recorded


def _raised(result: Any) -> Any:
    # The logger's own handlers are pure (no classifier around them): errors are raised.
    if isinstance(result, BaseException):
        raise result
    return result


def _seq_of(e: _Kept) -> int:
    return e[0] if type(e) is tuple else e.seq  # type: ignore[union-attr]


class _RecordedAwait:
    """The awaitable a handler returned, recording its outcome when it completes."""

    __slots__ = ("_args", "_aw", "_effect", "_logger", "_seq", "_start")

    def __init__(
        self,
        aw: Any,
        logger: EffectLogger,
        effect: Any,
        seq: int,
        args: Any,
        start: float,
    ) -> None:
        self._aw = aw
        self._logger = logger
        self._effect = effect
        self._seq = seq
        self._args = args
        self._start = start

    def __await__(self) -> Generator[Any, Any, Any]:
        return self._run().__await__()

    async def _run(self) -> Any:
        try:
            result = await self._aw
        except Exception as err:
            self._logger._record_error(self._effect, self._seq, self._args, err, self._start)
            raise
        except BaseException:
            # Interrupted (the reason is delivered later, at the yield): marked so that a
            # replay of a cancelled run's log cancels at the same point.
            self._logger._record_cancelled(
                self._effect, self._seq, self._args, _NO_REASON, self._start
            )
            raise
        failed = self._logger._record_done(self._effect, self._seq, self._args, result, self._start)
        if failed is not None:
            raise failed
        return result

    def close(self) -> None:
        """Close the handler's awaitable (the sync runner refuses awaitables)."""
        close = getattr(self._aw, "close", None)
        if close is not None:
            close()


def _args(effect: Any, args: Any) -> dict[str, Any]:
    # The recording fast path keeps an effect whose arguments are all scalars in their place.
    return args if type(args) is dict else dump_args(effect)


def _where(effect: Any, name: str) -> str:
    # Named in a SerializationError: for a Call, the function whose result it is.
    if type(effect) is Call:
        fn = effect._fn
        return f"{name}({getattr(fn, '__qualname__', None) or repr(fn)}): result"
    return f"{name}: result"


def _format_args(args: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) <= 200 else text[:197] + "..."


_new = object.__new__


def _new_id() -> str:
    return os.urandom(16).hex()


def _identity(comp: Any) -> tuple[str, int]:
    if isinstance(comp, Comp | ComputationFunction):
        return comp.name, comp.version
    raise TypeError(
        f"computation= expects a @computation function or its Comp, got {type(comp).__name__}"
    )


def _clock() -> Generator[Any, Any, float]:
    """Now as UTC epoch seconds, by the clock in scope (`Clock.now()`), else the system's."""
    try:
        now = yield Now()
    except MissingHandlerError:
        return time.time()
    return float(now.timestamp())


class EffectLogger(Handler):
    """Records every effect of the computation it is installed around, and replays a log.

    Install it directly around the computation, innermost::

        outcome = start(comp, EffectLogger(log), *other_handlers)

    (`with_handler(comp, EffectLogger(log))` inside the other handlers is the same, at the cost
    of a handler scope of its own, a few microseconds per run.)

    Effects of replayable handlers (State, Reader, Writer, EventAccumulator) are re-executed on
    replay; every other effect (Yield, Call, Fresh, Random, Clock, user effects) is recorded as
    a `LogEntry` when it completes. Handlers installed *inside* the logged computation are part
    of the computation: they run again on replay.

    With `log`, the recorded effects return their logged results (or raise their logged errors)
    without calling any handler, until the log is exhausted or its pending `Yield` is reached:
    then the run continues live and the new log holds every entry. The given log is copied,
    never mutated. Replay is strict: a different effect or different arguments raise
    `DivergenceError` (so does a computation that ends before the log does);
    `allow_divergence=True` drops the rest of the old log at the first mismatch and continues
    live instead.

    Options:

    - `computation`: the `@computation` (or its `Comp`) being run. The new log records its name
      and version; a log of another computation, or written by a newer version, is rejected
      with `LogError`.
    - `run_id`: the run's id (default: the log's, else 32 random hex digits); idempotency keys are
      `"{run_id}:{seq}"`. A log of another run is rejected with `LogError`.
    - `checkpoints=True`: yield `Checkpoint(log, reason)` in the scope outside the logger after
      each effect of an external handler completes, before each at-most-once effect runs, and
      when a cancellation is delivered at an effect performed outside the logger, and once a
      sleep's wake-up time is recorded.

    `Clock.sleep` is a durable timer: live, the logger asks `StartTimer(seconds)` outside it for
    the wake-up time, records it (an `effects.durable.Timer` entry), then `AwaitTimer(wake_at)`;
    a replay that ends at that entry waits only for what is left. Without handlers for those
    two, the clock in scope (`Clock.now()`) answers and `Sleep(what is left)` waits.
    - `on_log(log)`: called with the final log when the scope exits (returns, raises or is
      cancelled). While suspended, `Suspend.data[EffectLogger]` holds the current log.

    `logger.log` is the current log of the logger's latest installation (a snapshot).
    """

    # Its own effects (patch markers, loop state) answer plain values and raise their errors:
    # no classifier around them.
    pure = True

    def __init__(
        self,
        log: Log | None = None,
        *,
        allow_divergence: bool = False,
        run_id: str | None = None,
        checkpoints: bool = False,
        computation: Comp[Any] | ComputationFunction[Any, Any] | None = None,
        on_log: Callable[[Log], None] | None = None,
    ) -> None:
        if log is not None:
            check_log(log)
        name: str | None = log.computation if log is not None else None
        version: int | None = log.version if log is not None else None
        if computation is not None:
            name, version = _identity(computation)
            if log is not None and log.computation is not None and log.computation != name:
                raise LogError(f"this log belongs to computation {log.computation!r}, not {name!r}")
            if log is not None and log.version is not None and log.version > version:
                raise LogError(
                    f"this log of {name!r} was written by version {log.version}; the code is "
                    f"version {version}: an older version cannot replay it"
                )
        if log is not None and run_id is not None and log.run_id not in (None, run_id):
            raise LogError(f"this log belongs to run {log.run_id!r}, not {run_id!r}")
        self.allow_divergence = allow_divergence
        self.checkpoints = checkpoints
        self.on_log = on_log
        self._given = log
        self._computation = name
        self._version = version
        # A fresh id is drawn when first needed (most in-memory runs never ask for it).
        self._run_id: str | None = run_id or (log.run_id if log is not None else None)
        self._installed: EffectLogger | None = None
        self._fresh = True
        self._reset()

    def _reset(self) -> None:
        given = self._given
        if given is None:
            old: list[LogEntry] = []
            self._branch_old: list[LogEntry] = []
        else:
            old = list(given.entries)
            # The entries of `Parallel` branches are replayed by the branches' own loggers.
            self._branch_old = [e for e in old if e.branch is not None]
            if self._branch_old:
                old = [e for e in old if e.branch is None]
        self._old = old
        self._groups: dict[object, int] = {}
        self._originals: Table = {}
        self._n_old = len(self._old)
        self._cursor = 0
        self._entries: list[_Kept] = []
        # Entries before this index are all `LogEntry`s (see `_materialized`).
        self._built = 0
        self._next_seq = 0
        self._diverged: DivergenceError | MissingHandlerError | None = None

    # -- public view ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run id used in idempotency keys and recorded in the log."""
        run_id = self._run_id
        if run_id is None:
            run_id = self._run_id = _new_id()
        return run_id

    @property
    def replaying(self) -> bool:
        """Whether recorded results are still being replayed (until the pending Yield)."""
        inst = self._installed or self
        return inst._cursor < inst._n_old

    @property
    def log(self) -> Log:
        """A snapshot of the current log (of the latest installation of this logger)."""
        inst = self._installed or self
        return inst._snapshot()

    def _snapshot(self) -> Log:
        return make_log(self._computation, self._version, self.run_id, self._materialized())

    def _materialized(self) -> list[LogEntry]:
        """The entries, as `LogEntry`s (built in place, once each)."""
        entries = self._entries
        n = len(entries)
        if self._built < n:
            build_recorded(entries, self._built, fingerprint)
            self._built = n
        return list(entries)  # type: ignore[arg-type]

    def _entry_at(self, i: int) -> LogEntry:
        entries = self._entries
        if self._built < len(entries):
            build_recorded(entries, self._built, fingerprint)
            self._built = len(entries)
        return entries[i]  # type: ignore[return-value]

    def _truncate(self, n: int) -> None:
        del self._entries[n:]
        self._built = min(self._built, n)

    def __repr__(self) -> str:
        return f"EffectLogger(run_id={self.run_id!r})"

    # -- handler hooks ----------------------------------------------------------------------

    def install(self) -> EffectLogger:
        if self._fresh:
            # The first installation uses the logger itself (its state is as `_reset` left
            # it); later ones get a copy each (of the same class: a branch's logger too).
            self._fresh = False
            return self
        self.run_id  # noqa: B018 - drawn now: every installation shares it
        inst = _new(type(self))
        inst.__dict__.update(self.__dict__)
        inst._reset()
        inst._installed = None
        self._installed = inst
        return inst

    def intercept(self, table: Table) -> None:
        replays = self._n_old > 0
        # What is handled in this scope: a recorded effect that nothing handles now is a
        # missing handler, not a change of the code (see `_divergence`; only a replay
        # diverges). A copy of the keys: the table itself would make the scope a reference
        # cycle, left to the cyclic GC.
        self._in_scope: frozenset[type] | None = frozenset(table) if replays else None
        # Decided once per scope: replayable handlers keep their entries (the State/Reader fast
        # path is untouched), handlers with a `replay` method are switched to it while
        # replaying, every other entry (Throw aside) is replaced by a recording function: an
        # in-memory handler's by its type's (`_recorder`), the others by one function that runs
        # them outside the logger. They are DIRECT entries (the hot loop calls them with no
        # classifier: they classify their own results that are not plain values), and
        # computations they hand over run outside the logger, where `yield effect` reaches the
        # original handler.
        originals = self._originals
        entries = self._entries
        outside: HandlerFn | None = None
        guard = self._guard if type(self)._guard is not EffectLogger._guard else None
        infos = _infos
        for t, entry in table.items():  # (only values change: safe)
            fn, home, owner = entry
            if owner.replayable:
                if replays:
                    replay = getattr(owner, "replay", None)
                    if replay is not None:
                        table[t] = (self._quiet(fn, replay), home, owner)
                continue
            try:
                info = infos[t]
            except KeyError:
                info = effect_info(t)
            handling = info.handling
            if handling == "throw":
                continue
            originals[t] = entry  # also for the loggers of Parallel branches
            if handling == "outside" or owner.external or getattr(owner, "at_most_once", False):
                if outside is None:
                    outside = self._logged_outside()
                    if guard is not None:
                        outside = guard(outside)
                table[t] = (outside, DIRECT, owner)
            else:
                function = recorder(self, info, t, fn, home, entries, replays)
                table[t] = (function if guard is None else guard(function), DIRECT, owner)

    def decorate(self, data: dict[Any, Any]) -> None:
        data[EffectLogger] = self._snapshot()

    # -- Parallel branches (see `_branches`) ------------------------------------------------

    def branch(self, path: str, group: object) -> Handler:
        """The logger of a `Parallel` branch run in this logger's scope: it records the
        branch's effects in a log of its own, merged into this one with the branch's id."""
        from ._branches import start_branch

        return start_branch(self, path, group)

    def joined(self, branch: Handler) -> list[Any]:
        """Nothing to perform after the branches: each merged its entries when it ended."""
        return []

    def output(self, value: Any) -> Any:
        if self._diverged is not None:
            # The computation caught the DivergenceError and returned: still a divergence.
            raise self._diverged
        if not self._n_old:
            return value  # no log given: nothing left to replay
        left = self._unconsumed()
        if left is not None and not self.allow_divergence:
            self._diverged = self._divergence(left, "the end of the computation (it returned)")
            raise self._diverged
        return value

    def cleanup(self) -> None:
        if self.on_log is not None:
            self.on_log(self._snapshot())
        if not self._n_old:
            return
        left = self._unconsumed()
        if left is not None and self._diverged is None and not self.allow_divergence:
            self._diverged = self._divergence(left, "the end of the computation (it raised)")
            raise self._diverged

    # -- recording and replay ---------------------------------------------------------------

    def _quiet(self, fn: HandlerFn, replay: HandlerFn) -> HandlerFn:
        def quiet(effect: Any) -> Any:
            if self._cursor < self._n_old:
                return replay(effect)
            return fn(effect)

        return quiet

    def _guard(self, recorder: HandlerFn) -> HandlerFn:
        """Hook for subclasses: the recording function installed in the table."""
        return recorder

    def _original(self, t: type) -> tuple[HandlerFn, Any, Handler]:
        """The entry the logger replaced for effect type `t` (a subclass of a handled type
        finds its base's: the interpreter caches it under the subclass)."""
        originals = self._originals
        for base in t.__mro__:
            entry = originals.get(base)
            if entry is not None:
                return entry
        raise AssertionError(f"the effect logger recorded no handler for {t!r}")

    def _logged_outside(self) -> HandlerFn:
        """The recording function of external and at-most-once handlers' entries, and of
        sleeps (which record their wake-up time first): the effect runs outside the logger
        (`_perform`)."""
        flags: dict[type, tuple[bool, bool]] = {}

        def logged_outside(effect: Any) -> Any:
            t = type(effect)
            try:
                external, amo = flags[t]
            except KeyError:
                owner = self._original(t)[2]
                external, amo = flags[t] = (bool(owner.external), is_at_most_once(owner))
            if self._cursor < self._n_old:
                return classify(self._replay(effect, external, amo), effect)
            return classify(self._live(effect, external, amo), effect)

        return logged_outside

    def _record_other(self, effect: Any) -> Any:
        """Record an effect of a subclass of the type whose entry answered it."""
        t = type(effect)
        fn, home, _ = self._original(t)
        info = effect_info(t)
        if info.outside:
            return self._logged_outside()(effect)
        return recorder(self, info, t, fn, home, self._entries, self._n_old > 0)(effect)

    def _replayed(self, effect: Any) -> Any:
        """An in-memory handler's effect while replaying: its logged outcome."""
        value = self._replay(effect, False, False)
        return value if type(value) in _PRIMITIVE else classify(value, effect)

    def _settle_result(
        self,
        effect: Any,
        info: EffectInfo,
        seq: int,
        args: Any,
        result: Any,
        start: float,
        end: float,
        home: Any,
    ) -> Any:
        """Record (or hand over) a result of a recording function (`_recorder`) that is not a
        plain scalar. `home`: the wrapped entry's home, None for a pure handler (whose results
        are values as they are). `args`: the arguments, or the effect itself when they are all
        scalars (see `_recorder`)."""
        if home is not None:
            rtype = type(result)
            # The fast path called the handler itself: its computation (or an inner
            # interceptor's) runs where the handler meant it to, `home`, not outside us.
            if rtype is GeneratorType or rtype is Comp or rtype is WithHandler:
                comp = self._complete(result, effect, seq, args, start)
                return classify(InScope(comp, home), effect)
            if rtype is InScope:
                comp = self._complete(result.comp, effect, seq, args, start)
                return classify(InScope(comp, result.scope), effect)
            if isinstance(result, BaseException):
                self._record_error(effect, seq, args, result, start)
                raise result
            if result is SUSPEND:
                return classify(result, effect)  # only a Yield suspends; Yield goes elsewhere
            if inspect.isawaitable(result):
                return classify(_RecordedAwait(result, self, effect, seq, args, start), effect)
        try:
            data = (info.codec or result_codec(effect)).dump(result, info.where)
        except SerializationError as err:
            self._record_error(effect, seq, args, err, start)
            raise
        self._entries.append((seq, info, args, data, start, end))
        return result

    def _record_done(
        self, effect: Any, seq: int, args: Any, result: Any, start: float
    ) -> SerializationError | None:
        end = _now()
        args = _args(effect, args)
        name = effect_name(type(effect))
        try:
            data = result_codec(effect).dump(result, _where(effect, name))
        except SerializationError as err:
            self._record_error(effect, seq, args, err, start)
            return err
        self._entries.append(
            make_entry(seq, name, fingerprint(args), args, "done", data, None, start, end)
        )
        return None

    def _record_error(
        self, effect: Any, seq: int, args: Any, err: BaseException, start: float
    ) -> None:
        args = _args(effect, args)
        self._entries.append(
            make_entry(
                seq,
                effect_name(type(effect)),
                fingerprint(args),
                args,
                "error",
                None,
                dump_error(err),
                start,
                _now(),
            )
        )

    def _record_cancelled(
        self, effect: Any, seq: int, args: Any, reason: Any, start: float
    ) -> None:
        args = _args(effect, args)
        name = effect_name(type(effect))
        self._entries.append(_cancelled(seq, name, fingerprint(args), args, reason, start))

    def _complete(
        self, comp: Any, effect: Any, seq: int, args: Any, start: float
    ) -> Generator[Any, Any, Any]:
        """Run a handler's computation (in the handler's home scope) and record its result."""
        try:
            result = yield comp
        except Exception as err:
            self._record_error(effect, seq, args, err, start)
            raise
        except Cancellation as cancel:
            self._record_cancelled(effect, seq, args, cancel.reason, start)
            raise
        failed = self._record_done(effect, seq, args, result, start)
        if failed is not None:
            raise failed
        return result

    def _live(self, effect: Any, external: bool, amo: bool) -> Any:
        try:
            args = dump_args(effect)
        except SerializationError as err:
            return err
        start = _now()
        seq = self._next_seq
        if isinstance(effect, Sleep):
            self._next_seq = seq + 2  # the timer's entry, then the sleep's
            return self._sleep(effect, seq, args, fingerprint(args), None, start)
        self._next_seq = seq + 1
        return self._perform(
            effect,
            seq,
            args,
            fingerprint(args),
            external,
            amo or is_at_most_once(type(effect)),
            start,
        )

    def _perform(
        self,
        effect: Any,
        seq: int,
        args: dict[str, Any],
        fp: str,
        external: bool,
        amo: bool,
        start: float,
    ) -> Generator[Any, Any, Any]:
        """Run `effect` by its real handler (outside the logger) and record how it completed
        (`start`: when it was first dispatched)."""
        entries = self._entries
        name = effect_name(type(effect))
        suspends = isinstance(effect, Yield)
        pending = amo or suspends
        if pending:
            entries.append(make_entry(seq, name, fp, args, "pending", None, None, start))
            if amo and self.checkpoints:
                yield Checkpoint(self._snapshot(), "write_ahead")
        checkpoint = external and self.checkpoints
        key = _idempotency_key
        if suspends:
            # No key for a Yield: the answer may come from another task or context.
            prev: Any = None
        else:
            prev = key.get()
            # Restored by value, not by token: a handler computation may suspend and be
            # resumed in another context, where a token would not be valid.
            key.set(f"{self.run_id}:{seq}")
        try:
            result = yield effect
        except Exception as err:
            if not suspends:
                key.set(prev)
            end = _now()
            self._settle(
                seq,
                pending,
                make_entry(seq, name, fp, args, "error", None, dump_error(err), start, end),
            )
            if checkpoint:
                yield Checkpoint(self._snapshot(), "external")
            raise
        except Cancellation as cancel:
            # Cancelled here: recorded, so that replaying the log of a run whose cleanup was
            # cut off by a crash delivers the cancellation at this very point again.
            if not suspends:
                key.set(prev)
            self._settle(seq, pending, _cancelled(seq, name, fp, args, cancel.reason, start))
            if self.checkpoints:
                # Durable at once: a recovery then always replays to this point, and never
                # performs the interrupted effect again.
                yield Checkpoint(self._snapshot(), "cancelled")
            raise
        except BaseException:
            # The run being discarded (a shutdown, as in a crash): nothing to record.
            if not suspends:
                key.set(prev)
            if suspends:
                self._drop(seq)
            raise
        end = _now()
        if not suspends:
            key.set(prev)
        try:
            data = result_codec(effect).dump(result, _where(effect, name))
        except SerializationError as err:
            self._settle(
                seq,
                pending,
                make_entry(seq, name, fp, args, "error", None, dump_error(err), start, end),
            )
            if checkpoint:
                yield Checkpoint(self._snapshot(), "external")
            raise
        self._settle(seq, pending, make_entry(seq, name, fp, args, "done", data, None, start, end))
        if checkpoint:
            yield Checkpoint(self._snapshot(), "external")
        return result

    def _sleep(
        self,
        effect: Sleep,
        seq: int,
        args: dict[str, Any],
        fp: str,
        wake_at: float | None,
        start: float,
    ) -> Generator[Any, Any, None]:
        """A durable sleep: record its wake-up time at `seq` (unless a replayed entry gave it),
        wait until then, and record the sleep at `seq + 1` (both entries start at `start`, when
        the sleep was dispatched).

        The wake-up time is checkpointed before the wait begins, so a run restarted during the
        sleep (or released while it sleeps) waits only for what is left.
        """
        name = effect_name(type(effect))
        timed = wake_at is not None  # whether the timer's entry is in the log
        try:
            if wake_at is None:
                try:
                    wake_at = float((yield StartTimer(effect.seconds)))
                except MissingHandlerError:
                    wake_at = (yield from _clock()) + effect.seconds
                self._entries.append(
                    make_entry(
                        seq, _TIMER, fp, args, "done", {"wake_at": wake_at}, None, start, _now()
                    )
                )
                timed = True
                if self.checkpoints:
                    yield Checkpoint(self._snapshot(), "timer")
            try:
                yield AwaitTimer(wake_at)
            except MissingHandlerError:
                left = wake_at - (yield from _clock())
                yield type(effect)(max(0.0, left))  # to the clock in scope
        except Exception as err:
            at = seq + 1 if timed else seq
            self._entries.append(
                make_entry(at, name, fp, args, "error", None, dump_error(err), start, _now())
            )
            raise
        except Cancellation as cancel:
            # Recorded as `_perform` does: a replay of a cleanup cut off by a crash is
            # cancelled at this sleep again.
            self._entries.append(
                _cancelled(seq + 1 if timed else seq, name, fp, args, cancel.reason, start)
            )
            if self.checkpoints:
                yield Checkpoint(self._snapshot(), "cancelled")
            raise
        self._entries.append(make_entry(seq + 1, name, fp, args, "done", None, None, start, _now()))

    def _replay_timer(self, effect: Sleep, entry: LogEntry) -> Any:
        """A replayed sleep reached its recorded wake-up time: its own entry follows (the
        sleep was over), or the log ends here (it was cut off): wait for what is left."""
        self._entries.append(entry)
        self._next_seq = entry.seq + 1
        try:
            wake_at = float(entry.result["wake_at"])
        except (KeyError, TypeError, ValueError):
            self._diverged = DivergenceError(
                f"replay diverged at log position {entry.seq}: the recorded timer "
                f"{entry.result!r} holds no wake-up time",
                position=entry.seq,
                expected=f"{_TIMER} result {entry.result!r}",
                got=f"{effect!r}",
            )
            return self._diverged
        if self._cursor < self._n_old:
            return self._replay(effect, False, False)
        self._next_seq = entry.seq + 2
        start = entry.started_at if entry.started_at is not None else _now()
        return self._sleep(effect, entry.seq, entry.args, entry.fingerprint, wake_at, start)

    def _settle(self, seq: int, pending: bool, entry: LogEntry) -> None:
        entries = self._entries
        if pending:
            for i in range(len(entries) - 1, -1, -1):
                if _seq_of(entries[i]) == seq:
                    entries[i] = entry
                    return
        entries.append(entry)

    def _drop(self, seq: int) -> None:
        entries = self._entries
        if entries:
            last = entries[-1]
            if type(last) is LogEntry and last.seq == seq and last.status == "pending":
                self._truncate(len(entries) - 1)

    def _replay(self, effect: Any, external: bool, amo: bool) -> Any:
        m = self._match(effect)
        if m is _LIVE:
            return self._live(effect, external, amo)
        if not isinstance(m, LogEntry):
            return m
        if m.effect == _TIMER:
            return self._replay_timer(effect, m)
        status = m.status
        self._next_seq = m.seq + 1
        if status == "done":
            self._entries.append(m)
            result = m.result
            try:
                result = result_codec(effect).load(result)
            except pydantic.ValidationError as err:
                return self._bad_result(m, effect, err)
            return result if type(result) in _PRIMITIVE else _deliver(result)
        if status == "error":
            self._entries.append(m)
            assert m.error is not None
            if m.error["type"] == _CANCELLATION:
                args = m.error.get("args")
                return Cancellation(args[0] if args else None)
            return load_error(m.error)
        if isinstance(effect, Yield):
            # The run was waiting here: replay ends, and the Yield is performed again live
            # (same position, same prompt).
            # It started when the prompt was first shown (an older log has no time).
            start = m.started_at if m.started_at is not None else _now()
            amo = amo or is_at_most_once(type(effect))
            return self._perform(effect, m.seq, m.args, m.fingerprint, external, amo, start)
        interrupted = InterruptedEffect(
            f"{m.effect}({_format_args(m.args)}) at position {m.seq} is at-most-once and was "
            "interrupted: it started before the run stopped and may or may not have happened, "
            "so it is not run again"
        )
        self._entries.append(
            make_entry(
                m.seq,
                m.effect,
                m.fingerprint,
                m.args,
                "error",
                None,
                dump_error(interrupted),
                m.started_at,
                _now(),
            )
        )
        return interrupted

    def _match(self, effect: Any) -> Any:
        """Consume the old entry for `effect`: the entry, an exception, or `_LIVE`."""
        old = self._old
        i = self._cursor
        entry = old[i]
        while entry.effect == _PATCHED:
            # The marker of a patch the code no longer asks about (a removed `patched` call):
            # its branch is now the only code path.
            self._entries.append(entry)
            self._next_seq = entry.seq + 1
            i += 1
            self._cursor = i
            if i >= self._n_old:
                return _LIVE
            entry = old[i]
        t = type(effect)
        try:
            info = _infos[t]
        except KeyError:
            info = effect_info(t)
        try:
            args = info.dump_args(effect)
        except SerializationError as err:
            return err
        name = info.name
        # A sleep's first entry is its timer (logs of earlier versions have the sleep only).
        logged_as = entry.effect
        expected = _TIMER if logged_as == _TIMER and isinstance(effect, Sleep) else name
        if logged_as != expected or (
            entry.fingerprint != fingerprint(args)
            # An entry written before the canonical argument form (callables by name only,
            # sets in iteration order) matches that older form of the same arguments.
            and entry.fingerprint != legacy_fingerprint(effect)
        ):
            return self._mismatch(entry, f"{name}({_format_args(args)})")
        self._cursor = i + 1
        return entry

    def _mismatch(self, entry: LogEntry, got: str) -> Any:
        if self.allow_divergence:
            # Continue live from here: the rest of the old log no longer describes this run.
            del self._old[self._cursor :]
            self._n_old = self._cursor
            return _LIVE
        self._diverged = self._divergence(entry, got)
        return self._diverged

    def _unhandled(self, entry: LogEntry) -> bool:
        handled = getattr(self, "_in_scope", None)
        if handled is None:
            return False
        cls = _lookup(entry.effect)  # only classes already imported
        if not isinstance(cls, type):
            return False
        return not any(base in handled for base in cls.__mro__)

    def _divergence(self, entry: LogEntry, got: str) -> DivergenceError | MissingHandlerError:
        expected = f"{entry.effect}({_format_args(entry.args)})"
        if self._unhandled(entry):
            # Replaying without the handler: the computation got a MissingHandlerError where
            # the recording process got a result, and went another way. Name the real cause.
            return MissingHandlerError(
                f"replay needs a handler for {entry.effect}: the log has {expected} at position "
                f"{entry.seq}, and no handler in scope handles it (install the handlers the "
                "computation was run with)"
            )
        return DivergenceError(
            f"replay diverged at log position {entry.seq}: the log has {expected} "
            f"({entry.status}) but the computation now performs {got}. The code changed in a "
            "way that is not compatible with this run; guard the change with "
            "`patched(...)` or replay with allow_divergence=True",
            position=entry.seq,
            expected=expected,
            got=got,
        )

    def _bad_result(self, entry: LogEntry, effect: Any, err: pydantic.ValidationError) -> Any:
        expected = f"{entry.effect} result {entry.result!r}"
        got = f"{effect_name(type(effect))} expecting {result_codec(effect).tp!r}"
        self._diverged = DivergenceError(
            f"replay diverged at log position {entry.seq}: the logged result of {entry.effect} "
            f"does not validate as the result type the code now declares: {err}",
            position=entry.seq,
            expected=expected,
            got=got,
        )
        return self._diverged

    def _unconsumed(self) -> LogEntry | None:
        for e in self._old[self._cursor : self._n_old]:
            if e.effect != _PATCHED:
                return e
        return None

    # -- versioning and loops (the logger's own effects) -----------------------------------

    @handles(Patched, LoopState, NextIteration)
    def _own(self, effect: Patched | LoopState | NextIteration) -> Any:
        t = type(effect)
        if t is Patched:
            return _raised(self._patched(effect))  # type: ignore[arg-type]
        if t is LoopState:
            return _raised(self._loop_state(effect))  # type: ignore[arg-type]
        return _raised(self._next_iteration(effect))  # type: ignore[arg-type]

    def effect_handlers(self) -> dict[type, HandlerFn]:
        # One bound method for the three, built without the default's comprehension: this
        # runs once per run.
        return dict.fromkeys(_OWN, self._own)

    def _patched(self, effect: Patched) -> Any:
        if self._cursor >= self._n_old:
            args = {"patch_id": effect.patch_id}
            seq = self._next_seq
            self._next_seq = seq + 1
            # The logger's own markers take no time: one clock read for both ends.
            now = _now()
            self._entries.append(
                make_entry(seq, _PATCHED, fingerprint(args), args, "done", True, None, now, now)
            )
            return True
        fp = fingerprint({"patch_id": effect.patch_id})
        old = self._old
        i = self._cursor
        # Look through the markers recorded at this position: ours may follow markers of
        # patches that were removed since.
        while i < self._n_old and old[i].effect == _PATCHED:
            if old[i].fingerprint == fp:
                self._entries.extend(old[self._cursor : i + 1])
                self._cursor = i + 1
                self._next_seq = old[i].seq + 1
                return bool(old[i].result)
            i += 1
        # The run passed this point before the patch existed.
        return False

    def _loop_state(self, effect: LoopState) -> Any:
        state_codec = codec(effect.state_type)
        if self._cursor < self._n_old:
            m = self._match(effect)
            if isinstance(m, LogEntry):
                self._entries.append(m)
                self._next_seq = m.seq + 1
                try:
                    iteration = int(m.result["iteration"])
                    state = state_codec.load(m.result["state"])
                except (pydantic.ValidationError, KeyError, TypeError, ValueError) as err:
                    return self._bad_state(m, effect, err)
                handle = LoopHandle(
                    effect.key, len(self._entries) - 1, m.seq, iteration, state_codec
                )
                return (handle, iteration, state)
            if m is not _LIVE:
                return m
        try:
            args = dump_args(effect)
            data = state_codec.dump(effect.initial, f"durable_loop {effect.key!r}: state")
        except SerializationError as err:
            return err
        seq = self._next_seq
        self._next_seq = seq + 1
        now = _now()
        self._entries.append(
            make_entry(
                seq,
                effect_name(LoopState),
                fingerprint(args),
                args,
                "done",
                {"iteration": 0, "state": data},
                None,
                now,
                now,
            )
        )
        return (
            LoopHandle(effect.key, len(self._entries) - 1, seq, 0, state_codec),
            0,
            effect.initial,
        )

    def _bad_state(self, entry: LogEntry, effect: LoopState, err: Exception) -> Any:
        self._diverged = DivergenceError(
            f"replay diverged at log position {entry.seq}: the recorded state of loop "
            f"{effect.key!r} does not validate as {effect.state_type!r}: {err}",
            position=entry.seq,
            expected=f"loop state {entry.result!r}",
            got=f"state type {effect.state_type!r}",
        )
        return self._diverged

    def _next_iteration(self, effect: NextIteration) -> Any:
        handle: LoopHandle = effect.handle
        if self._cursor < self._n_old:
            # A pruned log never holds entries past the iteration in progress, so the old run
            # did not start another iteration here.
            entry = self._old[self._cursor]
            m = self._mismatch(entry, f"the next iteration of loop {handle.key!r}")
            if m is not _LIVE:
                return m
        try:
            data = handle.codec.dump(effect.state, f"durable_loop {handle.key!r}: state")
        except SerializationError as err:
            return err
        entries = self._entries
        index = handle.index
        if index >= len(entries) or _seq_of(entries[index]) != handle.seq:
            return EffectsError(f"the log lost the state entry of loop {handle.key!r}")
        head = self._entry_at(index)
        # Prune: the completed iteration's entries go, one entry holds the new state.
        self._truncate(index)
        handle.iteration += 1
        seq = self._next_seq
        self._next_seq = seq + 1
        handle.seq = seq
        now = _now()
        entries.append(
            make_entry(
                seq,
                head.effect,
                head.fingerprint,
                head.args,
                "done",
                {"iteration": handle.iteration, "state": data},
                None,
                now,
                now,
            )
        )
        return None
