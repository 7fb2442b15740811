"""The stored copy of each run's task tree: one row per run in `effects_task_trees`.

The live tree is in the memory of the process that runs the run's step (`effects.tasks`). The
runner copies it here, throttled, so that other processes and later lives of this one can show
it: a page on any process, a finished run after a restart. Each write bumps the row's `version`
and, on PostgreSQL, announces `run_id:version` on `TASKS_CHANNEL` — a few hundred bytes at most
whatever the tree's size (PostgreSQL refuses payloads of 8,000 bytes and more); listeners read
the row.

A write is guarded: only the process whose step holds the run's lease, or whose step committed
the run's current revision, may replace the tree. A process that lost the run (its lease
expired and another took it over) cannot overwrite the newer process's tree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .._exceptions import RunNotFound
from ..tasks import ROOT, TaskSnapshot, TaskStatus
from . import _schema as S
from ._store import Store

logger = logging.getLogger("effects.durable")

TASKS_CHANNEL: Final = "effects_tasks"
"""PostgreSQL channel on which every write of a stored task tree is announced
(`run_id:version`; never the tree itself)."""

_FINAL: Final[dict[str, TaskStatus]] = {
    "done": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True, slots=True)
class StoredTree:
    """A run's stored tree (None if it reported none) with what a reader needs to judge it: the
    row's version (0 without a tree), and the status of the run it belongs to."""

    tree: TaskSnapshot | None
    version: int
    run_status: str
    run_error: str | None

    @property
    def finished(self) -> bool:
        """Whether the run is done, failed or cancelled (its tree changes no more)."""
        return self.run_status in _FINAL


def encode_tree(snapshot: TaskSnapshot) -> str:
    """The stored text of a tree (ASCII JSON: any text a task printed can be stored)."""
    return json.dumps(snapshot.to_dict(), separators=(",", ":"))


def decode_tree(text: str) -> TaskSnapshot:
    """Rebuild a stored tree."""
    return TaskSnapshot.from_dict(json.loads(text))


def error_text(error_json: str | None) -> str | None:
    """A run's stored error (`{"type", "message", ...}`) as the tree shows it: `Type: message`."""
    if not error_json:
        return None
    try:
        error = json.loads(error_json)
    except ValueError:
        return None
    if not isinstance(error, dict):
        return None
    kind = str(error.get("type", "")).rsplit(".", 1)[-1]
    message = str(error.get("message", ""))
    return f"{kind}: {message}" if kind and message else kind or message or None


def settle(snapshot: TaskSnapshot, run_status: str, error: str | None) -> TaskSnapshot:
    """The tree of a run that ended with `run_status`: the root (the run itself) and every node
    still open take the run's final status (`failed` with the run's error on the root). A run
    that has not ended keeps its tree as it is."""
    status = _FINAL.get(run_status)
    if status is None:
        return snapshot
    root = snapshot.root
    root_error = (root.error or error) if status == "failed" else None
    if (
        root.status == status
        and root.error == root_error
        and all(node.finished for node in snapshot.nodes[1:])
    ):
        return snapshot
    nodes = tuple(
        dataclasses.replace(node, status=status, error=root_error)
        if node.id == ROOT
        else node
        if node.finished
        else dataclasses.replace(node, status=status)
        for node in snapshot.nodes
    )
    return TaskSnapshot(snapshot.version + 1, nodes)


class TaskTrees:
    """Reads and writes the stored task trees of one `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def save(self, run_id: str, text: str, *, owner: str, revision: int) -> int | None:
        """Replace the run's stored tree with `text` if this writer may: its owner holds the
        run's lease, or `revision` is still the run's revision (the writer's step committed
        it). Returns the row's new version, or None when the write was refused or the run is
        gone."""
        store = self.store
        runs = S.runs
        guard = sa.select(runs.c.revision, runs.c.lease_owner, runs.c.status).where(
            runs.c.id == run_id
        )
        if store.dialect == "postgresql":
            # Held until commit: a takeover (which updates the row) waits for this write or
            # goes first, and then this write sees it and is refused.
            guard = guard.with_for_update(read=True)
        values = {"tree": text, "owner": owner, "updated_at": time.time()}
        insert = (postgresql.insert if store.dialect == "postgresql" else sqlite.insert)(
            S.task_trees
        )
        upsert = (
            insert.values(run_id=run_id, version=1, **values)
            .on_conflict_do_update(
                index_elements=[S.task_trees.c.run_id],
                set_={**values, "version": S.task_trees.c.version + 1},
            )
            .returning(S.task_trees.c.version)
        )
        async with store._write() as conn:
            found = (await conn.execute(guard)).first()
            if found is None:
                return None
            held = found.lease_owner == owner and found.status == "running"
            if not held and found.revision != revision:
                return None
            version = int((await conn.execute(upsert)).scalar_one())
            if store.dialect == "postgresql":
                # Delivered on commit. Only the id and version: the tree may be any size.
                await conn.execute(
                    sa.select(sa.func.pg_notify(TASKS_CHANNEL, f"{run_id}:{version}"))
                )
        return version

    async def load(self, run_id: str) -> StoredTree:
        """The run's stored tree, settled to the run's status (a process that died between
        the run's last commit and the tree's last write left the root `running`); its `tree` is
        None if the run has no stored tree. `RunNotFound` if there is no such run."""
        runs, trees = S.runs, S.task_trees
        query = (
            sa.select(runs.c.status, runs.c.error, trees.c.tree, trees.c.version)
            .select_from(runs.outerjoin(trees, trees.c.run_id == runs.c.id))
            .where(runs.c.id == run_id)
        )
        async with self.store._reader.connect() as conn:
            found = (await conn.execute(query)).first()
        if found is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        error = error_text(found.error)
        if found.tree is None:
            return StoredTree(None, 0, found.status, error)
        try:
            tree = settle(decode_tree(found.tree), found.status, error)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            # A damaged copy (edited by hand, say) must not break the run's page: shown as no
            # tree; the next step of the run writes a new one.
            logger.warning("run %s: its stored task tree cannot be read: %s", run_id, err)
            return StoredTree(None, int(found.version), found.status, error)
        return StoredTree(tree, int(found.version), found.status, error)
