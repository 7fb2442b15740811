"""The effect logger's fast path: one recording function per effect type, generated once.

An effect answered by an in-memory handler with a plain result is kept as a `Recorded` tuple
until the log is read (see `_log.build_recorded`). The function recording it is generated per
effect type, as `Effect` generates its `__init__`: the type's argument slots are read and
checked inline. When every argument is a JSON scalar (an int, a bool, None, ASCII text, a
finite float), the tuple keeps the value of a lone argument, or else the effect itself, in
place of the arguments dict: the slots are read-only and those values immutable, so the dict
built from them when the log is read is the one that would have been built now (and a run
holds one object per entry, not two, until then). Any other argument is dumped (and checked)
at once, so an argument that cannot be stored still fails at its effect.

The handler is called directly and answers in memory, so the entry is timed once, when the
handler returned: its `started_at` and `ended_at` are that one moment (two clock reads cost
more than the rest of recording; `runs show` shows such effects as taking 0ms either way). A
handler that hands back a computation or an awaitable has the computation's or the await's
end recorded as `ended_at`, as effects run outside the logger (Yield, Call, external handlers,
sleeps) are timed at both ends.

Per logger installation, `recorder` binds a type's function to the logger, the original
handler function and its home: a closure, no code generated per run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._exceptions import Cancellation
from .._handler import HandlerFn
from ._serialize import _RAW, EffectInfo, _arg_fields, _dump_slow, scalar_checks

if TYPE_CHECKING:
    from ._logger import EffectLogger


def recorder(
    logger: EffectLogger,
    info: EffectInfo,
    effect_type: type,
    fn: HandlerFn,
    home: Any,
    entries: list[Any],
    replays: bool,
) -> HandlerFn:
    """The function recording `effect_type`'s effects answered by `fn` (whose home is `home`,
    None for a pure handler) into `entries`, for `logger`. `replays`: whether the logger was
    given a log (the function of one that was not never checks for replay)."""
    factories = info.factory
    if factories is None:
        factories = info.factory = (
            _make_factory(effect_type, info, False),
            _make_factory(effect_type, info, True),
        )
    function: HandlerFn = factories[replays](logger, fn, home, entries)
    return function


def _make_factory(effect_type: type, info: EffectInfo, replays: bool) -> Any:
    fields = _arg_fields(effect_type)
    reads, checks = scalar_checks(fields, " " * 8)
    # What the entry keeps in place of the arguments (see `EffectInfo.recorded_args`): a lone
    # argument's value, else the effect.
    kept = "v0" if len(fields) == 1 else "effect"
    raw = []
    if len(info.raw) == 1:
        raw.append("rtype is RAW_ONE")  # the declared type itself (`int` for `Effect[int]`)
    elif info.raw:
        raw.append("rtype in RAW")
    if info.text:
        raw.append("(rtype is str and result.isascii())")
    plain = " or ".join(raw) or "False"
    # Only a logger given a log replays: the others skip the check.
    replay = (
        "        if self._cursor < self._n_old:\n            return self._replayed(effect)\n"
        if replays
        else ""
    )
    # A subclass answered by this type's entry (the interpreter resolves it through the MRO)
    # has fields and a name of its own: `_record_other` records it.
    source = f"""\
def factory(self, fn, home, entries):
    def recorded(effect):
        if type(effect) is not T:
            return self._record_other(effect)
{replay}{reads}        args = {kept} if {checks} else _dump_slow(effect)
        seq = self._next_seq
        self._next_seq = seq + 1
        try:
            result = fn(effect)
        except Exception as err:
            self._record_error(effect, seq, args, err, now())
            raise
        except Cancellation as cancel:  # a handler's own cancelled sub-computation
            self._record_cancelled(effect, seq, args, cancel.reason, now())
            raise
        # One clock read: the handler answered in memory, at once (see the module's doc).
        at = now()
        rtype = type(result)
        if {plain}:
            entries.append((seq, INFO, args, result, at, at))
            return result
        return self._settle_result(effect, INFO, seq, args, result, at, at, home)
    return recorded
"""
    env: dict[str, Any] = {
        "T": effect_type,
        "INFO": info,
        "RAW": info.raw,
        "RAW_ONE": next(iter(info.raw), None),
        "_RAW": _RAW,
        "_dump_slow": _dump_slow,
        # Wall-clock UTC epoch seconds: the entries' `started_at` and `ended_at`.
        "now": time.time,
        "Cancellation": Cancellation,
    }
    exec(source, env)
    return env["factory"]
