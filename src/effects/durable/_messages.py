"""Messages to durable runs: the store's side of `DurableRunner.send` and `Receive`.

Exactly once, without a second transaction: a run has consumed as many messages of a topic as
its log records completed `Receive`s of that topic. The next message it gets is the one at that
index (messages of a topic in the order they were sent). Delivering is resuming the run with it
(revision-guarded: of two processes delivering at once, one wins), and the checkpoint that
records the `Receive`'s answer is the one that consumes the message: if the process dies before
that checkpoint, the log does not count it, and the same message is delivered again to the same
`Receive`. Messages sent before the run waits stay in the table, in order, until then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import sqlalchemy as sa

from .._exceptions import (
    ConflictError,
    InvalidInput,
    ResumeError,
    RunNotFound,
    SerializationError,
)
from .._exceptions import TimeoutError as ReceiveTimeout
from .._std.receive import Receive, receive_topic
from . import _schema as S
from ._codec import dumps
from ._log import LogEntry
from ._run import FINAL_STATUSES, Run, RunStatus
from ._serialize import codec, effect_name
from ._store import RunRow, Store

if TYPE_CHECKING:
    from ._runner import DurableRunner

T = TypeVar("T")

RECEIVE = effect_name(Receive)


def consumed(entries: Sequence[LogEntry], topic: str) -> int:
    """How many messages of `topic` the run's log shows consumed."""
    return sum(
        1
        for e in entries
        if e.effect == RECEIVE
        and e.status == "done"
        and e.branch is None
        and e.args.get("topic") == topic
    )


async def put(store: Store, run_id: str, topic: str, value: str) -> int:
    """Store a message for `run_id` (checked to exist and not be finished, in the same
    transaction); returns its id."""
    async with store._write() as conn:
        status = await conn.scalar(sa.select(S.runs.c.status).where(S.runs.c.id == run_id))
        if status is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        if status in FINAL_STATUSES:
            raise ResumeError(f"cannot send to run {run_id!r}: it is {status}")
        result = await conn.execute(
            sa.insert(S.messages).values(
                run_id=run_id, topic=topic, value=value, sent_at=time.time()
            )
        )
        key: Any = result.inserted_primary_key
        return int(key[0])


async def nth(store: Store, run_id: str, topic: str, index: int) -> tuple[int, str] | None:
    """The message at `index` (from 0, in sending order) of `run_id`'s `topic`, if sent."""
    async with store._reader.connect() as conn:
        row = (
            await conn.execute(
                sa.select(S.messages.c.id, S.messages.c.value)
                .where(S.messages.c.run_id == run_id, S.messages.c.topic == topic)
                .order_by(S.messages.c.id)
                .offset(index)
                .limit(1)
            )
        ).first()
    return None if row is None else (int(row[0]), str(row[1]))


async def send(runner: DurableRunner, run_id: str, topic: str, value: Any) -> Run:
    """`DurableRunner.send`: store the message, then deliver what the run waits for."""
    try:
        text = dumps(codec(Any).dump(value, f"message to run {run_id!r} on {topic!r}"))
    except SerializationError as err:
        raise InvalidInput(
            str(err), [{"type": "unstorable", "loc": (), "msg": str(err), "input": value}]
        ) from None
    await put(runner.store, run_id, topic, text)
    return await deliver(runner, run_id)


async def deliver(runner: DurableRunner, run_id: str) -> Run:
    """Resume the run with the next message of the topic its `Receive` waits on, as long as
    one is there (each answer may bring the run to another `Receive`)."""
    store = runner.store
    active = _delivering(runner)
    # One delivery loop per run in this process: a second one waits for the first to end,
    # then looks again (the first may have stopped before a message sent meanwhile).
    while run_id in active:
        await active[run_id].wait()
    done = active[run_id] = anyio.Event()
    try:
        await _deliver(runner, store, run_id)
    finally:
        del active[run_id]
        done.set()
    return await runner.get(run_id)


def _delivering(runner: DurableRunner) -> dict[str, anyio.Event]:
    # The runs a delivery loop of this runner is working on, each with the event set when that
    # loop ends.
    active: dict[str, anyio.Event] | None = runner.__dict__.get("_delivering")
    if active is None:
        active = runner.__dict__["_delivering"] = {}
    return active


def waiting(entries: Sequence[LogEntry]) -> LogEntry | None:
    """The pending `Receive` a suspended run's log ends at, if it does."""
    if entries:
        last = entries[-1]
        if last.effect == RECEIVE and last.status == "pending" and last.branch is None:
            return last
    return None


def deadline(entries: Sequence[LogEntry]) -> float | None:
    """When the pending `Receive`'s timeout is due: `timeout` seconds after the run first
    waited there (the entry's start, kept by every cold resume); None without a timeout."""
    entry = waiting(entries)
    if entry is None:
        return None
    timeout = entry.args.get("timeout")
    if not isinstance(timeout, int | float) or entry.started_at is None:
        return None
    return entry.started_at + float(timeout)


async def _deliver(runner: DurableRunner, store: Store, run_id: str) -> None:
    while True:
        row, entries = await store.load(run_id)
        entry = waiting(entries)
        if row.status != RunStatus.SUSPENDED.value or entry is None:
            break
        topic = str(entry.args.get("topic"))
        message = await nth(store, run_id, topic, consumed(entries, topic))
        if message is None:
            break
        try:
            await runner.resume(run_id, json.loads(message[1]), revision=row.revision)
        except ConflictError:
            # Another task or process answered first (it delivers from then on), or a step
            # is running (it delivers when it reaches its next Receive).
            break


async def query(runner: DurableRunner, run_id: str, fn: Callable[[Mapping[Any, Any]], T]) -> T:
    """`DurableRunner.query`: replay the suspended run in memory to its suspension, hand
    `fn` the handlers' view there (`Suspend.data`), write nothing, drop the replay."""
    step, suspend = await runner._cold(run_id, None, "query")
    try:
        return fn(MappingProxyType(dict(suspend.data)))
    finally:
        runner._drop(step)
        cont, _ = suspend._take(None, validate=False)
        cont.discard()


async def time_out(runner: DurableRunner, row: RunRow) -> None:
    """Raise `TimeoutError` at the `Receive` a suspended run has waited at for too long
    (called by the timer loop when the run's `wake_at` is due). Revision-guarded like an
    answer: a message delivered meanwhile wins, and the timer is not fired twice."""
    try:
        step, suspend = await runner._cold(row.id, row.revision, "time out")
    except (ConflictError, ResumeError, RunNotFound):
        return  # answered, cancelled or gone meanwhile
    try:
        await runner._acquire(step, ("suspended",))
    except BaseException:
        runner._drop(step)
        raise
    cont, _ = suspend._take(None, validate=False)
    topic = receive_topic(suspend.value)
    error = ReceiveTimeout(f"no message on {topic!r} came in time")
    step.resumed = True
    await runner._launch(step, lambda: cont.adrive(None, error), True)
