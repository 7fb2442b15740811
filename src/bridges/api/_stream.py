"""A run's event stream over Server-Sent Events: a snapshot, then the run's and its tree's changes.

The state comes from the runner: `get` and `task_tree` for the snapshot, then
`runner.subscribe` and `runner.subscribe_tasks`, which in this process see every change and
from other processes are woken by PostgreSQL LISTEN/NOTIFY. The stream keeps only the newest
run and the newest tree not yet sent (two slots, not a queue), so a slow client skips states
instead of falling behind, and the runner never waits for a client.

Event ids are `<revision>.<tree digest>`: a client reconnecting with `Last-Event-ID` whose
digest is the current tree's gets the snapshot without the tree (`tasks_unchanged`), which is
the part that can be large. The digest is a hash of the tree's content, so a tree rebuilt in
another process after a crash, whatever its version number, is only skipped if it is the same.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from effects.durable import DurableRunner, Run
from effects.tasks import TaskSnapshot

from ._models import EndEvent, PingEvent, RunEvent, RunOut, SnapshotEvent, TasksEvent

NO_TREE = "0"


def tree_digest(tree: TaskSnapshot | None) -> str:
    """A short hash of a tree's content (`NO_TREE` for none)."""
    if tree is None:
        return NO_TREE
    text = json.dumps(tree.to_dict(), separators=(",", ":"), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=9).hexdigest()


def last_digest(last_event_id: str | None) -> str | None:
    """The tree digest named by a `Last-Event-ID`, if it has the form of one."""
    if not last_event_id or len(last_event_id) > 64:
        return None
    _, dot, digest = last_event_id.partition(".")
    return digest if dot and digest else None


def sse(event: str, data: BaseModel, event_id: str | None = None) -> bytes:
    """One Server-Sent Event with a one-line JSON `data:`."""
    body = data.model_dump_json()
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


class RunStream:
    """The ASGI response streaming one run's events until it ends or the client leaves.

    `release` is called once the stream is over (the API counts open streams)."""

    def __init__(
        self,
        runner: DurableRunner,
        run: Run,
        tree: TaskSnapshot | None,
        last_event_id: str | None,
        *,
        heartbeat: float,
        release: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.run = run
        self.tree = tree
        self.last_event_id = last_event_id
        self.heartbeat = heartbeat
        self.release = release
        # What was sent last, and the newest not yet sent.
        self._sent_run: Run = run
        self._sent_digest = tree_digest(tree)
        self._run: Run | None = None
        self._tree: TaskSnapshot | None = None
        self._runs_over = False
        self._trees_over = False
        self._wake = anyio.Event()

    def _id(self) -> str:
        return f"{self._sent_run.revision}.{self._sent_digest}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-store"),
                        (b"x-accel-buffering", b"no"),
                        (b"x-content-type-options", b"nosniff"),
                    ],
                }
            )
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                tg.start_soon(self._follow_run)
                tg.start_soon(self._follow_tasks)
                await self._write(send)
                tg.cancel_scope.cancel()
        finally:
            self.release()

    async def _follow_run(self) -> None:
        try:
            async with self.runner.subscribe(self.run.id) as runs:
                async for run in runs:
                    self._run = run
                    self._wake.set()
        finally:
            self._runs_over = True
            self._wake.set()

    async def _follow_tasks(self) -> None:
        try:
            async with self.runner.subscribe_tasks(self.run.id) as trees:
                async for tree in trees:
                    self._tree = tree
                    self._wake.set()
        finally:
            self._trees_over = True
            self._wake.set()

    async def _write(self, send: Send) -> None:
        async def emit(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await emit(b"retry: 1000\n\n")
        unchanged = self.tree is not None and last_digest(self.last_event_id) == self._sent_digest
        snapshot = SnapshotEvent(
            run=RunOut.of(self.run),
            tasks=None if unchanged else self.tree,
            tasks_unchanged=unchanged,
        )
        await emit(sse("snapshot", snapshot, self._id()))
        while True:
            if not self._pending():
                if self._runs_over and self._trees_over:
                    break
                with anyio.move_on_after(self.heartbeat if self.heartbeat > 0 else math.inf):
                    await self._wake.wait()
                self._wake = anyio.Event()
                if not self._pending() and not (self._runs_over and self._trees_over):
                    await emit(sse("ping", PingEvent()))
                    continue
            for name, event in self._take():
                await emit(sse(name, event, self._id()))
        await emit(sse("end", EndEvent(run=RunOut.of(self._sent_run)), self._id()))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _pending(self) -> bool:
        return self._run is not None or self._tree is not None

    def _take(self) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        run, self._run = self._run, None
        if run is not None and _newer(run, self._sent_run):
            self._sent_run = run
            events.append(("run", RunEvent(run=RunOut.of(run))))
        tree, self._tree = self._tree, None
        if tree is not None:
            digest = tree_digest(tree)
            if digest != self._sent_digest:
                self._sent_digest = digest
                events.append(("tasks", TasksEvent(tasks=tree)))
        return events


def _newer(run: Run, sent: Run) -> bool:
    # A cancel request flagged on a running step keeps the revision: it counts as a change.
    return run.revision > sent.revision or (
        run.revision == sent.revision and run.cancel_requested != sent.cancel_requested
    )
