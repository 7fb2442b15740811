"""`DurableRunner.purge`: removing old runs from the store (retention).

A run is purged with everything the store keeps of it — its row (with its queue place, prompt,
answer, result), its log rows and its task tree (with its output) — in batches of runs, one
transaction per batch. Each batch re-checks, under the write lock, that every run still matches
(status, age, no live lease), so a run that moved on since it was selected (resumed, woken,
claimed) is kept; a kill -9 leaves every batch either fully purged or untouched.

Only finished runs (done, failed, cancelled) are purged unless other statuses are asked for by
name; a run whose step holds a live lease (a process executes it, here or elsewhere) is never
purged, whatever its status.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import sqlalchemy as sa

from .._exceptions import ConfigurationError
from . import _schema as S
from ._run import FINAL_STATUSES, RunStatus
from ._store import NOTIFY_CHANNEL, Store, db_now

if TYPE_CHECKING:
    from ._runner import DurableRunner


def purge_statuses(status: RunStatus | str | Iterable[RunStatus | str] | None) -> list[str]:
    """The statuses to purge: the final ones by default, else exactly those given."""
    if status is None:
        return sorted(s.value for s in FINAL_STATUSES)
    items = [status] if isinstance(status, str) else list(status)
    if not items:
        raise ConfigurationError("purge: status=[] matches no run; omit it for finished runs")
    return sorted({RunStatus(s).value for s in items})


def cutoff(older_than: float | timedelta, now: float | None = None) -> float:
    """The `updated_at` (epoch seconds) before which a run is old enough."""
    seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ConfigurationError(f"purge: older_than={older_than!r} is not a duration >= 0")
    return (time.time() if now is None else now) - float(seconds)


def _matching(statuses: list[str], before: float) -> sa.ColumnElement[bool]:
    runs = S.runs
    return sa.and_(
        runs.c.status.in_(statuses),
        runs.c.updated_at < before,
        # Not while a process executes a step of it (its lease is live by the database's
        # clock): that process would lose the run under its feet.
        sa.or_(runs.c.lease_owner.is_(None), runs.c.lease_expires < db_now()),
    )


async def count(store: Store, statuses: list[str], before: float) -> int:
    """How many runs `purge` would remove now."""
    query = sa.select(sa.func.count()).select_from(S.runs).where(_matching(statuses, before))
    async with store._reader.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def purge_batch(store: Store, statuses: list[str], before: float, limit: int) -> list[str]:
    """Remove up to `limit` matching runs (oldest first) and all their rows, in one
    transaction; returns their ids."""
    runs = S.runs
    select = (
        sa.select(runs.c.id)
        .where(_matching(statuses, before))
        .order_by(runs.c.updated_at, runs.c.id)
        .limit(limit)
    )
    if store.dialect == "postgresql":
        # Locks the rows: a concurrent resume or claim either committed first (then the row
        # no longer matches and is skipped) or waits and finds no row.
        select = select.with_for_update(skip_locked=True)
    async with store._write() as conn:
        ids = [str(i) for i in (await conn.scalars(select)).all()]
        if ids:
            # Children first (their foreign keys cascade on PostgreSQL; SQLite does not
            # enforce them unless told to).
            await conn.execute(S.log.delete().where(S.log.c.run_id.in_(ids)))
            await conn.execute(S.task_trees.delete().where(S.task_trees.c.run_id.in_(ids)))
            await conn.execute(runs.delete().where(runs.c.id.in_(ids)))
            if store.dialect == "postgresql":
                # Followers in other processes re-read each run, find it gone and stop; the
                # notifications are delivered only if the batch commits. One statement.
                await conn.execute(
                    sa.text(
                        "SELECT pg_notify(:channel, id || :gone) FROM unnest(:ids) AS id"
                    ).bindparams(sa.bindparam("ids", type_=sa.ARRAY(sa.Text))),
                    # `run:0!`: a change to re-read whatever revision a follower holds.
                    {"channel": NOTIFY_CHANNEL, "ids": ids, "gone": ":0!"},
                )
    return ids


async def purge(
    runner: DurableRunner,
    older_than: float | timedelta,
    status: RunStatus | str | Iterable[RunStatus | str] | None,
    batch: int,
    dry_run: bool,
) -> int:
    """See `DurableRunner.purge`."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"purge: batch={batch!r} must be a whole number >= 1")
    statuses = purge_statuses(status)
    before = cutoff(older_than)
    store = runner.store
    if dry_run:
        return await count(store, statuses, before)
    total = 0
    while True:
        with anyio.CancelScope(shield=True):  # a batch is committed or not, never abandoned
            ids = await purge_batch(store, statuses, before, batch)
        total += len(ids)
        for run_id in ids:
            # Followers of a purged run in this process stop (nothing more will change).
            for sub in list(runner._subscribers.get(run_id, ())):
                sub._close()
        if len(ids) < batch:
            return total
