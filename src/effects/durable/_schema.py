"""The SQL schema of the durable store (SQLAlchemy Core) and its migrations.

The tables below are always the *latest* schema. A fresh database gets them with `create_all`
and is stamped with `SCHEMA_VERSION`; an older database gets the `MIGRATIONS` steps after its
recorded version, in order. Changing a table therefore means two edits: the table here and a new
step at the end of `MIGRATIONS` (which bumps `SCHEMA_VERSION`).

Times are UTC epoch seconds in float columns: one portable, comparable form on SQLite and
PostgreSQL (lease expiry is compared in SQL). JSON is stored as text the library encodes itself,
so both dialects hold exactly the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

metadata = sa.MetaData()

schema_version = sa.Table(
    "effects_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)
"""One row per applied schema version; the highest is the database's version."""

runs = sa.Table(
    "effects_runs",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # {"parameter": json value}, encoded through the computation function's type hints.
    sa.Column("args", sa.Text, nullable=False),
    # running | suspended | sleeping | done | failed | cancelled
    sa.Column("status", sa.String(16), nullable=False),
    # The pending Yield's prompt (JSON) and the JSON schema of its `input` type, if any.
    sa.Column("prompt", sa.Text, nullable=True),
    sa.Column("input_schema", sa.Text, nullable=True),
    # An accepted answer not yet covered by a checkpoint: recovery resumes with it, so an
    # answer is not lost when the process dies right after `resume` took the lease.
    sa.Column("answer", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    # {"type": qualified name, "message": str, "traceback": str | None}
    sa.Column("error", sa.Text, nullable=True),
    # Bumped by every committed change; every write is guarded by the revision it read.
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.String(255), nullable=True),
    sa.Column("lease_expires", sa.Double, nullable=True),
    # Set by `cancel` from a process that does not run the step; the owner sees it at its
    # next checkpoint.
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # How many times `recover()` took over the run since its last committed progress; past
    # the runner's `max_recovery_attempts` the run is parked instead of retried.
    sa.Column("recovery_attempts", sa.Integer, nullable=False, server_default="0"),
    # Why recovery gave up on the run (it is skipped by `recover()` until `unpark`), or NULL.
    sa.Column("parked", sa.Text, nullable=True),
    # When a `sleeping` run is due (UTC epoch seconds, by the database's clock): any runner's
    # timer loop takes it then and continues it by replay.
    sa.Column("wake_at", sa.Double, nullable=True),
    # Durable queues: the queue a run was enqueued on (NULL for runs started directly), its
    # priority (lower first), its deduplication id (unique per queue), and when a worker
    # claimed it (by the database's clock; what a queue's rate limit counts).
    sa.Column("queue", sa.String(255), nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dedup_id", sa.String(255), nullable=True),
    sa.Column("claimed_at", sa.Double, nullable=True),
    sa.Index("effects_runs_status", "status", "created_at"),
    sa.Index("effects_runs_wake", "status", "wake_at"),
    sa.Index("effects_runs_queued", "queue", "status", "priority", "created_at"),
    sa.Index("effects_runs_claimed", "queue", "claimed_at"),
    sa.Index("effects_runs_dedup", "queue", "dedup_id", unique=True),
)
"""One row per durable run: what it is, where it is, who holds it."""

log = sa.Table(
    "effects_log",
    metadata,
    sa.Column(
        "run_id",
        sa.String(255),
        sa.ForeignKey("effects_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    # The LogEntry as JSON with the owning run's id prepended under "run" (so a row copied from
    # another run is recognised as foreign).
    sa.Column("entry", sa.Text, nullable=False),
)
"""The effect log of every run, one row per entry (rows of pruned loop iterations are deleted)."""


owners = sa.Table(
    "effects_owners",
    metadata,
    sa.Column("owner", sa.String(255), primary_key=True),
    # Random per runner instance: tells the live holder from a previous life of the same owner.
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    # By the database's clock, like leases: renewed by the holder's heartbeat.
    sa.Column("expires", sa.Double, nullable=False),
)
"""One row per owner held by a live runner (deleted when it stops in order)."""

queues = sa.Table(
    "effects_queues",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
)
"""One row per queue a worker has served: on PostgreSQL, workers claiming from a queue with a
global concurrency or rate limit lock its row (`FOR UPDATE`), so the limit holds across
processes; claims from unlimited queues only use `SKIP LOCKED` on the runs."""

task_trees = sa.Table(
    "effects_task_trees",
    metadata,
    sa.Column(
        "run_id",
        sa.String(255),
        sa.ForeignKey("effects_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Bumped by every write of the row, whoever writes it: readers in other processes compare
    # it (a tree rebuilt by a process that took the run over may have a lower tree version).
    sa.Column("version", sa.Integer, nullable=False),
    # `TaskSnapshot.to_dict()` as JSON (ASCII: lone surrogates and NULs escaped).
    sa.Column("tree", sa.Text, nullable=False),
    # The runner owner that wrote it, and when (the writing host's clock, for display).
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
"""The newest task tree of each run that reported one (throttled copy of the live tree)."""


messages = sa.Table(
    "effects_messages",
    metadata,
    # The order messages were sent in (per run and topic: the order they are delivered in).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "run_id",
        sa.String(255),
        sa.ForeignKey("effects_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("topic", sa.String(255), nullable=False),
    # The message as JSON (the library's own encoding, as the other JSON columns).
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("sent_at", sa.Double, nullable=False),
    sa.Index("effects_messages_run", "run_id", "topic", "id"),
)
"""Messages sent to runs (`DurableRunner.send`). A run has consumed as many messages of a topic
as its log records `Receive`s of that topic: the log, checkpointed, is what consumes one."""


@dataclass(frozen=True)
class Migration:
    """One schema change: applied in a transaction to databases older than `version`."""

    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _initial(conn: sa.Connection) -> None:
    # Version 1 is the first published schema: a database "older" than it is empty.
    metadata.create_all(conn, checkfirst=True)


def _recovery_attempts(conn: sa.Connection) -> None:
    # Additive: old rows get 0 attempts and are not parked. Same SQL on SQLite and PostgreSQL.
    conn.execute(
        sa.text(f"ALTER TABLE {runs.name} ADD COLUMN recovery_attempts INTEGER NOT NULL DEFAULT 0")
    )
    conn.execute(sa.text(f"ALTER TABLE {runs.name} ADD COLUMN parked TEXT"))


def _owners(conn: sa.Connection) -> None:
    owners.create(conn, checkfirst=True)


def _timers(conn: sa.Connection) -> None:
    # Additive: existing runs have no timer. Same SQL on SQLite and PostgreSQL; skipped parts
    # that exist already (tables created from this module's latest definitions).
    inspector = sa.inspect(conn)
    if "wake_at" not in {c["name"] for c in inspector.get_columns(runs.name)}:
        conn.execute(sa.text(f"ALTER TABLE {runs.name} ADD COLUMN wake_at DOUBLE PRECISION"))
    if "effects_runs_wake" not in {i["name"] for i in inspector.get_indexes(runs.name)}:
        conn.execute(sa.text(f"CREATE INDEX effects_runs_wake ON {runs.name} (status, wake_at)"))


def _queues(conn: sa.Connection) -> None:
    # Additive: existing runs belong to no queue (priority 0). Same SQL on both dialects;
    # parts that exist already are skipped.
    inspector = sa.inspect(conn)
    columns = {c["name"] for c in inspector.get_columns(runs.name)}
    for name, ddl in (
        ("queue", "VARCHAR(255)"),
        ("priority", "INTEGER NOT NULL DEFAULT 0"),
        ("dedup_id", "VARCHAR(255)"),
        ("claimed_at", "DOUBLE PRECISION"),
    ):
        if name not in columns:
            conn.execute(sa.text(f"ALTER TABLE {runs.name} ADD COLUMN {name} {ddl}"))
    indexes = {i["name"] for i in inspector.get_indexes(runs.name)}
    for index in runs.indexes:
        if index.name in ("effects_runs_queued", "effects_runs_claimed", "effects_runs_dedup"):
            if index.name not in indexes:
                index.create(conn)
    queues.create(conn, checkfirst=True)


def _task_trees(conn: sa.Connection) -> None:
    task_trees.create(conn, checkfirst=True)


def _messages(conn: sa.Connection) -> None:
    messages.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs and effect log", _initial),
    Migration(2, "recovery attempts and parked runs", _recovery_attempts),
    Migration(3, "owners: one live runner per owner", _owners),
    Migration(4, "durable timers: sleeping runs and their wake-up time", _timers),
    Migration(5, "durable queues: queue, priority, deduplication id, claim time", _queues),
    Migration(6, "task trees: the newest tree and output of each run", _task_trees),
    Migration(7, "messages sent to runs", _messages),
)
"""Every schema change in order; the last one's version is `SCHEMA_VERSION`."""

SCHEMA_VERSION = MIGRATIONS[-1].version
