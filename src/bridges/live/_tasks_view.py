"""Task trees on pages: the hub that routes a run's `TaskTree` snapshots to the pages showing
that run, and the regions that render them (progress bars and output lines).

The app's `DurableRunner` keeps every run's tree (a `TaskTree` of its own around each step)
and hands this process's changes to the hub (`on_tasks=hub.publish`): they reach pages without
waiting for the store. Run pages also follow the runner (`task_tree`, `subscribe_tasks`), which
brings the trees of runs running in other processes (through the store and PostgreSQL NOTIFY)
and of runs finished before a restart (the stored copy). Trees never run ahead of what is
durable: a checkpoint is written before the computation continues past an external effect, so
when a task reports progress, everything it did before is already committed.

`TasksHub.handler()` is a `TaskTree` that publishes to the hub directly, for runners that do
not keep trees themselves (installed in a `DurableRunner`, it takes the effects before the
runner's own tree, which then stores nothing).

A tree rebuilt by replay (a step continued by `recover()`, a cold resume) is reported once,
whole, at the first of: its first live change, the step's suspension, the step's end. The
tree's root is the run itself, and the handler cannot tell how its run ended (a failure, a
cancel, or a process stopping as in a crash all look alike to it): the bridge, which sees the
run's final status, makes the root follow it with `TasksHub.end`.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from effects.durable import Run, current_run_id
from effects.tasks import ROOT, OutputLine, TaskSnapshot, TaskStatus, TaskTree

Listener = Callable[[str, TaskSnapshot], None]

# The run a step is being started, resumed or cancelled for. The runner builds a step's
# handlers inside these calls, in the caller's task, so the hub's `TaskTree` learns its run id
# when it is installed.
_current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bridges_live_current_run", default=None
)


@contextmanager
def acting_on(run_id: str) -> Iterator[None]:
    """Mark the enclosed runner calls (start/resume/cancel) as being about `run_id`."""
    token = _current_run.set(run_id)
    try:
        yield
    finally:
        _current_run.reset(token)


class _HubTaskTree(TaskTree):
    def __init__(self, hub: TasksHub, *, title: str = "", max_lines: int = 200) -> None:
        # A recovered run that fails or waits for input at once still shows its tree here.
        super().__init__(None, title=title, max_lines=max_lines, report_rebuilt=True)
        self._hub = hub

    def install(self) -> _HubTaskTree:
        inst: _HubTaskTree = super().install()  # type: ignore[assignment]
        # A durable runner names the run it installs handlers for (also for steps that
        # recover() continues); the app's own marker covers runners that do not.
        run_id = current_run_id() or _current_run.get()
        if run_id:
            hub = self._hub
            inst.on_change = lambda snapshot: hub.publish(run_id, snapshot)
        else:
            inst.on_change = None
        return inst


class TasksHub:
    """Routes the task trees of the runs in this process to whoever listens.

    `publish` is the `on_tasks` hook of the app's `DurableRunner`; `handler()` a `TaskTree`
    that publishes here, for code that runs computations without one. `listen(run_id, fn)`
    calls `fn(run_id, snapshot)` on every change of that run (`run_id=None`: of every run);
    `latest(run_id)` is the newest snapshot kept (the trees of the last `keep` runs that
    reported are remembered).
    """

    def __init__(self, *, keep: int = 200) -> None:
        self.keep = keep
        self._latest: OrderedDict[str, TaskSnapshot] = OrderedDict()
        self._listeners: dict[str | None, set[Listener]] = {}

    def handler(self, *, title: str = "", max_lines: int = 200) -> TaskTree:
        """The `TaskTree` handler that publishes to this hub (keeping the newest `max_lines`
        lines per task: what a page shows)."""
        return _HubTaskTree(self, title=title, max_lines=max_lines)

    def publish(self, run_id: str, snapshot: TaskSnapshot) -> None:
        """Record `snapshot` as the newest of `run_id` and tell the listeners."""
        self._latest[run_id] = snapshot
        self._latest.move_to_end(run_id)
        while len(self._latest) > self.keep:
            self._latest.popitem(last=False)
        for key in (run_id, None):
            for listener in list(self._listeners.get(key, ())):
                listener(run_id, snapshot)

    def latest(self, run_id: str) -> TaskSnapshot | None:
        """The newest snapshot of `run_id` seen by this process, if any."""
        return self._latest.get(run_id)

    def end(self, run: Run) -> TaskSnapshot | None:
        """Make `run`'s tree follow its final status, once it is done, failed or cancelled:
        the root (the run itself) and every node still open get `completed`, `failed` (with
        the run's error) or `cancelled`, and the listeners are told. Returns the newest
        snapshot of the run (None if this process has none). The bridge calls it whenever it
        sees a run that ended; a `TaskTree` alone cannot tell a failure or a cancel from a
        process that stops as in a crash (after which the run goes on)."""
        snapshot = self._latest.get(run.id)
        status = _FINAL.get(str(run.status))
        if snapshot is None or status is None:
            return snapshot
        root = snapshot.root
        error = (root.error or _error_text(run)) if status == "failed" else None
        open_nodes = any(not n.finished for n in snapshot.nodes[1:])
        if root.status == status and root.error == error and not open_nodes:
            return snapshot
        nodes = tuple(
            dataclasses.replace(node, status=status, error=error)
            if node.id == ROOT
            else node
            if node.finished
            else dataclasses.replace(node, status=status)
            for node in snapshot.nodes
        )
        ended = TaskSnapshot(snapshot.version + 1, nodes)
        self.publish(run.id, ended)
        return ended

    def listen(self, run_id: str | None, listener: Listener) -> Callable[[], None]:
        """Call `listener(run_id, snapshot)` on changes; returns the function that stops it."""
        self._listeners.setdefault(run_id, set()).add(listener)

        def stop() -> None:
            listeners = self._listeners.get(run_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[run_id]

        return stop


_FINAL: dict[str, TaskStatus] = {"done": "completed", "failed": "failed", "cancelled": "cancelled"}


def _error_text(run: Run) -> str | None:
    if not run.error:
        return None
    kind = str(run.error.get("type", "")).rsplit(".", 1)[-1]
    message = str(run.error.get("message", ""))
    return f"{kind}: {message}" if kind and message else kind or message or None


def progress_of(snapshot: TaskSnapshot | None) -> float | None:
    """One number for a whole tree: the root's progress, else that of the newest task that
    has a total."""
    if snapshot is None:
        return None
    if snapshot.root.fraction is not None:
        return snapshot.root.fraction
    for node in reversed(snapshot.nodes):
        if node.fraction is not None and node.status == "running":
            return node.fraction
    return None


def output_lines(
    snapshot: TaskSnapshot | None, limit: int = 200
) -> tuple[list[tuple[str, OutputLine]], int]:
    """The tree's output lines in `seq` order with their task's title (the newest `limit`),
    and how many earlier lines are not included."""
    if snapshot is None:
        return [], 0
    lines: list[tuple[str, OutputLine]] = []
    dropped = 0
    for node in snapshot.nodes:
        title = node.title if node.id != ROOT else ""
        lines.extend((title, line) for line in node.lines)
        dropped += node.dropped
    lines.sort(key=lambda pair: pair[1].seq)
    if len(lines) > limit:
        dropped += len(lines) - limit
        lines = lines[-limit:]
    return lines, dropped


def task_context(snapshot: TaskSnapshot | None, limit: int = 200) -> dict[str, Any]:
    """Template context for `live/tasks.html` and `live/output.html`."""
    lines, dropped = output_lines(snapshot, limit)
    return {"tasks": snapshot, "lines": lines, "dropped": dropped}
