"""The SQL store of durable runs: engines, schema migration, and the transactions of a run.

Every write is one transaction guarded by the run's revision (and, while a step runs, by the
lease owner): `UPDATE ... WHERE id = ? AND revision = ?`. A writer that matches no row lost a
race and gets `ConflictError`; nothing it meant to write is committed.

Leases are judged by the database's clock only: `lease_expires` is written as the database's
`now` plus the lease and compared with the database's `now` (`db_now()`), so hosts whose clocks
disagree still agree on which leases are live. Other timestamps (`created_at`, `updated_at`) are
the writing host's clock, for display.

SQLite runs in WAL mode with `BEGIN IMMEDIATE` for writes (the write lock is taken up front, so
two writers queue on `busy_timeout` instead of failing on a lock upgrade), PostgreSQL at READ
COMMITTED (a conditional UPDATE re-checks its WHERE clause after waiting for the row lock).
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any

import anyio
import pydantic
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from .._exceptions import ConfigurationError, ConflictError, LogError, RunNotFound
from . import _schema as S
from ._group import GroupCommit
from ._log import LogEntry

# Taken (transaction-scoped) by every migrating process on PostgreSQL, so two processes that
# open a fresh database at once do not both create the tables.
_PG_MIGRATION_LOCK = 0x6566_6665_6374_73  # "effects"
logger = logging.getLogger("effects.durable")
NOTIFY_CHANNEL = "effects_runs"
"""PostgreSQL channel on which every committed change of a run is announced (`id:revision`)."""

_SQLITE_DEFAULTS = {"journal_mode": "WAL", "synchronous": "NORMAL", "busy_timeout": "10000"}
_SQLITE_CHOICES = {
    "journal_mode": {"WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF"},
    "synchronous": {"OFF", "NORMAL", "FULL", "EXTRA"},
}


# Ids per query of `Store.followed` (SQLite before 3.32 allowed 999 parameters).
_FOLLOWED_CHUNK = 500


def _now() -> float:
    return time.time()


class db_now(sa.sql.functions.FunctionElement[float]):
    """The database server's current time in epoch seconds (a float), as a SQL expression.

    Every lease is written and compared with it, never with a host's clock."""

    type = sa.Double()
    inherit_cache = True
    name = "effects_db_now"


@compiles(db_now, "sqlite")
def _db_now_sqlite(_element: db_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    # julianday('now') is the OS clock of the host the SQLite file lives on (one host anyway),
    # with millisecond precision; unixepoch('subsec') would need SQLite 3.42.
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _db_now_postgresql(_element: db_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)"


@dataclass(slots=True)
class RunRow:
    """One row of the runs table, JSON columns still as text."""

    id: str
    name: str
    version: int
    args: str
    status: str
    prompt: str | None
    input_schema: str | None
    answer: str | None
    result: str | None
    error: str | None
    revision: int
    lease_owner: str | None
    lease_expires: float | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    recovery_attempts: int = 0
    parked: str | None = None
    wake_at: float | None = None
    queue: str | None = None
    priority: int = 0
    dedup_id: str | None = None
    claimed_at: float | None = None

    @classmethod
    def new(
        cls,
        run_id: str,
        name: str,
        version: int,
        args: str,
        *,
        status: str,
        lease_owner: str | None = None,
        **extra: Any,
    ) -> RunRow:
        """The row of a run about to be created (revision 1, nothing answered or decided yet,
        created now; a lease's expiry is written by the store with the database's clock)."""
        now = time.time()
        return cls(
            run_id, name, version, args, status, None, None, None, None, None, 1,
            lease_owner, None, False, now, now, **extra,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> RunRow:
        """Build from a selected row of the runs table."""
        m = row._mapping
        return cls(**{f: m[f] for f in _ROW_FIELDS})


_ROW_FIELDS = tuple(f.name for f in fields(RunRow))


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """The runner that holds an owner: its token, where it runs, and how many seconds its
    claim has left by the database's clock (negative once expired)."""

    owner: str
    token: str
    host: str
    pid: int
    started_at: float
    expires_in: float

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> OwnerRow:
        """Build from a row selected with `_owner_query`."""
        m = row._mapping
        return cls(m["owner"], m["token"], m["host"], m["pid"], m["started_at"], m["expires_in"])


def create_engine(url: str | sa.URL, **options: Any) -> AsyncEngine:
    """An async engine for a store URL: SQLite (aiosqlite) or PostgreSQL (asyncpg, psycopg).

    A bare `sqlite://` or `postgresql://` URL gets the async driver. SQLite URLs may carry
    `journal_mode`, `synchronous` and `busy_timeout` (milliseconds) in the query string.
    """
    u = sa.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.drivername == "sqlite":
            u = u.set(drivername="sqlite+aiosqlite")
        pragmas = dict(_SQLITE_DEFAULTS)
        for key in list(u.query):
            if key in pragmas:
                pragmas[key] = str(u.query[key]).upper()
                u = u.difference_update_query([key])
        for key, allowed in _SQLITE_CHOICES.items():
            if pragmas[key] not in allowed:
                raise ConfigurationError(
                    f"SQLite {key}={pragmas[key]!r} is not one of {', '.join(sorted(allowed))}"
                )
        if not pragmas["busy_timeout"].isdigit():
            raise ConfigurationError("SQLite busy_timeout must be a number of milliseconds")
        engine = create_async_engine(u, **options)
        _configure_sqlite(engine, pragmas)
        return engine
    if backend == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+asyncpg")
        return create_async_engine(u, **options)
    raise ConfigurationError(
        f"unsupported store URL {u.render_as_string(hide_password=True)!r}: use "
        "sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
    )


_sqlite_pragmas: weakref.WeakKeyDictionary[sa.Engine, dict[str, str]] = weakref.WeakKeyDictionary()


def _apply_pragmas(dbapi_connection: Any, pragmas: dict[str, str]) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(pragmas['busy_timeout'])}")
    # The journal mode is a property of the file, set once by `_set_journal_mode` when the
    # store opens; changing it here again would fail with "database is locked" whenever another
    # connection has the file open, whatever the busy timeout.
    cursor.execute("PRAGMA journal_mode")
    row = cursor.fetchone()
    if row is None or str(row[0]).upper() != pragmas["journal_mode"]:
        cursor.execute(f"PRAGMA journal_mode={pragmas['journal_mode']}")
    cursor.execute(f"PRAGMA synchronous={pragmas['synchronous']}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _configure_sqlite(engine: AsyncEngine, pragmas: dict[str, str]) -> None:
    _sqlite_pragmas[engine.sync_engine] = pragmas

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # The sqlite3 module's own transaction handling issues BEGIN lazily (and not before
        # DDL); turn it off and emit BEGIN ourselves, so every transaction is explicit.
        dbapi_connection.isolation_level = None
        _apply_pragmas(dbapi_connection, pragmas)

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("effects_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _set_journal_mode(path: str, pragmas: dict[str, str]) -> None:
    """Put the SQLite file at `path` in the configured journal mode (run in a worker thread).

    SQLite answers a journal mode change with "database is locked" at once, without waiting
    for its busy timeout, while another connection holds the file: several processes or
    stores opening a fresh file together would fail. Retried here, with backoff, for as long as
    the busy timeout allows."""
    deadline = time.monotonic() + int(pragmas["busy_timeout"]) / 1000
    delay = 0.005
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=0)) as conn:
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                if str(mode).upper() != pragmas["journal_mode"]:
                    conn.execute(f"PRAGMA journal_mode={pragmas['journal_mode']}")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class LogRows:
    """Which entries of one run's log the store holds, so a checkpoint writes only the
    difference: new entries, entries that left `pending`, and rows of pruned entries.

    Entries that were written as done or failed never change again, so a checkpoint costs
    O(new entries) plus a binary search, not O(log length).
    """

    __slots__ = ("last", "pending", "prefix", "seqs")

    def __init__(self, run_id: str, stored: Iterable[LogEntry] = ()) -> None:
        self.prefix = '{"run":' + json.dumps(run_id) + ","
        self.seqs: list[int] = []
        self.pending: set[int] = set()
        for entry in stored:
            self.seqs.append(entry.seq)
            if entry.status == "pending":
                self.pending.add(entry.seq)
        self.last = self.seqs[-1] if self.seqs else -1

    def encode(self, entry: LogEntry) -> str:
        """The stored text of an entry: its JSON with the run id first."""
        return self.prefix + entry.model_dump_json()[1:]

    def diff(self, entries: Sequence[LogEntry]) -> LogDiff:
        """What a checkpoint of `entries` (sorted by seq) must write."""
        cut = bisect.bisect_right(entries, self.last, key=_seq)
        inserts = [(e.seq, self.encode(e)) for e in entries[cut:]]
        updates: list[tuple[int, str]] = []
        for seq in self.pending:
            i = bisect.bisect_left(entries, seq, 0, cut, key=_seq)
            if i < cut and entries[i].seq == seq and entries[i].status != "pending":
                updates.append((seq, self.encode(entries[i])))
        deletes: list[int] = []
        if cut != len(self.seqs):  # some stored entries are gone (loop pruning)
            kept = {e.seq for e in entries[:cut]}
            deletes = [s for s in self.seqs if s not in kept]
        return LogDiff(self, entries, cut, inserts, updates, deletes)


def _seq(entry: LogEntry) -> int:
    return entry.seq


class LogDiff:
    """A pending change to a run's stored log; `applied()` records it once committed."""

    __slots__ = ("cut", "deletes", "entries", "inserts", "rows", "updates")

    def __init__(
        self,
        rows: LogRows,
        entries: Sequence[LogEntry],
        cut: int,
        inserts: list[tuple[int, str]],
        updates: list[tuple[int, str]],
        deletes: list[int],
    ) -> None:
        self.rows = rows
        self.entries = entries
        self.cut = cut
        self.inserts = inserts
        self.updates = updates
        self.deletes = deletes

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.deletes)

    def applied(self) -> None:
        """The transaction committed: the store now holds exactly `entries`."""
        rows = self.rows
        if self.deletes:
            rows.seqs = [e.seq for e in self.entries[: self.cut]]
            rows.pending.difference_update(self.deletes)
        for seq, _ in self.updates:
            rows.pending.discard(seq)
        for e in self.entries[self.cut :]:
            rows.seqs.append(e.seq)
            if e.status == "pending":
                rows.pending.add(e.seq)
        if self.entries:
            rows.last = max(rows.last, self.entries[-1].seq)


def decode_log(run_id: str, rows: Iterable[tuple[int, str]]) -> list[LogEntry]:
    """Rebuild a run's entries from stored rows; a corrupted or foreign row is a `LogError`."""
    prefix = '{"run":' + json.dumps(run_id) + ","
    entries: list[LogEntry] = []
    for seq, text in rows:
        if text.startswith(prefix):
            try:
                entry = LogEntry.model_validate_json("{" + text[len(prefix) :])
            except pydantic.ValidationError as err:
                raise LogError(
                    f"run {run_id!r}: log entry {seq} is corrupted: {_first(err)}"
                ) from None
        else:
            entry = _decode_slow(run_id, seq, text)
        if entry.seq != seq:
            raise LogError(
                f"run {run_id!r}: the log row numbered {seq} holds entry {entry.seq}; "
                "the log was edited or copied from elsewhere"
            )
        entries.append(entry)
    return entries


def _decode_slow(run_id: str, seq: int, text: str) -> LogEntry:
    # The fast path expects the text exactly as we wrote it; anything else is either the same
    # data re-encoded by some tool (accepted), another run's entry or damage.
    try:
        data = json.loads(text)
    except ValueError as err:
        raise LogError(f"run {run_id!r}: log entry {seq} is corrupted: not JSON ({err})") from None
    if not isinstance(data, dict) or "run" not in data:
        raise LogError(
            f"run {run_id!r}: log entry {seq} is corrupted: not a log entry of this library"
        )
    owner = data.pop("run")
    if owner != run_id:
        raise LogError(
            f"run {run_id!r}: log entry {seq} belongs to run {owner!r}: "
            "a foreign log was copied into this run"
        )
    try:
        return LogEntry.model_validate(data)
    except pydantic.ValidationError as err:
        raise LogError(f"run {run_id!r}: log entry {seq} is corrupted: {_first(err)}") from None


def _first(err: pydantic.ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    more = err.error_count() - 1
    return (f"{where}: " if where else "") + first["msg"] + (f" (and {more} more)" if more else "")


class _Checkpoint:
    """One run's checkpoint waiting for its group: the guarded row change and the log diff."""

    __slots__ = ("lease", "log", "owner", "revision", "run_id", "values")

    def __init__(
        self,
        run_id: str,
        revision: int,
        owner: str,
        values: dict[str, Any],
        log: LogDiff | None,
        lease: float | None,
    ) -> None:
        self.run_id = run_id
        self.revision = revision
        self.owner = owner
        self.values = values
        self.log = log
        self.lease = lease


class _Insert:
    """A new run's row waiting for its group (a run's creation is a write like a checkpoint:
    many runs started at once are created together)."""

    __slots__ = ("lease", "row")

    def __init__(self, row: RunRow, lease: float | None) -> None:
        self.row = row
        self.lease = lease

    @property
    def run_id(self) -> str:
        return self.row.id


_Write = _Checkpoint | _Insert


class _Thread:
    """One dedicated thread that runs functions for the event loop, one at a time.

    Why not `anyio.to_thread`: a round trip through its pool costs ~40 us on this VM, through a
    thread of our own ~15 us, and a checkpoint on SQLite is one round trip (a WAL commit
    itself costs ~10-35 us)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return await future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as err:
                result, error = None, err
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)

    def stop(self) -> None:
        """End the thread after the jobs already queued."""
        self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _wal_checkpoint(db: sqlite3.Connection) -> None:
    # The PRAGMA returns a row: read it, or the statement stays in progress and the
    # connection's next COMMIT fails ("SQL statements in progress").
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


_WAL_CHECKPOINT_BYTES = 4 << 20  # SQLite's own default: 1,000 pages of 4 KiB


class _SQLiteCheckpoints:
    """Checkpoints on SQLite through one dedicated connection on one thread, outside
    SQLAlchemy, a whole group of checkpoints per round trip to that thread.

    Why: every statement through SQLAlchemy's aiosqlite adapter costs several round trips to
    the connection's thread (cursor, execute, fetch, close), about 2 ms per checkpoint here,
    while SQLite itself commits in WAL mode in ~10-35 us. Here a group of checkpoints (one or
    many runs) is one function on the connection's thread: `BEGIN IMMEDIATE`, per run the
    guarded UPDATE and its log rows, `COMMIT`. The statements are compiled once from the
    Core tables of `_schema`, so there is still one definition.
    """

    def __init__(self, path: str, engine: AsyncEngine, pragmas: dict[str, str]) -> None:
        self.path = path
        self.dialect = engine.dialect
        self.pragmas = pragmas
        self.db: sqlite3.Connection | None = None
        self.thread: _Thread | None = None
        # Inline commits in the event loop's thread, for a lone run (see `commit_group`).
        self.inline: sqlite3.Connection | None = None
        self.can_inline = pragmas["journal_mode"] == "WAL" and pragmas["synchronous"] in (
            "NORMAL",
            "OFF",
        )
        self.last: str | None = None
        self.inline_commits = 0
        self.updates: dict[tuple[frozenset[str], bool], tuple[str, tuple[str, ...]]] = {}
        self.insert = self._sql(S.log.insert())[0]
        run_values: dict[str, Any] = {f: sa.bindparam(f) for f in _ROW_FIELDS}
        self.insert_run = self._sql(S.runs.insert().values(run_values))
        run_values["lease_expires"] = db_now() + sa.bindparam("w_lease", type_=sa.Double())
        self.insert_leased_run = self._sql(S.runs.insert().values(run_values))
        self.rewrite = self._sql(
            S.log.update()
            .where(S.log.c.run_id == sa.bindparam("r"), S.log.c.seq == sa.bindparam("s"))
            .values(entry=sa.bindparam("e"))
        )[0]
        self.delete = self._sql(
            S.log.delete().where(
                S.log.c.run_id == sa.bindparam("r"), S.log.c.seq == sa.bindparam("s")
            )
        )[0]

    def _sql(self, stmt: Any) -> tuple[str, tuple[str, ...]]:
        compiled = stmt.compile(dialect=self.dialect)
        return compiled.string, tuple(compiled.positiontup or ())

    def _update(self, keys: frozenset[str], lease: bool) -> tuple[str, tuple[str, ...]]:
        try:
            return self.updates[keys, lease]
        except KeyError:
            values: dict[str, Any] = {k: sa.bindparam(k) for k in sorted(keys)}
            if lease:
                values["lease_expires"] = db_now() + sa.bindparam("w_lease", type_=sa.Double())
            stmt = (
                S.runs.update()
                .where(
                    S.runs.c.id == sa.bindparam("w_id"),
                    S.runs.c.revision == sa.bindparam("w_revision"),
                    S.runs.c.lease_owner == sa.bindparam("w_owner"),
                )
                .values(values)
                .returning(S.runs.c.cancel_requested)
            )
            compiled = self.updates[keys, lease] = self._sql(stmt)
            return compiled

    def _open(self, busy_timeout: int | None = None) -> sqlite3.Connection:
        # Autocommit mode: the transaction and its savepoints are issued explicitly.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if busy_timeout is None:
            busy_timeout = int(self.pragmas["busy_timeout"])
        try:
            for pragma in (
                f"busy_timeout={busy_timeout}",
                f"synchronous={self.pragmas['synchronous']}",
                "foreign_keys=ON",
            ):
                db.execute(f"PRAGMA {pragma}")
        except BaseException:
            db.close()
            raise
        return db

    async def connect(self) -> None:
        """Start the thread and open the connections."""
        if self.thread is None:
            self.thread = _Thread(f"effects-sqlite-checkpoints:{self.path}")
        if self.db is None:
            self.db = await self.thread.run(self._open)
        if self.inline is None and self.can_inline:
            # Never waits for the write lock (busy_timeout 0) and never checkpoints the WAL
            # by itself (that fsyncs): the loop's thread must not block.
            inline = self._open(busy_timeout=0)
            inline.execute("PRAGMA wal_autocheckpoint=0")
            self.inline = inline

    async def commit_group(self, group: Sequence[_Write]) -> list[bool | Exception | None]:
        """Commit `group` in one transaction: per checkpoint whether a cancel was requested,
        None if its guarded UPDATE matched no row, or its own error.

        A lone run's checkpoint (the previous one committed was the same run's, alone) is
        committed in the calling thread when the mode never syncs at a commit (WAL with
        `synchronous=NORMAL` or OFF) and the write lock is free at once: a round trip to the
        connection's thread would cost more than the commit itself. Everything else (groups,
        a busy lock, modes that fsync) goes to the connection's thread."""
        await self.connect()
        assert self.thread is not None
        assert self.db is not None
        last, self.last = self.last, (group[0].run_id if len(group) == 1 else None)
        if self.inline is not None and self.last is not None and self.last == last:
            try:
                results = self._commit(self.inline, group)
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                # Another connection holds the write lock: nothing was written; wait for it
                # on the connection's thread instead.
            else:
                self.inline_commits += 1
                if self.inline_commits % 256 == 0:
                    await self._maybe_checkpoint_wal()
                return results
        commit: list[bool | Exception | None] = await self.thread.run(self._commit, self.db, group)
        return commit

    async def _maybe_checkpoint_wal(self) -> None:
        # The thread's connection checkpoints the WAL automatically after its own commits
        # (every 1,000 pages); a lone run committing inline only would let the WAL grow.
        try:
            # A stat of a local file: microseconds, like the inline commit itself.
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size > _WAL_CHECKPOINT_BYTES and self.thread is not None and self.db is not None:
            await self.thread.run(_wal_checkpoint, self.db)

    def _commit(
        self, db: sqlite3.Connection, group: Sequence[_Write]
    ) -> list[bool | Exception | None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            results = self._write(db, group)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    def _write(
        self, db: sqlite3.Connection, group: Sequence[_Write]
    ) -> list[bool | Exception | None]:
        """The statements of a group, inside its transaction. With several checkpoints each
        is in a savepoint of its own, so one that fails is undone alone and reported to its
        run; a lone checkpoint's error undoes the transaction instead (the same, cheaper)."""
        results: list[bool | Exception | None] = []
        alone = len(group) == 1
        for c in group:
            if not alone:
                db.execute("SAVEPOINT effects_checkpoint")
            try:
                results.append(self._one(db, c))
            except sqlite3.Error as err:
                if alone:
                    raise
                db.execute("ROLLBACK TO effects_checkpoint")
                results.append(err)
            if not alone:
                db.execute("RELEASE effects_checkpoint")
        return results

    def _one(self, db: sqlite3.Connection, c: _Write) -> bool | None:
        if isinstance(c, _Insert):
            sql, names = self.insert_run if c.lease is None else self.insert_leased_run
            params = {f: getattr(c.row, f) for f in _ROW_FIELDS}
            params["w_lease"] = c.lease
            try:
                db.execute(sql, [params[n] for n in names])
            except sqlite3.IntegrityError:
                return None  # the id is taken (the failed statement undid itself)
            return False
        sql, names = self._update(frozenset(c.values), c.lease is not None)
        params = {
            **c.values,
            "w_id": c.run_id,
            "w_revision": c.revision,
            "w_owner": c.owner,
            "w_lease": c.lease,
        }
        rows = db.execute(sql, [params[n] for n in names]).fetchall()
        if not rows:
            return None  # lost a race: nothing of it is written
        log, run_id = c.log, c.run_id
        if log is not None:
            if log.deletes:
                db.executemany(self.delete, [(run_id, s) for s in log.deletes])
            if log.updates:
                db.executemany(self.rewrite, [(text, run_id, s) for s, text in log.updates])
            if log.inserts:
                db.executemany(self.insert, [(run_id, s, text) for s, text in log.inserts])
        return bool(rows[0][0])

    async def aclose(self) -> None:
        inline, self.inline = self.inline, None
        if inline is not None:
            inline.close()
        thread, self.thread = self.thread, None
        if thread is not None:
            db, self.db = self.db, None
            try:
                if db is not None:
                    await thread.run(db.close)
            finally:
                thread.stop()


async def _pg_group_statement(driver: Any, group: Sequence[_Write]) -> list[bool | None]:
    """Run the group statement of `group` on an asyncpg connection: per checkpoint whether a
    cancel was requested, per insert False; None where the guarded UPDATE matched no row or
    the new run's id was taken."""
    checkpoints = [c for c in group if isinstance(c, _Checkpoint)]
    inserts = [c for c in group if isinstance(c, _Insert)]
    columns = sorted({name for c in checkpoints for name in c.values})
    args: list[Any] = [
        [c.run_id for c in checkpoints],
        [c.revision for c in checkpoints],
        [c.owner for c in checkpoints],
        [c.lease for c in checkpoints],
    ]
    for name in columns:
        args.append([c.values.get(name) for c in checkpoints])
        args.append([name in c.values for c in checkpoints])
    deletes: list[tuple[str, int]] = []
    updates: list[tuple[str, int, str]] = []
    added: list[tuple[str, int, str]] = []
    for c in checkpoints:
        if c.log is not None:
            deletes += [(c.run_id, s) for s in c.log.deletes]
            updates += [(c.run_id, s, t) for s, t in c.log.updates]
            added += [(c.run_id, s, t) for s, t in c.log.inserts]
    args += [[r for r, _ in deletes], [s for _, s in deletes]]
    for rows in (updates, added):
        args += [[r for r, _, _ in rows], [s for _, s, _ in rows], [t for _, _, t in rows]]
    if inserts:
        args += [[getattr(i.row, f) for i in inserts] for f in _ROW_FIELDS]
        args.append([i.lease for i in inserts])
    found = await driver.fetch(_pg_group_sql(tuple(columns), bool(inserts)), *args)
    matched = {r[0]: r[1] for r in found}
    return [
        (
            None
            if c.run_id not in matched
            else isinstance(c, _Checkpoint) and bool(matched[c.run_id])
        )
        for c in group
    ]


@functools.cache
def _pg_group_sql(columns: tuple[str, ...], inserts: bool) -> str:
    """The statement of a checkpoint group on PostgreSQL that may set `columns` of the runs
    table. Parameters are arrays, one element per checkpoint: id, revision, owner and lease,
    then per column its values and whether each checkpoint sets it, then the log rows to
    delete (run, seq), rewrite and insert (run, seq, text); with `inserts`, then per column of
    the runs table the new runs' values, and their leases. New runs whose id is taken are
    skipped (`ON CONFLICT DO NOTHING`): they are missing from the result."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]

    def array(column: sa.Column[Any]) -> str:
        return f"{column.type.compile(dialect=dialect)}[]"

    n = 4
    cols: list[str] = ["w_id", "w_rev", "w_owner", "w_lease"]
    params = [
        f"$1::{array(S.runs.c.id)}",
        "$2::integer[]",
        f"$3::{array(S.runs.c.lease_owner)}",
        "$4::double precision[]",
    ]
    sets: list[str] = []
    for i, name in enumerate(columns):
        params += [f"${n + 1}::{array(S.runs.c[name])}", f"${n + 2}::boolean[]"]
        n += 2
        cols += [f"v{i}", f"m{i}"]
        if name != "lease_expires":
            sets.append(f"{name} = CASE WHEN v.m{i} THEN v.v{i} ELSE r.{name} END")
    now = "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)"
    lease = f"WHEN v.w_lease IS NOT NULL THEN {now} + v.w_lease"
    if "lease_expires" in columns:
        i = columns.index("lease_expires")
        lease += f" WHEN v.m{i} THEN v.v{i}"
    sets.append(f"lease_expires = CASE {lease} ELSE r.lease_expires END")
    runs, log = S.runs.name, S.log.name
    key = f"{array(S.log.c.run_id)}"
    d, w, i_ = n + 1, n + 3, n + 6
    created, changed = "", "(SELECT id, revision FROM u) AS x"
    if inserts:
        first = i_ + 3
        names = ", ".join(_ROW_FIELDS)
        arrays = ", ".join(f"${first + k}::{array(S.runs.c[f])}" for k, f in enumerate(_ROW_FIELDS))
        lease_param = f"${first + len(_ROW_FIELDS)}::double precision[]"
        picked = ", ".join(
            f"CASE WHEN a.w_lease IS NOT NULL THEN {now} + a.w_lease ELSE a.{f} END"
            if f == "lease_expires"
            else f"a.{f}"
            for f in _ROW_FIELDS
        )
        created = (
            f"c AS (INSERT INTO {runs} ({names}) SELECT {picked} "
            f"FROM unnest({arrays}, {lease_param}) AS a({names}, w_lease) "
            "ON CONFLICT DO NOTHING RETURNING id, revision), "
        )
        changed = "(SELECT id, revision FROM u UNION ALL SELECT id, revision FROM c) AS x"
    return (
        f"WITH v AS (SELECT * FROM unnest({', '.join(params)}) AS v({', '.join(cols)})), "
        f"u AS (UPDATE {runs} AS r SET {', '.join(sets)} FROM v "
        "WHERE r.id = v.w_id AND r.revision = v.w_rev AND r.lease_owner = v.w_owner "
        "RETURNING r.id, r.cancel_requested, r.revision), "
        f"d AS (DELETE FROM {log} AS l USING unnest(${d}::{key}, ${d + 1}::integer[]) AS t(r, s) "
        "WHERE l.run_id = t.r AND l.seq = t.s AND t.r IN (SELECT id FROM u)), "
        f"w AS (UPDATE {log} AS l SET entry = t.e "
        f"FROM unnest(${w}::{key}, ${w + 1}::integer[], ${w + 2}::text[]) AS t(r, s, e) "
        "WHERE l.run_id = t.r AND l.seq = t.s AND t.r IN (SELECT id FROM u)), "
        f"i AS (INSERT INTO {log} (run_id, seq, entry) SELECT t.r, t.s, t.e "
        f"FROM unnest(${i_}::{key}, ${i_ + 1}::integer[], ${i_ + 2}::text[]) AS t(r, s, e) "
        "WHERE t.r IN (SELECT id FROM u)), "
        f"{created}"
        f"n AS (SELECT pg_notify('{NOTIFY_CHANNEL}', x.id || ':' || x.revision) FROM {changed}) "
        "SELECT u.id, u.cancel_requested, (SELECT count(*) FROM n) FROM u"
        + (" UNION ALL SELECT c.id, NULL, (SELECT count(*) FROM n) FROM c" if inserts else "")
    )


class Store:
    """The durable store behind one URL. Open with `await Store.open(url)`; `aclose()` at the end.

    All methods are one transaction each. Writes that lose a race raise `ConflictError`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(effects_write=True)
        self._reader = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if self.dialect == "postgresql"
            else engine
        )
        self._fast: _SQLiteCheckpoints | None = None
        # Checkpoints of concurrent runs are committed in groups (see `_group`): on SQLite
        # through the dedicated connection, on PostgreSQL (asyncpg) as one statement per group.
        self._group: GroupCommit[_Write, bool | None] | None = None
        self._pg_idle: list[tuple[AsyncConnection, Any]] = []
        if self.dialect == "postgresql" and engine.dialect.driver == "asyncpg":
            self._group = GroupCommit(self._pg_commit_group)
        pragmas = _sqlite_pragmas.get(engine.sync_engine)
        database = engine.url.database
        if (
            pragmas is not None
            and engine.dialect.driver == "aiosqlite"
            and database
            and database != ":memory:"
            and not engine.url.query
        ):
            self._fast = _SQLiteCheckpoints(database, engine, pragmas)
            self._group = GroupCommit(self._fast.commit_group)

    @classmethod
    async def open(cls, url: str | sa.URL, *, migrate: bool = True, **options: Any) -> Store:
        """Connect to `url` and (by default) create or migrate the schema. A database that
        cannot be reached, opened or written is a `ConfigurationError` saying why."""
        store = cls(create_engine(url, **options))
        try:
            try:
                if store._fast is not None:
                    await anyio.to_thread.run_sync(
                        _set_journal_mode, store._fast.path, store._fast.pragmas
                    )
                if migrate:
                    await store.migrate()
                if store._fast is not None:
                    await store._fast.connect()
            except (sa.exc.DBAPIError, OSError, sqlite3.Error) as err:
                raise ConfigurationError(
                    f"cannot open the store {store.url}: {_reason(err)}"
                ) from err
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.aclose()
            raise
        return store

    async def aclose(self) -> None:
        """Close every pooled connection."""
        try:
            if self._fast is not None:
                await self._fast.aclose()
            while self._pg_idle:
                await self._pg_idle.pop()[0].close()
        finally:
            await self.engine.dispose()

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: only this engine sees it (no other process, and no
        other engine of this one)."""
        u = self.engine.url
        return self.dialect == "sqlite" and (
            u.database in (None, "", ":memory:") or u.query.get("mode") == "memory"
        )

    @property
    def url(self) -> str:
        """The store URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    # -- schema ---------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Bring the schema to `SCHEMA_VERSION`; returns the version found before."""
        async with self._writer.begin() as conn:
            return await conn.run_sync(self._migrate)

    def _migrate(self, conn: sa.Connection) -> int:
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        inspector = sa.inspect(conn)
        now = _now()
        if not inspector.has_table(S.schema_version.name):
            if inspector.has_table(S.runs.name):
                raise ConfigurationError(
                    f"{self.url}: table {S.runs.name} exists without "
                    f"{S.schema_version.name}; it was not created by this library"
                )
            S.metadata.create_all(conn)
            conn.execute(
                S.schema_version.insert(),
                [{"version": S.SCHEMA_VERSION, "description": "created", "applied_at": now}],
            )
            return 0
        current: int = conn.scalar(sa.select(sa.func.max(S.schema_version.c.version))) or 0
        if current > S.SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.url}: the schema is at version {current}, newer than this library "
                f"knows ({S.SCHEMA_VERSION}); upgrade the library"
            )
        for step in S.MIGRATIONS:
            if step.version > current:
                step.apply(conn)
                conn.execute(
                    S.schema_version.insert(),
                    [{"version": step.version, "description": step.description, "applied_at": now}],
                )
        return current

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 if none)."""
        async with self._reader.connect() as conn:
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table(S.schema_version.name)):
                return 0
            return (await conn.scalar(sa.select(sa.func.max(S.schema_version.c.version)))) or 0

    # -- transactions ---------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer.begin() as conn:
            yield conn

    async def _notify(
        self, conn: AsyncConnection, run_id: str, revision: int, *, flag: bool = False
    ) -> None:
        if self.dialect == "postgresql":
            # Delivered to listeners when (and only if) the transaction commits. A change that
            # keeps the revision (a cancel request flagged on a running step) is marked "!",
            # so listeners read it although they already hold that revision.
            payload = f"{run_id}:{revision}{'!' if flag else ''}"
            await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, payload)))

    # -- runs -----------------------------------------------------------------------------

    async def insert(self, row: RunRow, *, lease: float | None = None) -> None:
        """Create a run; `ConflictError` if the id is taken. With `lease` (seconds) the row's
        lease expires that long after the database's now (`row.lease_expires` is ignored)."""
        if self._group is not None:
            # Created together with whatever else this store writes at the moment.
            if await self._group.submit(_Insert(row, lease), row.id) is None:
                raise ConflictError(f"a run with id {row.id!r} already exists")
            return
        values: dict[str, Any] = {f: getattr(row, f) for f in _ROW_FIELDS}
        if lease is not None:
            values["lease_expires"] = db_now() + lease
        try:
            async with self._write() as conn:
                await conn.execute(S.runs.insert().values(values))
                await self._notify(conn, row.id, row.revision)
        except IntegrityError:
            raise ConflictError(f"a run with id {row.id!r} already exists") from None

    async def get(self, run_id: str) -> RunRow:
        """The run's row; `RunNotFound` if there is none."""
        async with self._reader.connect() as conn:
            row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return RunRow.from_row(row)

    async def followed(
        self, run_ids: Sequence[str]
    ) -> dict[str, tuple[int, bool, str, int | None]]:
        """For each of `run_ids` that exists: its revision, whether a cancel is requested, its
        status and its stored task tree's version (None without one), in one query (how a
        process without NOTIFY follows runs changed by others)."""
        runs, trees = S.runs, S.task_trees
        query = (
            sa.select(runs.c.id, runs.c.revision, runs.c.cancel_requested, runs.c.status)
            .add_columns(trees.c.version)
            .select_from(runs.outerjoin(trees, trees.c.run_id == runs.c.id))
        )
        out: dict[str, tuple[int, bool, str, int | None]] = {}
        async with self._reader.connect() as conn:
            for start in range(0, len(run_ids), _FOLLOWED_CHUNK):
                chunk = list(run_ids[start : start + _FOLLOWED_CHUNK])
                for r in await conn.execute(query.where(runs.c.id.in_(chunk))):
                    out[r[0]] = (int(r[1]), bool(r[2]), str(r[3]), r[4])
        return out

    async def load(self, run_id: str) -> tuple[RunRow, list[LogEntry]]:
        """The run's row and its log, read in one transaction."""
        async with self._reader.begin() as conn:
            row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            result = await conn.execute(
                sa.select(S.log.c.seq, S.log.c.entry)
                .where(S.log.c.run_id == run_id)
                .order_by(S.log.c.seq)
            )
            texts = [(seq, text) for seq, text in result]
        return RunRow.from_row(row), decode_log(run_id, texts)

    async def list(
        self,
        *,
        status: Sequence[str] = (),
        name: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        parked: bool | None = None,
    ) -> list[RunRow]:
        """Runs, oldest first (or newest first), optionally filtered."""
        query = sa.select(S.runs)
        if status:
            query = query.where(S.runs.c.status.in_(list(status)))
        if parked is not None:
            query = query.where(
                S.runs.c.parked.is_not(None) if parked else S.runs.c.parked.is_(None)
            )
        if name is not None:
            query = query.where(S.runs.c.name == name)
        order = S.runs.c.created_at.desc() if newest_first else S.runs.c.created_at
        query = query.order_by(order, S.runs.c.id)
        if limit is not None:
            query = query.limit(limit)
        async with self._reader.connect() as conn:
            return [RunRow.from_row(r) for r in await conn.execute(query)]

    async def acquire(
        self,
        run_id: str,
        *,
        revision: int,
        owner: str,
        lease: float,
        from_status: Sequence[str],
        answer: str | None = None,
        keep_answer: bool = False,
        cancel: bool = False,
        take_expired: bool = False,
        now: float | None = None,
        attempt: bool = False,
    ) -> int:
        """Take the run's lease for `lease` seconds (by the database's clock) and mark it
        running, if it is still at `revision` in one of `from_status`; returns the new
        revision. `take_expired` additionally requires the current lease to be gone, expired
        by the database's clock, or our own (recovery). `answer` is stored for recovery unless
        `keep_answer` (recovery keeps the one already stored); `cancel` flags the run for
        cancellation in the same transaction. `attempt` (recovery) counts a recovery attempt
        and requires the run not to be parked."""
        now = _now() if now is None else now
        values: dict[str, Any] = {
            "status": "running",
            "revision": revision + 1,
            "lease_owner": owner,
            "lease_expires": db_now() + lease,
            "updated_at": now,
        }
        if not keep_answer:
            values["answer"] = answer
        if cancel:
            values["cancel_requested"] = True
        if attempt:
            # Counted before the step does anything: a recovery that kills its process (a
            # poison pill) is counted too.
            values["recovery_attempts"] = S.runs.c.recovery_attempts + 1
        stmt = (
            S.runs.update()
            .where(
                S.runs.c.id == run_id,
                S.runs.c.revision == revision,
                S.runs.c.status.in_(list(from_status)),
            )
            .values(**values)
        )
        if take_expired:
            stmt = stmt.where(_unleased(owner))
        if attempt:
            stmt = stmt.where(S.runs.c.parked.is_(None))
        async with self._write() as conn:
            if (await conn.execute(stmt)).rowcount != 1:
                raise await self._conflict(conn, run_id, revision)
            await self._notify(conn, run_id, revision + 1)
        return revision + 1

    async def checkpoint(
        self,
        run_id: str,
        *,
        revision: int,
        owner: str,
        changes: dict[str, Any],
        log: LogDiff | None,
        lease: float | None = None,
    ) -> tuple[int, bool]:
        """One checkpoint: the run row's `changes` (guarded by revision and lease owner) and
        the log difference, in one transaction; with `lease` (seconds) the lease is extended to
        the database's now plus that. Returns the new revision and whether a cancel was
        requested meanwhile."""
        values = {"revision": revision + 1, "updated_at": _now(), **changes}
        if self._group is not None:
            # Committed with whatever other runs of this store checkpoint at the same moment;
            # returns once the group's transaction committed.
            request = _Checkpoint(run_id, revision, owner, values, log, lease)
            cancel = await self._group.submit(request, run_id)
            if cancel is None:
                async with self._reader.connect() as conn:
                    raise await self._conflict(conn, run_id, revision)
            if log is not None:
                log.applied()
            return revision + 1, cancel
        stmt = (
            S.runs.update()
            .where(
                S.runs.c.id == run_id,
                S.runs.c.revision == revision,
                S.runs.c.lease_owner == owner,
            )
            .values(values if lease is None else {**values, "lease_expires": db_now() + lease})
            .returning(S.runs.c.cancel_requested)
        )
        async with self._write() as conn:
            # The guarded UPDATE goes first: a loser fails before writing anything, and on
            # PostgreSQL it holds the row lock for the rest of the transaction.
            cancel = (await conn.execute(stmt)).scalar()
            if cancel is None:
                raise await self._conflict(conn, run_id, revision)
            if log is not None:
                if log.deletes:
                    await conn.execute(
                        S.log.delete().where(S.log.c.run_id == run_id, S.log.c.seq.in_(log.deletes))
                    )
                if log.updates:
                    await conn.execute(
                        S.log.update()
                        .where(
                            S.log.c.run_id == sa.bindparam("r"),
                            S.log.c.seq == sa.bindparam("s"),
                        )
                        .values(entry=sa.bindparam("e")),
                        [{"r": run_id, "s": s, "e": text} for s, text in log.updates],
                    )
                if log.inserts:
                    await conn.execute(
                        S.log.insert(),
                        [{"run_id": run_id, "seq": s, "entry": text} for s, text in log.inserts],
                    )
            await self._notify(conn, run_id, revision + 1)
        if log is not None:
            log.applied()
        return revision + 1, bool(cancel)

    async def _pg_commit_group(
        self, group: Sequence[_Write]
    ) -> builtins.list[bool | Exception | None]:
        """A group of checkpoints on PostgreSQL (asyncpg) as one statement, so one round trip
        and one commit: the guarded UPDATEs, the log changes and the NOTIFYs in one WITH query,
        which PostgreSQL runs atomically (an implicit transaction). A run's log rows are
        written only if its UPDATE matched; one whose guard failed gets None and writes
        nothing.

        If the statement fails (one run's rows break a constraint, a deadlock with another
        process), nothing of it committed; the group is then written again in one transaction
        with a savepoint per checkpoint, so only the failing one gets its error and the
        others still commit together.

        Why: through SQLAlchemy a checkpoint is five round trips (BEGIN, UPDATE, INSERT,
        NOTIFY, COMMIT), and on a busy host each one waits for the server process to be
        scheduled; queue workers checkpoint after every external effect."""
        import asyncpg  # type: ignore[import-untyped]  # the `postgres` extra

        async with self.pg_driver() as driver:
            try:
                # Outside any transaction block: the one statement commits by itself.
                return list(await _pg_group_statement(driver, group))
            except asyncpg.PostgresError as err:
                if len(group) == 1:
                    raise
                logger.debug("a group of %d writes failed (%s)", len(group), err)
            results: builtins.list[bool | Exception | None] = []
            async with driver.transaction():
                for c in group:
                    try:
                        async with driver.transaction():  # a savepoint
                            results += await _pg_group_statement(driver, [c])
                    except asyncpg.PostgresError as err:
                        results.append(err)
            return results

    @contextlib.asynccontextmanager
    async def pg_driver(self) -> AsyncIterator[Any]:
        """An asyncpg connection of the store (PostgreSQL through asyncpg only) for statements
        written for it (group commits, queue claims), checked out of the engine's pool once
        and kept: a checkout per statement costs ~0.1-0.3 ms of CPU (SQLAlchemy's pool and
        greenlet), as much as a round trip. One user at a time; concurrent users get one each.
        A connection that was lost is given back to the pool as invalid."""
        if self._pg_idle:
            conn, driver = self._pg_idle.pop()
        else:
            conn = await self.engine.connect()
            try:
                driver = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.close()
                raise
        try:
            yield driver
        except BaseException:
            if driver.is_closed():  # lost: not kept
                with anyio.CancelScope(shield=True):
                    await _drop(conn)
                raise
            self._pg_idle.append((conn, driver))
            raise
        self._pg_idle.append((conn, driver))

    async def renew(self, owner: str, run_ids: Sequence[str], lease: float) -> None:
        """Extend the lease of runs this owner still holds to the database's now plus `lease`
        seconds (no revision change)."""
        if not run_ids:
            return
        async with self._write() as conn:
            await conn.execute(
                S.runs.update()
                .where(
                    S.runs.c.id.in_(list(run_ids)),
                    S.runs.c.lease_owner == owner,
                    S.runs.c.status == "running",
                )
                .values(lease_expires=db_now() + lease)
            )

    async def release(
        self, run_id: str, *, revision: int, owner: str, uncount: bool = False
    ) -> bool:
        """Give up the lease of a running run without changing its state (the step was
        stopped, as in a crash); `recover()` anywhere may continue it at once. `uncount`
        takes back the recovery attempt counted when the lease was taken (the attempt failed
        before doing anything: the deployed code cannot run the run)."""
        values: dict[str, Any] = {"lease_owner": None, "lease_expires": None}
        if uncount:
            values["recovery_attempts"] = sa.case(
                (S.runs.c.recovery_attempts > 0, S.runs.c.recovery_attempts - 1), else_=0
            )
        async with self._write() as conn:
            result = await conn.execute(
                S.runs.update()
                .where(
                    S.runs.c.id == run_id,
                    S.runs.c.revision == revision,
                    S.runs.c.lease_owner == owner,
                )
                .values(values)
            )
            return result.rowcount == 1

    async def park(self, run_id: str, *, revision: int, owner: str, reason: str) -> RunRow:
        """Stop recovering a running run whose step is not live (lease ours, absent or expired
        by the database's clock): `recover()` skips it until `unpark`. `ConflictError` if it
        changed."""
        async with self._write() as conn:
            result = await conn.execute(
                S.runs.update()
                .where(
                    S.runs.c.id == run_id,
                    S.runs.c.revision == revision,
                    S.runs.c.status == "running",
                    _unleased(owner),
                )
                .values(
                    parked=reason,
                    lease_owner=None,
                    lease_expires=None,
                    revision=revision + 1,
                    updated_at=_now(),
                )
            )
            if result.rowcount != 1:
                raise await self._conflict(conn, run_id, revision)
            await self._notify(conn, run_id, revision + 1)
            row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).one()
        return RunRow.from_row(row)

    async def unpark(self, run_id: str) -> RunRow:
        """Let `recover()` continue a parked run again, with its attempts counted from zero
        (a run that is not parked is returned unchanged)."""
        async with self._write() as conn:
            row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            if row._mapping["parked"] is None:
                return RunRow.from_row(row)
            revision = row._mapping["revision"] + 1
            await conn.execute(
                S.runs.update()
                .where(S.runs.c.id == run_id)
                .values(parked=None, recovery_attempts=0, revision=revision, updated_at=_now())
            )
            await self._notify(conn, run_id, revision)
            row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).one()
        return RunRow.from_row(row)

    async def request_cancel(self, run_id: str) -> RunRow:
        """Flag a running run for cancellation by whichever process runs its step."""
        async with self._write() as conn:
            result = await conn.execute(
                S.runs.update()
                .where(S.runs.c.id == run_id, S.runs.c.status == "running")
                .values(cancel_requested=True)
            )
            row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            if result.rowcount:
                await self._notify(conn, run_id, row.revision, flag=True)
        return RunRow.from_row(row)

    async def clock(self) -> float:
        """The database's current time (`db_now()`, UTC epoch seconds): what timers are set
        and judged by, as leases are, whichever host asks."""
        if self.in_memory:
            return _now()  # the same clock as `db_now()` here, without a query
        async with self._reader.connect() as conn:
            value: Any = await conn.scalar(sa.select(db_now()))
        return float(value)

    async def due(self, now: float, limit: int = 100) -> builtins.list[RunRow]:
        """Sleeping runs whose wake-up time has come by `now` (or whose cancel was requested
        while their last step released them), and suspended runs whose `Receive` timed out,
        earliest first."""
        query = (
            sa.select(S.runs)
            .where(
                sa.or_(
                    sa.and_(
                        S.runs.c.status == "sleeping",
                        sa.or_(S.runs.c.wake_at <= now, S.runs.c.cancel_requested),
                    ),
                    sa.and_(S.runs.c.status == "suspended", S.runs.c.wake_at <= now),
                )
            )
            .order_by(S.runs.c.wake_at, S.runs.c.id)
            .limit(limit)
        )
        async with self._reader.connect() as conn:
            return [RunRow.from_row(r) for r in await conn.execute(query)]

    async def next_wake(self, after: float) -> float | None:
        """The earliest wake-up time of a sleeping run (or a suspended run's `Receive`
        timeout) later than `after`, if any."""
        query = sa.select(sa.func.min(S.runs.c.wake_at)).where(
            S.runs.c.status.in_(("sleeping", "suspended")), S.runs.c.wake_at > after
        )
        async with self._reader.connect() as conn:
            value = await conn.scalar(query)
        return None if value is None else float(value)

    async def recoverable(self, owner: str) -> builtins.list[RunRow]:
        """Running runs whose step has no live owner: the lease is ours (a previous life of
        this owner), absent, or expired by the database's clock."""
        query = (
            sa.select(S.runs)
            .where(S.runs.c.status == "running", S.runs.c.parked.is_(None), _unleased(owner))
            .order_by(S.runs.c.created_at, S.runs.c.id)
        )
        async with self._reader.connect() as conn:
            return [RunRow.from_row(r) for r in await conn.execute(query)]

    async def lease_expired(self, row: RunRow) -> bool:
        """Whether the row's lease (as read) has expired by the database's clock."""
        if row.lease_expires is None:
            return True
        async with self._reader.connect() as conn:
            now = await conn.scalar(sa.select(db_now()))
        return now is not None and row.lease_expires < now

    # -- owners ---------------------------------------------------------------------------

    async def claim_owner(
        self,
        owner: str,
        token: str,
        *,
        host: str,
        pid: int,
        lease: float,
        gone: Callable[[OwnerRow], bool],
    ) -> OwnerRow | None:
        """Claim `owner` for the runner `token` for `lease` seconds (by the database's clock).
        Returns None when claimed, or the live holder that keeps it. The current holder is
        replaced when it is `token` itself, its claim has expired, or `gone(holder)`."""
        values = {
            "token": token,
            "host": host,
            "pid": pid,
            "started_at": _now(),
            "expires": db_now() + lease,
        }
        while True:
            try:
                async with self._write() as conn:
                    # FOR UPDATE on PostgreSQL (SQLite holds the write lock already): of two
                    # claimants of one expired claim, the second sees the first's.
                    found = (await conn.execute(_owner_query(owner).with_for_update())).first()
                    if found is None:
                        await conn.execute(S.owners.insert().values(owner=owner, **values))
                        return None
                    holder = OwnerRow.from_row(found)
                    if holder.token != token and holder.expires_in >= 0 and not gone(holder):
                        return holder
                    await conn.execute(
                        S.owners.update().where(S.owners.c.owner == owner).values(values)
                    )
                    return None
            except IntegrityError:
                continue  # another runner inserted the first claim meanwhile: judge it
            except sa.exc.DBAPIError as err:  # the first write of a runner: say why plainly
                raise ConfigurationError(
                    f"cannot use the store {self.url}: {_reason(err)}"
                ) from err

    async def renew_owner(self, owner: str, token: str, lease: float) -> bool:
        """Extend the claim of `owner` by runner `token`; False if it no longer holds it."""
        async with self._write() as conn:
            result = await conn.execute(
                S.owners.update()
                .where(S.owners.c.owner == owner, S.owners.c.token == token)
                .values(expires=db_now() + lease)
            )
            return result.rowcount == 1

    async def owner_holder(self, owner: str) -> OwnerRow | None:
        """The current claim of `owner`, if any."""
        async with self._reader.connect() as conn:
            found = (await conn.execute(_owner_query(owner))).first()
        return OwnerRow.from_row(found) if found is not None else None

    async def others_alive(self, owner: str) -> bool:
        """Whether a runner other than `owner` holds a live claim on this store (one that
        may change runs: every runner claims an owner)."""
        query = sa.select(sa.func.count()).where(
            S.owners.c.owner != owner, S.owners.c.expires > db_now()
        )
        async with self._reader.connect() as conn:
            return bool(await conn.scalar(query))

    async def release_owner(self, owner: str, token: str) -> None:
        """Give the claim back (an orderly stop): the next runner of `owner` starts at once."""
        async with self._write() as conn:
            await conn.execute(
                S.owners.delete().where(S.owners.c.owner == owner, S.owners.c.token == token)
            )

    async def _conflict(self, conn: AsyncConnection, run_id: str, revision: int) -> Exception:
        row = (await conn.execute(sa.select(S.runs).where(S.runs.c.id == run_id))).first()
        if row is None:
            return RunNotFound(f"no run with id {run_id!r}")
        m = row._mapping
        holder = f", leased by {m['lease_owner']}" if m["lease_owner"] else ""
        return ConflictError(
            f"run {run_id!r} was changed by another task or process: expected revision "
            f"{revision}, found revision {m['revision']} ({m['status']}{holder})"
        )


def _unleased(owner: str) -> sa.ColumnElement[bool]:
    # A run's step has no live holder but `owner`: no lease, our own, or expired by the
    # database's clock.
    return sa.or_(
        S.runs.c.lease_owner.is_(None),
        S.runs.c.lease_owner == owner,
        S.runs.c.lease_expires < db_now(),
    )


async def _drop(conn: AsyncConnection) -> None:
    """Give a connection whose driver connection was lost back to the pool as invalid."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


def _reason(err: BaseException) -> str:
    """What the driver said, on one line, without SQLAlchemy's statement and link."""
    cause = err.orig if isinstance(err, sa.exc.DBAPIError) and err.orig is not None else err
    text = " ".join(str(cause).split()) or type(cause).__name__
    if "readonly" in text or "read-only" in text:
        text += " (the store must be writable: the runner records its owner and migrates)"
    return text


def _owner_query(owner: str) -> sa.Select[Any]:
    return sa.select(S.owners, (S.owners.c.expires - db_now()).label("expires_in")).where(
        S.owners.c.owner == owner
    )
