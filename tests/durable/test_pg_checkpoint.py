"""The one-statement checkpoint on PostgreSQL: the guarded UPDATE, the log rows and the NOTIFY
commit together or not at all."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy as sa

from effects import ConflictError
from effects.durable._log import LogEntry, make_entry
from effects.durable._store import NOTIFY_CHANNEL, LogRows, RunRow, Store

pytestmark = pytest.mark.anyio


def row(run_id: str) -> RunRow:
    return RunRow(
        run_id,
        "t.flow",
        1,
        "{}",
        "running",
        None,
        None,
        None,
        None,
        None,
        1,
        "me",
        None,
        False,
        1.0,
        1.0,
    )


def entry(seq: int) -> LogEntry:
    return make_entry(seq, "t.Effect", "fp", {"n": seq}, "done", None)


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only."""
    return "asyncio"


async def test_a_checkpoint_commits_row_log_and_notify_together(pg_database_url: str) -> None:
    store = await Store.open(pg_database_url)
    dsn = sa.make_url(pg_database_url).set(drivername="postgresql").render_as_string(False)
    listener = await asyncpg.connect(dsn)
    heard: list[str] = []
    await listener.add_listener(NOTIFY_CHANNEL, lambda *a: heard.append(a[3]))
    try:
        await store.insert(row("r1"), lease=30)
        rows = LogRows("r1")
        diff = rows.diff([entry(0), entry(1)])
        revision, cancel = await store.checkpoint(
            "r1", revision=1, owner="me", changes={"status": "running"}, log=diff, lease=30
        )
        assert (revision, cancel) == (2, False)
        stored, entries = await store.load("r1")
        assert stored.revision == 2
        assert [e.seq for e in entries] == [0, 1]
        # A loser (a stale revision, or another owner) writes nothing, log rows included.
        for rev, owner in ((1, "me"), (2, "other")):
            with pytest.raises(ConflictError):
                await store.checkpoint(
                    "r1",
                    revision=rev,
                    owner=owner,
                    changes={"status": "done"},
                    log=LogRows("r1", entries).diff([*entries, entry(2)]),
                )
        stored, entries = await store.load("r1")
        assert (stored.revision, stored.status) == (2, "running")
        assert [e.seq for e in entries] == [0, 1]
        await listener.execute("SELECT 1")  # notifications arrive before this answer
        assert heard == ["r1:1", "r1:2"]
    finally:
        await listener.close()
        await store.aclose()
