"""`DurableRunner.fork`: a new run that shares the beginning of another run's log, then goes
another way (multi-shot continuation by replay).

The new run's log is the source's entries before step `at`. With an answer, step `at` must be
the source's `Yield` there: the new run is that very prompt answered differently. Without one,
the new run continues live from step `at` (performing that step's effect again, for real).

Crash safety: the new run and its log are written in one transaction, as a `running` run that
this runner leases, with the answer stored for recovery (as `resume` stores it). A kill -9
before the commit leaves nothing; after it, `recover()` finishes the fork like any run cut off
mid-step (replays the copied log to the prompt and gives the stored answer). The source run is
only read.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Final

import anyio
from sqlalchemy.exc import IntegrityError

from .._exceptions import (
    ConfigurationError,
    ConflictError,
    InvalidInput,
    LogError,
    SerializationError,
)
from .._outcome import Suspend, Throw, validate_input
from .._std.control import Yield
from .._std.world import uuid7
from . import _schema as S
from ._codec import dumps, signature
from ._log import LogEntry, make_entry, make_log
from ._run import Run, RunStatus
from ._serialize import codec, effect_name
from ._store import LogRows, RunRow, Store, db_now

if TYPE_CHECKING:
    from ._runner import DurableRunner


class _NotGiven:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final[Any] = _NotGiven()
"""The default of `fork(answer=...)`: no answer (`None` is an answer)."""

_YIELD = effect_name(Yield)
_ROW_FIELDS = tuple(f.name for f in fields(RunRow))


def fork_entries(run_id: str, entries: list[LogEntry], at: int, answered: bool) -> list[LogEntry]:
    """The new run's log: the entries before step `at`, plus (with an answer) the source's
    `Yield` at `at` as pending. Raises `ConfigurationError` saying why `at` is not a step one
    can fork at."""
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise ConfigurationError(f"fork at={at!r}: a step number (0 or more) is needed")
    steps = {e.seq: e for e in entries}
    last = entries[-1].seq if entries else -1
    prefix = [e for e in entries if e.seq < at]
    if answered:
        target = steps.get(at)
        if target is None:
            raise ConfigurationError(
                f"cannot fork run {run_id!r} at step {at} with an answer: its log has no step "
                f"{at} ({_steps(entries)})"
            )
        if target.effect != _YIELD:
            raise ConfigurationError(
                f"cannot fork run {run_id!r} at step {at} with an answer: step {at} is "
                f"{target.effect}, not a Yield (only a prompt takes an answer)"
            )
        # The prompt as it was asked: pending, as the logger writes a Yield that waits.
        pending = make_entry(
            target.seq,
            target.effect,
            target.fingerprint,
            target.args,
            "pending",
            started_at=target.started_at,
        )
        return [*prefix, pending]
    if at > last + 1 or (at <= last and at not in steps):
        raise ConfigurationError(
            f"cannot fork run {run_id!r} at step {at}: its log has no step {at} "
            f"({_steps(entries)}; fork at {last + 1} to continue after its last step)"
        )
    if prefix and prefix[-1].status == "pending":
        raise ConfigurationError(
            f"cannot fork run {run_id!r} at step {at}: step {prefix[-1].seq} has no result "
            f"yet ({prefix[-1].effect} is pending); fork at step {prefix[-1].seq} or earlier"
        )
    return prefix


def _steps(entries: list[LogEntry]) -> str:
    if not entries:
        return "the log is empty"
    return f"steps {entries[0].seq} to {entries[-1].seq}"


async def insert_forked(
    store: Store, row: RunRow, texts: list[tuple[int, str]], lease: float
) -> None:
    """The forked run's row (leased for `lease` seconds by the database's clock) and its log
    rows, in one transaction: a crash before the commit leaves no trace of it."""
    values: dict[str, Any] = {f: getattr(row, f) for f in _ROW_FIELDS}
    values["lease_expires"] = db_now() + lease
    try:
        async with store._write() as conn:
            await conn.execute(S.runs.insert().values(values))
            if texts:
                await conn.execute(
                    S.log.insert(), [{"run_id": row.id, "seq": s, "entry": t} for s, t in texts]
                )
            await store._notify(conn, row.id, row.revision)
    except IntegrityError:
        raise ConflictError(f"a run with id {row.id!r} already exists") from None


async def fork(
    runner: DurableRunner,
    run_id: str,
    at: int,
    answer: Any,
    new_id: str | None,
    wait: bool,
) -> Run:
    """See `DurableRunner.fork`."""
    from ._runner import _registered, _replay_error, _Step

    store = runner.store
    source, entries = await store.load(run_id)
    answered = answer is not NOT_GIVEN
    log_entries = fork_entries(run_id, entries, at, answered)
    function = _registered(source)
    sig = signature(function)
    new_id = new_id if new_id is not None else str(uuid7())
    if new_id in runner._steps:
        raise ConflictError(f"run {new_id!r} is running a step in this process")
    comp = sig.load_args(new_id, source.args)
    row = RunRow.new(
        new_id,
        source.name,
        source.version,
        source.args,
        status=RunStatus.RUNNING.value,
        lease_owner=runner.owner,  # the expiry: the database's now + lease, written with the row
    )
    rows = LogRows(new_id)
    texts = [(e.seq, rows.encode(e)) for e in log_entries]
    # The rows as they will be stored: a replay that writes beyond them went live (`_checkpoint`
    # refuses that while the step holds no lease).
    step = _Step(row, LogRows(new_id, log_entries), sig)
    # Reserved before the first await that may let another task fork to the same id.
    runner._steps[new_id] = step
    try:
        interp = runner._interpreter(
            step, comp, function, make_log(source.name, source.version, new_id, log_entries)
        )
        if answered:
            # Replayed (read-only, not leased: anything live fails the step) to the prompt, to
            # validate the answer against its input type before anything is written.
            outcome = await interp.adrive(None, None)
            if step.failure is not None:
                raise step.failure
            if type(outcome) is Throw:
                raise _replay_error(outcome.error)
            if type(outcome) is not Suspend:
                raise LogError(
                    f"run {run_id!r}: replaying its log to step {at} did not reach the prompt "
                    f"there (the replay ended with {outcome!r})"
                )
            suspend = outcome
            value = validate_input(suspend.input, answer)
            answer_codec = codec(Any if suspend.input is None else suspend.input)
            try:
                row.answer = dumps(answer_codec.dump(value, f"fork of run {run_id!r}: the answer"))
            except SerializationError as err:
                raise InvalidInput(
                    str(err), [{"type": "unstorable", "loc": (), "msg": str(err), "input": answer}]
                ) from None
        with anyio.CancelScope(shield=True):
            await insert_forked(store, row, texts, runner.lease)
    except BaseException:
        runner._drop(step)
        raise
    step.leased = True
    runner._publish(row)
    if answered:
        step.resumed = True
        return await runner._launch(step, lambda: suspend.aresume(value), wait)
    return await runner._launch(step, lambda: interp.adrive(None, None), wait)
