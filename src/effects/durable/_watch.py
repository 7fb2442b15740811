"""Following a run with a callback instead of a task: `RunWatch` and `TaskWatch`.

`Subscription` and `TaskSubscription` are async iterators: whoever follows a run holds a task
parked on them. A server following thousands of runs (a live page per run, say) pays a task,
its cancel scope and an event per run for it. A watch is the same registration without the
task: the runner calls `on_run(run)` / `on_tree(tree)` synchronously, from wherever it learns
of the change (the step that committed it, or the task that listens for other processes'
notifications), with the same filtering as the iterators — a snapshot only when it is newer
than the last one handed over, nothing after the final one.

The callback runs inside the runner's own work: it must be quick and must not block (hand the
snapshot to a queue, set an event, `Page.send_info`). An exception it raises is logged and
otherwise ignored: one listener cannot break a step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..tasks import TaskSnapshot
from ._run import Run

if TYPE_CHECKING:
    from ._runner import DurableRunner

logger = logging.getLogger("effects.durable")


class _Seen:
    """What a watch remembers of the last snapshot it handed over: enough to order the next
    ones (the runner reads `revision` to tell whether a notification is news), not the
    snapshot itself, which its listener keeps if it wants it."""

    __slots__ = ("cancel_requested", "revision")

    def __init__(self, run: Run) -> None:
        self.revision = run.revision
        self.cancel_requested = run.cancel_requested


class RunWatch:
    """Calls `on_run(run)` with every newer committed snapshot of one run (see
    `DurableRunner.watch`). It stops by itself after the snapshot of a finished run; `close()`
    stops it earlier. It holds no task and no event."""

    __slots__ = ("_closed", "_latest", "_on_run", "_runner", "run_id")

    def __init__(self, runner: DurableRunner, run_id: str, on_run: Callable[[Run], None]) -> None:
        self._runner = runner
        self.run_id = run_id
        self._on_run = on_run
        self._latest: _Seen | None = None  # read by the runner: is a notification news?
        self._closed = False
        runner._subscribers.setdefault(run_id, set()).add(self)  # type: ignore[arg-type]

    @property
    def closed(self) -> bool:
        """Whether the watch has stopped (closed, or the run finished, or the runner closed)."""
        return self._closed

    def offer(self, run: Run) -> None:
        """Hand `run` to the callback if it is newer than the last snapshot handed over (use
        it for a snapshot read after the watch was registered: nothing is missed in between,
        and nothing goes backwards)."""
        self._offer(run)

    def _offer(self, run: Run) -> None:
        if self._closed:
            return
        latest = self._latest
        # As `Subscription._offer`: a cancel request keeps the revision, so an equal revision
        # counts when the flag moved.
        if not (
            latest is None
            or run.revision > latest.revision
            or (run.revision == latest.revision and run.cancel_requested != latest.cancel_requested)
        ):
            return
        self._latest = _Seen(run)
        try:
            self._on_run(run)
        except Exception:
            logger.exception("run %s: a watch callback failed", self.run_id)
        if run.finished:
            self._close()

    def close(self) -> None:
        """Stop calling the callback."""
        self._close()

    def _close(self) -> None:
        self._closed = True
        subs = self._runner._subscribers.get(self.run_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._runner._subscribers[self.run_id]


class TaskWatch:
    """Calls `on_tree(tree)` with every newer task tree of one run (see
    `DurableRunner.watch_tasks`), from this process's steps at every change and from other
    processes' stored copies (PostgreSQL NOTIFY). It stops by itself after the tree of a
    finished run; `close()` stops it earlier. It holds no task and no event."""

    __slots__ = ("_closed", "_final", "_on_tree", "_runner", "_version", "run_id")

    def __init__(
        self, runner: DurableRunner, run_id: str, on_tree: Callable[[TaskSnapshot], None]
    ) -> None:
        self._runner = runner
        self.run_id = run_id
        self._on_tree = on_tree
        self._version = 0  # the newest stored version offered
        self._final = False
        self._closed = False
        runner._task_subscribers.setdefault(run_id, set()).add(self)  # type: ignore[arg-type]

    @property
    def stored_version(self) -> int:
        """The newest version of the stored tree this watch has been offered."""
        return self._version

    @property
    def ended(self) -> bool:
        """Whether it was offered the tree of the finished run, or closed (nothing follows)."""
        return self._final or self._closed

    def _offer(
        self, snapshot: TaskSnapshot | None, version: int | None, final: bool, *, local: bool
    ) -> None:
        if self._closed:
            return
        if snapshot is None or (not local and (version is None or version <= self._version)):
            # No tree, or a stored copy this watch has had: only the end of the run is news.
            if final and (snapshot is None or version == self._version):
                self._close()
            return
        if version is not None:
            self._version = max(self._version, version)
        self._final = final
        try:
            self._on_tree(snapshot)
        except Exception:
            logger.exception("run %s: a task watch callback failed", self.run_id)
        if final:
            self._close()

    def close(self) -> None:
        """Stop calling the callback."""
        self._close()

    def _close(self) -> None:
        self._closed = True
        subs = self._runner._task_subscribers.get(self.run_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._runner._task_subscribers[self.run_id]
