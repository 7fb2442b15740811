"""The effect log: `Log` and `LogEntry`, pydantic models with an exact JSON round trip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NotRequired

import pydantic
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict

from .._exceptions import LogError

if TYPE_CHECKING:
    from typing import Self

Status = Literal["done", "error", "pending"]


class ErrorInfo(TypedDict):
    """A recorded exception: its type (`module.qualname`) and `str(error)`; `args` when they are
    plain JSON, so the replayed exception is rebuilt exactly."""

    type: str
    message: str
    args: NotRequired[list[Any]]


class LogEntry(BaseModel):
    """One recorded effect.

    - `seq`: absolute position in the run, strictly increasing along the log (pruned loop
      iterations leave gaps).
    - `effect`: the effect type as `module.qualname`.
    - `fingerprint`: a short hash of `args`; replay compares it to detect divergence.
    - `args`: the effect's arguments in their canonical JSON form (sets sorted, callables by
      what they do: see `effects.durable._identity`).
    - `status`: `done` (with `result`), `error` (with `error`) or `pending` (started, no answer
      yet: the `Yield` a run is waiting at, or an at-most-once effect's write-ahead record).
    - `started_at`, `ended_at`: when the effect was dispatched and when it completed, as UTC
      epoch seconds (`time.time()`); `ended_at` is None while pending. Both are None in
      entries written before they were recorded. An effect answered in memory at once (a plain
      handler's plain result) is timed once: both hold the moment its handler returned. A
      replayed entry keeps the times of the run that recorded it.
    - `branch`: the `Parallel` branch that performed the effect (`"{position}.{index}"`, the
      log position where the Parallel started and the branch's index; `"a/b"` for branch `b`
      of a Parallel inside branch `a`), None for the run's own effects. Replay hands each
      branch its own entries, in order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    effect: str
    fingerprint: str
    args: dict[str, Any]
    status: Status
    result: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    ended_at: float | None = None
    branch: str | None = None

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Self:
        problem = _entry_problem(self)
        if problem:
            raise ValueError(problem)
        return self


class Log(BaseModel):
    """The record of one run: which computation (name and version), which run, and its entries.

    `Log.model_validate_json(text)` rejects corrupted or malformed logs with `LogError`.
    A `Log` handed to `EffectLogger` is copied, never mutated.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    computation: str | None = None
    version: int | None = None
    run_id: str | None = None
    entries: list[LogEntry] = pydantic.Field(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> Self:
        problem = _log_problem(self.entries)
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """Parse a log from JSON; corrupted or malformed input raises `LogError`."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except pydantic.ValidationError as err:
            raise LogError(f"not a valid effect log: {_summary(err)}") from err

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Build a log from Python data; malformed input raises `LogError`."""
        try:
            return super().model_validate(obj, **kwargs)
        except pydantic.ValidationError as err:
            raise LogError(f"not a valid effect log: {_summary(err)}") from err


def _summary(err: pydantic.ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _entry_problem(e: LogEntry) -> str | None:
    if e.status == "done" and e.error is not None:
        return f"entry {e.seq}: a done entry carries an error"
    if e.status == "error" and e.error is None:
        return f"entry {e.seq}: an error entry without its error"
    if e.status == "pending" and (e.error is not None or e.result is not None):
        return f"entry {e.seq}: a pending entry carries a result"
    return None


def _log_problem(entries: Sequence[LogEntry]) -> str | None:
    last = -1
    n = len(entries)
    for i, e in enumerate(entries):
        if e.seq <= last:
            return f"entry seq {e.seq} after seq {last}: positions must strictly increase"
        last = e.seq
        if e.status == "pending" and i != n - 1:
            return f"entry {e.seq} is pending but is not the last entry"
    return None


def check_log(log: Any) -> Log:
    """Check a log handed to the logger (it may have been built without validation, or its
    entry list changed since)."""
    if not isinstance(log, Log):
        raise LogError(f"expected a Log, got {type(log).__name__}")
    entries = log.entries
    last = -1
    n = len(entries)
    # One pass with the common case inline: a cold resume checks every entry of the log.
    for i, e in enumerate(entries):
        if type(e) is not LogEntry and not isinstance(e, LogEntry):
            problem: str | None = f"expected LogEntry items, got {type(e).__name__}"
            break
        seq = e.seq
        if seq <= last:
            problem = f"entry seq {seq} after seq {last}: positions must strictly increase"
            break
        last = seq
        status = e.status
        if status == "done" and e.error is None:
            continue
        if status == "pending" and i != n - 1:
            problem = f"entry {seq} is pending but is not the last entry"
            break
        problem = _entry_problem(e)
        if problem:
            break
    else:
        problem = None
    if problem:
        raise LogError(f"not a valid effect log: {problem}")
    return log


# The logger builds entries on the hot path from values it made itself, so it skips pydantic's
# validation (and `model_construct`, which costs more than validating): the instance is
# assembled the way pydantic stores it, through the slot descriptors (a frozen model refuses
# `setattr`).
_new = object.__new__
_slots = BaseModel.__dict__
_set_dict = _slots["__dict__"].__set__
_set_fields = _slots["__pydantic_fields_set__"].__set__
_set_extra = _slots["__pydantic_extra__"].__set__
_set_private = _slots["__pydantic_private__"].__set__
_ENTRY_FIELDS = frozenset(LogEntry.model_fields)
_LOG_FIELDS = frozenset(Log.model_fields)


def make_entry(
    seq: int,
    effect: str,
    fingerprint: str,
    args: dict[str, Any],
    status: Status,
    result: Any = None,
    error: ErrorInfo | None = None,
    started_at: float | None = None,
    ended_at: float | None = None,
    branch: str | None = None,
) -> LogEntry:
    """A `LogEntry` from trusted values, without validation."""
    e = _new(LogEntry)
    _set_dict(
        e,
        {
            "seq": seq,
            "effect": effect,
            "fingerprint": fingerprint,
            "args": args,
            "status": status,
            "result": result,
            "error": error,
            "started_at": started_at,
            "ended_at": ended_at,
            "branch": branch,
        },
    )
    _set_fields(e, _ENTRY_FIELDS)
    _set_extra(e, None)
    _set_private(e, None)
    return e


def make_log(
    computation: str | None, version: int | None, run_id: str | None, entries: list[LogEntry]
) -> Log:
    """A `Log` from trusted values, without validation."""
    log = _new(Log)
    _set_dict(
        log,
        {"computation": computation, "version": version, "run_id": run_id, "entries": entries},
    )
    _set_fields(log, _LOG_FIELDS)
    _set_extra(log, None)
    _set_private(log, None)
    return log


# An effect completed with a plain result, as the logger keeps it until the log is read
# (building a `LogEntry` and its fingerprint per effect cost more than the rest of recording):
# (seq, what the effect type is (`.name`, `.recorded_args(kept)`), the arguments or what
# stands for them (see `_recorder`), result as JSON, started_at, ended_at).
Recorded = tuple[int, Any, Any, Any, float, float]


def build_recorded(
    entries: list[Any], start: int, fingerprint: Callable[[dict[str, Any]], str]
) -> None:
    """Replace the `Recorded` tuples in `entries[start:]` by their `LogEntry`s (`done`), in
    place; `fingerprint` computes each one's fingerprint from its args."""
    # `make_entry` inlined: this runs once per recorded effect.
    new, entry_type, set_dict, set_fields, set_extra, set_private = (
        _new,
        LogEntry,
        _set_dict,
        _set_fields,
        _set_extra,
        _set_private,
    )
    fields = _ENTRY_FIELDS
    for i in range(start, len(entries)):
        r = entries[i]
        if type(r) is not tuple:
            continue
        seq, info, kept, result, started_at, ended_at = r
        args = info.recorded_args(kept)
        e = new(entry_type)
        set_dict(
            e,
            {
                "seq": seq,
                "effect": info.name,
                "fingerprint": fingerprint(args),
                "args": args,
                "status": "done",
                "result": result,
                "error": None,
                "started_at": started_at,
                "ended_at": ended_at,
                "branch": None,
            },
        )
        set_fields(e, fields)
        set_extra(e, None)
        set_private(e, None)
        entries[i] = e


def moved(e: LogEntry, seq: int, branch: str | None) -> LogEntry:
    """`e` at another position and branch (how a `Parallel` branch's entries join a log)."""
    return make_entry(
        seq,
        e.effect,
        e.fingerprint,
        e.args,
        e.status,
        e.result,
        e.error,
        e.started_at,
        e.ended_at,
        branch,
    )
