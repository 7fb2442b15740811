"""Finding runs for operators: by id prefix, and listed newest first since a time (the store
queries of the command line and the runs dashboard). Read-only, one statement each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence

import sqlalchemy as sa

from .._exceptions import ConfigurationError, RunNotFound
from . import _schema as S
from ._log import LogEntry
from ._store import RunRow, Store, decode_log

# Shown in the error of an ambiguous prefix.
_SHOWN = 5


class AmbiguousRunId(ConfigurationError):
    """An id prefix that matches several runs (a usage error on the command line)."""


def _like(prefix: str) -> str:
    # The prefix is matched literally: LIKE's wildcards and the escape character escaped.
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def resolve_id(store: Store, id_or_prefix: str) -> str:
    """The id of the one run whose id is `id_or_prefix` or starts with it.

    An exact id always wins (even when it is also the prefix of longer ids). No match is
    `RunNotFound`; several are `AmbiguousRunId`, naming a few of them."""
    if not id_or_prefix:
        raise RunNotFound("an empty run id matches nothing")
    runs = S.runs
    async with store._reader.connect() as conn:
        exact = await conn.scalar(sa.select(runs.c.id).where(runs.c.id == id_or_prefix))
        if exact is not None:
            return str(exact)
        found = (
            await conn.scalars(
                sa.select(runs.c.id)
                .where(runs.c.id.like(_like(id_or_prefix), escape="\\"))
                .order_by(runs.c.id)
                .limit(_SHOWN + 1)
            )
        ).all()
    if not found:
        raise RunNotFound(f"no run with id {id_or_prefix!r} or an id starting with it")
    if len(found) > 1:
        shown = ", ".join(found[:_SHOWN]) + (", ..." if len(found) > _SHOWN else "")
        raise AmbiguousRunId(
            f"run id prefix {id_or_prefix!r} is ambiguous: it starts {shown}; give more of the id"
        )
    return str(found[0])


async def list_runs(
    store: Store,
    *,
    status: Sequence[str] = (),
    name: str | Collection[str] | None = None,
    since: float | None = None,
    id_prefix: str | None = None,
    limit: int | None = None,
    newest_first: bool = True,
    parked: bool | None = None,
    offset: int = 0,
) -> list[RunRow]:
    """Runs, newest first (by creation, then id) unless `newest_first=False`, optionally by
    status, computation name (one, or any of several), parked, id prefix, and created at or
    after `since` (UTC epoch seconds)."""
    runs = S.runs
    query = sa.select(runs)
    if status:
        query = query.where(runs.c.status.in_(list(status)))
    if isinstance(name, str):
        query = query.where(runs.c.name == name)
    elif name is not None:
        query = query.where(runs.c.name.in_(list(name)))
    if since is not None:
        query = query.where(runs.c.created_at >= since)
    if id_prefix:
        query = query.where(runs.c.id.like(_like(id_prefix), escape="\\"))
    if parked is not None:
        query = query.where(runs.c.parked.is_not(None) if parked else runs.c.parked.is_(None))
    if newest_first:
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc())
    else:
        query = query.order_by(runs.c.created_at, runs.c.id)
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    async with store._reader.connect() as conn:
        return [RunRow.from_row(r) for r in await conn.execute(query)]


async def load_many(
    store: Store, run_ids: Sequence[str]
) -> AsyncIterator[tuple[RunRow, list[LogEntry]]]:
    """Each run's row and log, in the order of `run_ids`, read `_CHUNK` runs per transaction
    (a replay of every run in the store costs a few queries per chunk, not two per run).
    Runs that are gone meanwhile are skipped."""
    runs, log = S.runs, S.log
    for start in range(0, len(run_ids), _CHUNK):
        chunk = list(run_ids[start : start + _CHUNK])
        async with store._reader.begin() as conn:
            rows = {
                r.id: RunRow.from_row(r)
                for r in await conn.execute(sa.select(runs).where(runs.c.id.in_(chunk)))
            }
            texts: dict[str, list[tuple[int, str]]] = {i: [] for i in chunk}
            result = await conn.execute(
                sa.select(log.c.run_id, log.c.seq, log.c.entry)
                .where(log.c.run_id.in_(chunk))
                .order_by(log.c.run_id, log.c.seq)
            )
            for run_id, seq, text in result:
                texts[run_id].append((seq, text))
        for run_id in chunk:
            row = rows.get(run_id)
            if row is not None:
                yield row, decode_log(run_id, texts[run_id])


_CHUNK = 200
