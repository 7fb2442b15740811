"""Durable queues in the store: `Queue` (a queue's limits), enqueuing, claiming, and
cancelling a queued run.

A queued run is an ordinary row of the runs table with status `queued` and no lease. A worker
*claims* runs in one transaction: it reads how many runs of the queue are executing a step
(status `running` with a live lease, by the database's clock) and how many were claimed in the
rate limit's period, picks the next queued runs (lowest `priority` first, then oldest), and
marks them `running` under its own lease. From then on a claimed run is a durable run like any
other (checkpoints, heartbeat, takeover after its lease expires).

Why the limits hold across processes: on PostgreSQL a claim from a queue with a global limit
first locks the queue's row in `effects_queues` (`SELECT ... FOR UPDATE`), so claims of that
queue are serialized and each one counts the previous one's committed claims (READ COMMITTED
takes a new snapshot per statement); the runs themselves are picked with `FOR UPDATE SKIP
LOCKED`, so claims of unlimited queues never wait for each other. SQLite has no SKIP LOCKED:
its claim is a conditional UPDATE (`... AND status = 'queued'`) inside `BEGIN IMMEDIATE`,
which holds the database's one write lock, so claims are serialized on one host.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .._exceptions import ConfigurationError, ConflictError
from . import _schema as S
from ._store import _ROW_FIELDS, NOTIFY_CHANNEL, RunRow, Store, db_now

QUEUE_CHANNEL: Final = "effects_queues"
"""PostgreSQL channel on which a queue's name is announced when a run is enqueued on it, or
when a run of a limited queue frees its slot: idle workers wake at once instead of polling."""

_MAX_PRIORITY: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue and its limits, as the workers that serve it see them (give every worker the
    same definition: each enforces the limits it was given).

    - `name`: the queue (`DurableRunner.enqueue(..., queue=name)`).
    - `concurrency`: at most this many runs of the queue execute a step at once, across all
      processes (a run counts while it is `running` with a live lease; a run waiting for
      input, sleeping or queued does not). None: no global limit.
    - `worker_concurrency`: at most this many runs of the queue at once in one worker.
    - `rate_limit`: `(limit, period)`: at most `limit` runs of the queue are started
      (claimed) in any `period` seconds, across all processes.
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 255:
            raise ConfigurationError("a queue name is 1 to 255 characters")
        for label, value in (
            ("concurrency", self.concurrency),
            ("worker_concurrency", self.worker_concurrency),
        ):
            if value is not None and value < 1:
                raise ConfigurationError(f"queue {self.name!r}: {label} must be at least 1")
        if self.rate_limit is not None:
            limit, period = self.rate_limit
            if limit < 1 or not period > 0:
                raise ConfigurationError(
                    f"queue {self.name!r}: rate_limit is (starts >= 1, period > 0 seconds)"
                )

    @property
    def limited(self) -> bool:
        """Whether claims must count the queue's active or recent runs (a global limit)."""
        return self.concurrency is not None or self.rate_limit is not None


def check_priority(priority: int) -> int:
    """A priority as stored: an integer in the range of a SQL INTEGER, lower runs first."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(f"priority must be an int, got {priority!r}")
    if not -_MAX_PRIORITY <= priority <= _MAX_PRIORITY:
        raise ConfigurationError(f"priority {priority} is out of range (+-{_MAX_PRIORITY})")
    return priority


async def _notify_queue(store: Store, conn: AsyncConnection, queue: str) -> None:
    if store.dialect == "postgresql":
        await conn.execute(sa.select(sa.func.pg_notify(QUEUE_CHANNEL, queue)))


async def enqueue(store: Store, row: RunRow) -> RunRow:
    """Insert a queued run. If its queue holds a run with the same `dedup_id`, or a run with
    its id exists already, nothing is written and that run's row is returned."""
    values: dict[str, Any] = {f: getattr(row, f) for f in _ROW_FIELDS}
    try:
        async with store._write() as conn:
            await conn.execute(S.runs.insert().values(values))
            await store._notify(conn, row.id, row.revision)
            assert row.queue is not None
            await _notify_queue(store, conn, row.queue)
        return row
    except IntegrityError:
        pass
    async with store._reader.connect() as conn:
        if row.dedup_id is not None:
            found = (
                await conn.execute(
                    sa.select(S.runs).where(
                        S.runs.c.queue == row.queue, S.runs.c.dedup_id == row.dedup_id
                    )
                )
            ).first()
            if found is not None:
                return RunRow.from_row(found)
        found = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == row.id))).first()
    if found is None:  # deleted between the two statements: report the race plainly
        raise ConflictError(f"run {row.id!r} could not be enqueued (a concurrent change)")
    return RunRow.from_row(found)


async def ensure_queue(store: Store, name: str) -> None:
    """Make sure the queue's lock row exists (workers call it before claiming)."""
    async with store._reader.connect() as conn:
        if (
            await conn.execute(sa.select(S.queues.c.name).where(S.queues.c.name == name))
        ).first() is not None:
            return
    try:
        async with store._write() as conn:
            await conn.execute(S.queues.insert().values(name=name, created_at=time.time()))
    except IntegrityError:
        pass  # another worker created it meanwhile


@dataclass(slots=True)
class Claimed:
    """What one claim transaction took: fresh runs (`queued` before) and runs taken over
    (their lease had expired), and how long a rate-limited queue must wait before it can start
    another run (None if it is not rate-limited now)."""

    fresh: list[RunRow]
    taken_over: list[RunRow]
    retry_in: float | None = None


async def claim(
    store: Store,
    queue: Queue,
    *,
    owner: str,
    lease: float,
    want: int,
    names: Collection[str],
    skip: Collection[str] = (),
    stale: bool = True,
) -> Claimed:
    """Claim up to `want` runs of `queue` whose computation is one of `names` (the ones this
    worker can run), within the queue's limits. Runs of the queue whose step has no live lease
    (their worker died) are taken over first (if `stale`), then queued runs by priority and
    age. The claimed rows come back `running` under `owner`'s lease. `skip`: ids not to claim
    (this worker could not run them)."""
    result = Claimed([], [])
    if want <= 0 or not names:
        return result
    pg = store.dialect == "postgresql"
    runs = S.runs.c
    if pg and not queue.limited and not stale:
        result.fresh = await _claim_one_statement(store, queue, owner, lease, want, names, skip)
        return result
    async with store._write() as conn:
        if queue.limited and pg:
            # Serializes the claims of this queue (see the module's docstring).
            await conn.execute(
                sa.select(S.queues.c.name).where(S.queues.c.name == queue.name).with_for_update()
            )
        n = want
        if queue.concurrency is not None:
            active = await conn.scalar(
                sa.select(sa.func.count()).where(
                    runs.queue == queue.name,
                    runs.status == "running",
                    runs.lease_expires >= db_now(),
                )
            )
            n = min(n, queue.concurrency - int(active or 0))
        if n <= 0:
            return result
        # Taken over first: their computations started already (and count for nothing while
        # their lease is expired). Not rate-limited: they are not new starts.
        expired = (
            sa.select(runs.id)
            .where(
                runs.queue == queue.name,
                runs.status == "running",
                runs.parked.is_(None),
                runs.name.in_(list(names)),
                sa.or_(runs.lease_owner.is_(None), runs.lease_expires < db_now()),
            )
            .order_by(runs.priority, runs.created_at, runs.id)
            .limit(n)
        )
        if skip:
            expired = expired.where(runs.id.not_in(list(skip)))
        if pg:
            expired = expired.with_for_update(skip_locked=True)
        ids = list((await conn.execute(expired)).scalars()) if stale else []
        if ids:
            result.taken_over = await _take(
                conn, ids, owner, lease, S.runs.c.status == "running", fresh=False
            )
            n -= len(result.taken_over)
        if queue.rate_limit is not None and n > 0:
            limit, period = queue.rate_limit
            recent = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.min(runs.claimed_at), db_now()).where(
                        runs.queue == queue.name, runs.claimed_at > db_now() - period
                    )
                )
            ).one()
            if recent[0] >= limit:
                n = 0
                # The oldest start in the window leaves it then.
                result.retry_in = max(float(recent[1]) + period - float(recent[2]), 0.0)
            else:
                n = min(n, limit - int(recent[0]))
        if n > 0:
            pick = _queued(queue, n, names, skip)
            if pg:
                pick = pick.with_for_update(skip_locked=True)
            ids = list((await conn.execute(pick)).scalars())
            if ids:
                # The status condition is SQLite's claim guard (PostgreSQL holds the row
                # locks already).
                result.fresh = await _take(
                    conn, ids, owner, lease, S.runs.c.status == "queued", fresh=True
                )
        for row in (*result.taken_over, *result.fresh):
            await store._notify(conn, row.id, row.revision)
    return result


def _queued(
    queue: Queue, n: int, names: Collection[str], skip: Collection[str]
) -> sa.Select[tuple[str]]:
    runs = S.runs.c
    pick = (
        sa.select(runs.id)
        .where(runs.queue == queue.name, runs.status == "queued", runs.name.in_(list(names)))
        .order_by(runs.priority, runs.created_at, runs.id)
        .limit(n)
    )
    if skip:
        pick = pick.where(runs.id.not_in(list(skip)))
    return pick


async def _claim_one_statement(
    store: Store,
    queue: Queue,
    owner: str,
    lease: float,
    want: int,
    names: Collection[str],
    skip: Collection[str],
) -> list[RunRow]:
    """PostgreSQL, a queue without global limits: pick, take and announce in one statement
    (`_claim_text`), committed by itself: one round trip instead of five. On asyncpg it runs
    as compiled text on a kept connection of the store: a worker claims whenever a slot frees
    (about once per run), and a checkout through SQLAlchemy's pool cost more CPU than the
    claim itself."""
    params: dict[str, Any] = {
        "queue": queue.name,
        "names": list(names),
        "want": want,
        "owner": owner,
        "lease": lease,
        "updated_at": time.time(),
        "channel": NOTIFY_CHANNEL,
    }
    if skip:
        params["skip"] = list(skip)
    found: Sequence[Sequence[Any]]
    if store.engine.dialect.driver == "asyncpg":
        sql, order = _claim_asyncpg(bool(skip))
        async with store.pg_driver() as driver:
            found = await driver.fetch(sql, *(params[n] for n in order))
    else:
        async with store.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            found = list(await auto.execute(_claim_text(bool(skip)), params))
    rows = [RunRow(*r[: len(_ROW_FIELDS)]) for r in found]
    rows.sort(key=lambda r: (r.priority, r.created_at, r.id))
    return rows


@functools.cache
def _claim_text(skip: bool) -> sa.TextClause:
    """The claim statement (parameters: queue, names, want, owner, lease, updated_at,
    channel, and skip when `skip`)."""
    runs, columns = S.runs.name, ", ".join(_ROW_FIELDS)
    now = "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)"
    skipped = " AND NOT (id = ANY(CAST(:skip AS varchar[])))" if skip else ""
    # A materialized WITH, not `id IN (subquery)`: PostgreSQL may run such a subquery more
    # than once in a join, and with SKIP LOCKED each run can pick other rows, so more than
    # LIMIT rows would be taken.
    return sa.text(
        f"WITH picked AS MATERIALIZED ("
        f"SELECT id FROM {runs} WHERE queue = :queue AND status = 'queued' "
        f"AND name = ANY(CAST(:names AS varchar[])){skipped} "
        f"ORDER BY priority, created_at, id LIMIT :want FOR UPDATE SKIP LOCKED), "
        f"taken AS (UPDATE {runs} AS r SET status = 'running', revision = r.revision + 1, "
        f"lease_owner = :owner, lease_expires = {now} + CAST(:lease AS double precision), "
        f"claimed_at = {now}, updated_at = CAST(:updated_at AS double precision) FROM picked "
        f"WHERE r.id = picked.id AND r.status = 'queued' "
        f"RETURNING {', '.join('r.' + c for c in _ROW_FIELDS)}) "
        f"SELECT {columns}, pg_notify(:channel, id || ':' || CAST(revision AS TEXT)) FROM taken"
    )


@functools.cache
def _claim_asyncpg(skip: bool) -> tuple[str, tuple[str, ...]]:
    """`_claim_text` compiled for asyncpg (`$n` parameters) and its parameters' order."""
    from sqlalchemy.dialects.postgresql import asyncpg

    compiled = _claim_text(skip).compile(dialect=asyncpg.dialect())  # type: ignore[no-untyped-call]
    return str(compiled), tuple(compiled.positiontup or ())


async def _take(
    conn: AsyncConnection,
    ids: Sequence[str],
    owner: str,
    lease: float,
    guard: sa.ColumnElement[bool],
    *,
    fresh: bool,
) -> list[RunRow]:
    values: dict[str, Any] = {
        "status": "running",
        "revision": S.runs.c.revision + 1,
        "lease_owner": owner,
        "lease_expires": db_now() + lease,
        "updated_at": time.time(),
    }
    if fresh:
        values["claimed_at"] = db_now()
    found = await conn.execute(
        S.runs.update().where(S.runs.c.id.in_(list(ids)), guard).values(values).returning(S.runs)
    )
    rows = [RunRow.from_row(r) for r in found]
    rows.sort(key=lambda r: (r.priority, r.created_at, r.id))
    return rows


async def unclaim(store: Store, row: RunRow, *, owner: str) -> bool:
    """Put a freshly claimed run back on its queue (this worker could not begin it: a
    handler failed to install). False if it moved meanwhile."""
    async with store._write() as conn:
        done = await conn.execute(
            S.runs.update()
            .where(
                S.runs.c.id == row.id,
                S.runs.c.revision == row.revision,
                S.runs.c.lease_owner == owner,
            )
            .values(
                status="queued",
                revision=row.revision + 1,
                lease_owner=None,
                lease_expires=None,
                claimed_at=None,
                updated_at=time.time(),
            )
        )
        if done.rowcount != 1:
            return False
        await store._notify(conn, row.id, row.revision + 1)
        assert row.queue is not None
        await _notify_queue(store, conn, row.queue)
    return True


async def slot_freed(store: Store, queue: str) -> None:
    """Tell the workers of a limited queue that one of its runs stopped executing."""
    if store.dialect == "postgresql":
        async with store._write() as conn:
            await _notify_queue(store, conn, queue)


async def cancel_queued(store: Store, run_id: str, result: str) -> RunRow | None:
    """End a queued run `cancelled` without running it; None if it is no longer queued (a
    worker claimed it meanwhile: cancel it as a running run)."""
    async with store._write() as conn:
        found = (
            await conn.execute(
                S.runs.update()
                .where(S.runs.c.id == run_id, S.runs.c.status == "queued")
                .values(
                    status="cancelled",
                    result=result,
                    revision=S.runs.c.revision + 1,
                    updated_at=time.time(),
                )
                .returning(S.runs)
            )
        ).first()
        if found is None:
            return None
        row = RunRow.from_row(found)
        await store._notify(conn, row.id, row.revision)
    return row
