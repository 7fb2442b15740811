"""The SQL store: schema creation and migration, guarded writes, the log's stored form."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from effects import ConfigurationError, ConflictError, LogError, RunNotFound
from effects.durable import _schema
from effects.durable._log import LogEntry, make_entry
from effects.durable._store import LogRows, RunRow, Store, create_engine, decode_log

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite, asyncpg) run on asyncio only."""
    return "asyncio"


def url(tmp_path: Path, name: str = "runs.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


def row(run_id: str = "r1", **changes: object) -> RunRow:
    values: dict[str, object] = {
        "id": run_id,
        "name": "t.flow",
        "version": 1,
        "args": "{}",
        "status": "running",
        "prompt": None,
        "input_schema": None,
        "answer": None,
        "result": None,
        "error": None,
        "revision": 1,
        "lease_owner": "me",
        "lease_expires": 1e12,
        "cancel_requested": False,
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    values.update(changes)
    return RunRow(**values)  # type: ignore[arg-type]


def entry(seq: int, status: str = "done", result: object = None) -> LogEntry:
    return make_entry(seq, "t.Effect", "fp", {"n": seq}, status, result)  # type: ignore[arg-type]


async def open_store(tmp_path: Path, name: str = "runs.db") -> Store:
    return await Store.open(url(tmp_path, name))


async def test_a_fresh_database_gets_the_latest_schema(tmp_path: Path) -> None:
    """Opening creates the tables and records the schema version; reopening changes nothing."""
    store = await open_store(tmp_path)
    try:
        assert await store.schema_version() == _schema.SCHEMA_VERSION
        assert await store.migrate() == _schema.SCHEMA_VERSION  # already current
    finally:
        await store.aclose()
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = db.execute("SELECT version FROM effects_schema_version").fetchall()
    assert {"effects_runs", "effects_log", "effects_schema_version"} <= tables
    assert versions == [(_schema.SCHEMA_VERSION,)]


async def test_sqlite_runs_in_wal_mode_with_url_options(tmp_path: Path) -> None:
    """WAL and synchronous=NORMAL by default; the URL query may change them."""
    for query, expected in (("", (1, "wal")), ("?synchronous=full&busy_timeout=500", (2, "wal"))):
        store = await Store.open(url(tmp_path) + query)
        try:
            async with store.engine.connect() as conn:
                sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
        finally:
            await store.aclose()
        assert (sync, mode) == expected


async def test_bare_urls_get_the_async_drivers(tmp_path: Path) -> None:
    """`sqlite:///` means aiosqlite, `postgresql://` asyncpg."""
    store = await Store.open(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        assert store.engine.dialect.driver == "aiosqlite"
    finally:
        await store.aclose()
    engine = create_engine("postgresql://user@127.0.0.1/db")
    try:
        assert engine.dialect.driver == "asyncpg"
    finally:
        await engine.dispose()


async def test_bad_urls_and_options_are_configuration_errors(tmp_path: Path) -> None:
    """Unsupported databases and unknown option values fail clearly."""
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        await Store.open("mysql+aiomysql://u@h/db")
    with pytest.raises(ConfigurationError, match="synchronous"):
        await Store.open(url(tmp_path) + "?synchronous=sometimes")


async def test_concurrent_first_opens_create_the_schema_once(tmp_path: Path) -> None:
    """Stores opening the same fresh file at once all succeed; one version row. (Switching a
    fresh file to WAL is refused at once, busy timeout or not, while another connection has it
    open: under CPU load about one round in 30 failed with "database is locked" before the
    switch was retried.)
    """
    for round_ in range(20):
        name = f"runs{round_}.db"
        stores: list[Store] = []

        async def open_one(name: str = name, stores: list[Store] = stores) -> None:
            stores.append(await open_store(tmp_path, name))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(open_one)
        for store in stores:
            await store.aclose()
        with closing(sqlite3.connect(tmp_path / name)) as db:
            assert db.execute("SELECT count(*) FROM effects_schema_version").fetchone() == (1,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database migrated by a newer library version is not touched."""
    await (await open_store(tmp_path)).aclose()
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("INSERT INTO effects_schema_version VALUES (99, 'future', 0)")
    with pytest.raises(ConfigurationError, match="version 99, newer"):
        await open_store(tmp_path)


async def test_foreign_tables_are_refused(tmp_path: Path) -> None:
    """A runs table that this library did not create is not adopted."""
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("CREATE TABLE effects_runs (id TEXT)")
    with pytest.raises(ConfigurationError, match="not created by this library"):
        await open_store(tmp_path)


async def test_migration_steps_apply_in_order_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the current version gets the later steps, in order, each recorded once."""
    store = await open_store(tmp_path)
    await store.aclose()
    applied: list[int] = []
    current = _schema.SCHEMA_VERSION
    first, second = current + 1, current + 2

    def step(version: int) -> _schema.Migration:
        def apply(conn: sa.Connection) -> None:
            applied.append(version)
            conn.exec_driver_sql(f"ALTER TABLE effects_runs ADD COLUMN extra{version} TEXT")

        return _schema.Migration(version, f"add extra{version}", apply)

    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, step(first), step(second)))
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", second)
    store = await open_store(tmp_path)
    try:
        assert await store.schema_version() == second
        assert await store.migrate() == second
    finally:
        await store.aclose()
    assert applied == [first, second]
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(effects_runs)")}
        descriptions = db.execute(
            "SELECT version, description FROM effects_schema_version ORDER BY version"
        ).fetchall()
    assert {f"extra{first}", f"extra{second}"} <= columns
    assert descriptions == [
        (current, "created"),
        (first, f"add extra{first}"),
        (second, f"add extra{second}"),
    ]


async def test_a_database_from_before_owners_gets_the_owners_table(tmp_path: Path) -> None:
    """A store stamped with the version before the owners table is migrated on open."""
    [owners_step] = [m for m in _schema.MIGRATIONS if m.description.startswith("owners")]
    path = tmp_path / "runs.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        for table in (_schema.runs, _schema.log, _schema.schema_version):
            table.create(conn)
        conn.execute(
            _schema.schema_version.insert(),
            [{"version": owners_step.version - 1, "description": "created", "applied_at": 0.0}],
        )
    engine.dispose()
    store = await open_store(tmp_path)
    try:
        assert await store.schema_version() == _schema.SCHEMA_VERSION
        assert (
            await store.claim_owner("o", "t", host="h", pid=1, lease=30, gone=lambda _: False)
            is None
        )
        holder = await store.owner_holder("o")
        assert holder is not None
        assert (holder.token, holder.host, holder.pid) == ("t", "h", 1)
        assert 0 < holder.expires_in <= 30
    finally:
        await store.aclose()


async def test_insert_get_and_duplicate_ids(tmp_path: Path) -> None:
    """A run row round-trips; a second run with the same id is a conflict."""
    store = await open_store(tmp_path)
    try:
        await store.insert(row())
        assert await store.get("r1") == row()
        with pytest.raises(ConflictError, match="already exists"):
            await store.insert(row())
        with pytest.raises(RunNotFound):
            await store.get("nope")
        with pytest.raises(RunNotFound):
            await store.load("nope")
    finally:
        await store.aclose()


async def test_checkpoint_writes_only_the_log_difference(tmp_path: Path) -> None:
    """New entries are inserted, a settled pending entry updated, pruned entries deleted."""
    store = await open_store(tmp_path)
    try:
        await store.insert(row())
        rows = LogRows("r1")
        log = [entry(0), entry(1), entry(2, "pending")]
        diff = rows.diff(log)
        assert [s for s, _ in diff.inserts] == [0, 1, 2]
        revision, cancel = await store.checkpoint(
            "r1", revision=1, owner="me", changes={}, log=diff
        )
        assert (revision, cancel) == (2, False)
        assert not rows.diff(log)  # nothing new

        log = [entry(0), entry(1), entry(2, "done", 7), entry(3)]
        diff = rows.diff(log)
        assert ([s for s, _ in diff.inserts], [s for s, _ in diff.updates]) == ([3], [2])
        await store.checkpoint("r1", revision=2, owner="me", changes={}, log=diff)

        pruned = [entry(0), entry(5)]  # a loop dropped 1..3 and recorded its state at 5
        diff = rows.diff(pruned)
        assert (diff.deletes, [s for s, _ in diff.inserts]) == ([1, 2, 3], [5])
        await store.checkpoint("r1", revision=3, owner="me", changes={}, log=diff)

        stored_row, stored = await store.load("r1")
        assert stored == pruned
        assert stored_row.revision == 4
        assert not LogRows("r1", stored).diff(pruned)
    finally:
        await store.aclose()


async def test_checkpoints_are_guarded_by_revision_and_lease(tmp_path: Path) -> None:
    """A stale revision or another lease owner is a conflict, and nothing is written."""
    store = await open_store(tmp_path)
    try:
        await store.insert(row())
        rows = LogRows("r1")
        with pytest.raises(ConflictError, match="expected revision 7, found revision 1"):
            await store.checkpoint(
                "r1", revision=7, owner="me", changes={}, log=rows.diff([entry(0)])
            )
        with pytest.raises(ConflictError, match="leased by me"):
            await store.checkpoint(
                "r1", revision=1, owner="intruder", changes={}, log=rows.diff([entry(0)])
            )
        _, stored = await store.load("r1")
        assert stored == []
        assert rows.seqs == []  # the failed diffs were not recorded as applied
    finally:
        await store.aclose()


async def test_acquire_takes_the_lease_once(tmp_path: Path) -> None:
    """Taking a suspended run's lease succeeds for exactly one of two racers."""
    store = await open_store(tmp_path)
    try:
        await store.insert(row(status="suspended", lease_owner=None, lease_expires=None))

        async def take(owner: str, results: list[object]) -> None:
            try:
                results.append(
                    await store.acquire(
                        "r1", revision=1, owner=owner, lease=60, from_status=["suspended"]
                    )
                )
            except ConflictError as err:
                results.append(err)

        results: list[object] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "a", results)
            tg.start_soon(take, "b", results)
        assert sorted(map(type, results), key=str) == sorted([int, ConflictError], key=str)
        stored = await store.get("r1")
        assert (stored.status, stored.revision) == ("running", 2)
    finally:
        await store.aclose()


async def test_recovery_candidates(tmp_path: Path) -> None:
    """Running runs whose lease is ours, absent or expired are recoverable; others are not."""
    store = await open_store(tmp_path)
    try:
        await store.insert(row("mine", lease_owner="me"))
        await store.insert(row("orphan", lease_owner=None, lease_expires=None))
        await store.insert(row("expired", lease_owner="other", lease_expires=5.0))
        await store.insert(row("live", lease_owner="other", lease_expires=1e12))
        await store.insert(row("waiting", status="suspended", lease_owner=None))
        found = await store.recoverable("me")
        assert sorted(r.id for r in found) == ["expired", "mine", "orphan"]
        with pytest.raises(ConflictError):
            await store.acquire(
                "live", revision=1, owner="me", lease=60,
                from_status=["running"], take_expired=True,
            )  # fmt: skip
        assert await store.acquire(
            "expired", revision=1, owner="me", lease=60,
            from_status=["running"], take_expired=True,
        ) == 2  # fmt: skip
    finally:
        await store.aclose()


def test_stored_entries_decode_and_damage_is_a_log_error() -> None:
    """The stored text round-trips; damage, foreign rows and renumbered rows are refused."""
    rows = LogRows("r1")
    text = rows.encode(entry(3, "done", {"a": 1}))
    assert decode_log("r1", [(3, text)]) == [entry(3, "done", {"a": 1})]
    # Re-encoded by some tool (other key order, spaces): still accepted.
    data = json.loads(text)
    reencoded = json.dumps(dict(reversed(list(data.items()))), indent=2)
    assert decode_log("r1", [(3, reencoded)]) == [entry(3, "done", {"a": 1})]

    with pytest.raises(LogError, match="log entry 3 is corrupted: Invalid JSON"):
        decode_log("r1", [(3, text[:-5])])
    with pytest.raises(LogError, match="log entry 3 is corrupted: not JSON"):
        decode_log("r1", [(3, "}{")])
    with pytest.raises(LogError, match="log entry 3 is corrupted: status: Input should be"):
        decode_log("r1", [(3, text.replace('"done"', '"finished"'))])
    with pytest.raises(LogError, match="belongs to run 'r2': a foreign log"):
        decode_log("r1", [(3, LogRows("r2").encode(entry(3)))])
    with pytest.raises(LogError, match="row numbered 4 holds entry 3"):
        decode_log("r1", [(4, text)])
    with pytest.raises(LogError, match="not a log entry of this library"):
        decode_log("r1", [(3, "[1, 2]")])
