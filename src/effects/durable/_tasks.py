"""Task trees of durable runs: the runner's `TaskTree` for each step, its throttled copy in the
store, and `TaskSubscription` (following a run's tree from any process).

The runner installs a `TaskTree` (outermost) around every step it runs. Each change is handed
at once to this process's listeners (the runner's `on_tasks` hook, local subscriptions) and
copied to the store (`_task_store`) at most once per `interval` and once more when the step
ends — a final, *settled* copy whose root says how the run ended. A reader in another process
is told of each copy by NOTIFY (PostgreSQL) and reads it; a reader after a restart reads it.

The tree itself is never replayed from the store: a step rebuilds it from the run's log
(`TaskTree` is replayable: same node ids, same line numbers), so a run taken over after a crash
continues with the tree its log implies and its copy replaces the dead process's — lines are
not appended twice. The stored copy may lag the live tree by one `interval`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..tasks import TaskSnapshot, TaskTree
from ._task_store import settle

if TYPE_CHECKING:
    from ._runner import DurableRunner

logger = logging.getLogger("effects.durable")

Offer = Callable[["TaskSnapshot | None", "int | None", bool, bool], None]
"""`offer(snapshot, stored_version, final, fresh)`: hand a tree to this process's listeners
(`fresh`: not handed to them before; `final`: the run ended, nothing follows; `snapshot`
None: the run has no tree, only `final` is news)."""


def is_empty(snapshot: TaskSnapshot) -> bool:
    """A tree that reported nothing: only the root, without output or progress. Runs of
    computations that use no task effects get no stored tree."""
    root = snapshot.root
    return (
        len(snapshot.nodes) == 1
        and not root.lines
        and not root.partial
        and not root.dropped
        and root.current == 0
        and root.total is None
    )


class StepTasks:
    """The task tree of one step of a run in this process and its copy in the store."""

    def __init__(
        self,
        run_id: str,
        *,
        save: Callable[[TaskSnapshot], Awaitable[int | None]],
        offer: Offer,
        interval: float,
    ) -> None:
        self.run_id = run_id
        self.tree: TaskTree | None = None  # the installed handler (once the step is built)
        self.reported: TaskSnapshot | None = None  # the newest snapshot handed to listeners
        self._saved: TaskSnapshot | None = None
        self._save = save
        self._offer = offer
        self.interval = interval
        self._wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._closed = False
        self._tg: anyio.abc.TaskGroup | None = None

    def changed(self, snapshot: TaskSnapshot) -> None:
        """The tree changed (called synchronously by the handler)."""
        if self._closed or (self.reported is None and is_empty(snapshot)):
            # Nothing to show yet (a step ending with no task, progress or output only moves
            # the root): listeners are not handed an empty tree, which would hide the tree
            # of a `TaskTree` installed further in (such as `TasksHub.handler()`).
            return
        self.reported = snapshot
        self._offer(snapshot, None, False, True)
        self._wake.set()
        if self._stopped is None:
            self._start()

    def activate(self, tg: anyio.abc.TaskGroup) -> None:
        """The step holds the run: copy its tree to the store from now on. The task copying
        it starts with the tree's first change (most runs of a worker never report any)."""
        if not self._closed:
            self._tg = tg
            if self.reported is not None:
                self._start()

    def _start(self) -> None:
        if self._stopped is None and self._tg is not None and not self._closed:
            self._stopped = anyio.Event()
            self._scope = anyio.CancelScope()
            self._tg.start_soon(self._publish)

    async def _publish(self) -> None:
        assert self._scope is not None
        assert self._stopped is not None
        try:
            with self._scope:
                while True:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    with anyio.CancelScope(shield=True):
                        await self._copy(final=False, status="running", error=None)
                    # The throttle: changes meanwhile are copied together at the next round.
                    await anyio.sleep(self.interval)
        finally:
            self._stopped.set()

    async def close(self, status: str, error: str | None) -> None:
        """The step ended with the run at `status`: write the final copy — settled to the
        run's status if it ended — and hand it to the listeners."""
        if self._closed:
            return
        if self._scope is not None and self._stopped is not None:
            self._scope.cancel()
            await self._stopped.wait()
        self._closed = True
        await self._copy(final=True, status=status, error=error)

    async def _copy(self, *, final: bool, status: str, error: str | None) -> None:
        tree = self.tree
        if tree is None:
            return
        if final:
            snapshot = tree.snapshot()
            if self.reported is not None and snapshot.version == self.reported.version:
                snapshot = self.reported  # unchanged: the very object (compared below)
            snapshot = settle(snapshot, status, error)
        elif self.reported is not None:
            snapshot = self.reported  # never a tree still being rebuilt by replay
        else:
            return
        ended = status in ("done", "failed", "cancelled")
        version: int | None = None
        if snapshot is not self._saved and not (is_empty(snapshot) and self._saved is None):
            try:
                version = await self._save(snapshot)
            except Exception as err:  # the live tree goes on; the next copy may succeed
                logger.warning("run %s: could not store its task tree: %s", self.run_id, err)
            else:
                if version is not None:
                    self._saved = snapshot
        if final:
            if self.reported is None and self._saved is None and is_empty(snapshot):
                self._offer(None, None, ended, False)  # no tree: subscriptions learn the end
                return
            fresh = snapshot is not self.reported
            self.reported = snapshot
            self._offer(snapshot, version, ended, fresh)


class StepTaskTree(TaskTree):
    """The `TaskTree` a `DurableRunner` installs around each step of a run.

    A tree rebuilt by replay is reported once, whole, at the first of: its first live change,
    the step's suspension, the step's end (otherwise a recovered run that fails or waits for
    input at once would show no tree in this process).
    """

    def __init__(self, tasks: StepTasks, *, max_lines: int) -> None:
        super().__init__(None, max_lines=max_lines, report_rebuilt=True)
        self._tasks = tasks

    def install(self) -> StepTaskTree:
        inst: StepTaskTree = super().install()  # type: ignore[assignment]
        inst.on_change = self._tasks.changed
        self._tasks.tree = inst
        return inst


class TaskSubscription:
    """Follows one run's task tree: an async iterator of `TaskSnapshot`s — the current tree
    first (as soon as the run has one), then each newer one — ending after the tree of a run
    that finished (done, failed, cancelled: its root says which).

    Trees of a step running in this process arrive at every change; trees of a step running in
    another process arrive as that process stores them (at most every `task_interval`), through
    PostgreSQL NOTIFY (without NOTIFY, SQLite or psycopg: read every `follow_poll` seconds). A
    slow reader skips intermediate trees (it always gets the newest). Use it as
    `async with runner.subscribe_tasks(id) as trees` or iterate it directly (then `aclose()`
    it if you stop early).
    """

    def __init__(self, runner: DurableRunner, run_id: str) -> None:
        self._runner = runner
        self.run_id = run_id
        self._latest: TaskSnapshot | None = None
        self._seen: TaskSnapshot | None = None
        self._final = False
        self._version = 0  # the newest stored version offered
        self._changed = anyio.Event()
        self._fetched = False
        self._closed = False
        runner._task_subscribers.setdefault(run_id, set()).add(self)

    @property
    def stored_version(self) -> int:
        """The newest version of the stored tree this subscription has been offered."""
        return self._version

    @property
    def ended(self) -> bool:
        """Whether it was offered the tree of the finished run (nothing follows)."""
        return self._final or self._closed

    def _offer(
        self, snapshot: TaskSnapshot | None, version: int | None, final: bool, *, local: bool
    ) -> None:
        if snapshot is None:
            if final and not self._final:
                self._final = True  # a run without a tree ended: nothing will come
                self._changed.set()
            return
        if not local and (version is None or version <= self._version):
            if final and version == self._version and not self._final:
                # The copy held is the last one: the run has ended since it was read.
                self._final = True
                self._changed.set()
            return  # a copy this subscription has seen, or older than what it holds
        if version is not None:
            self._version = max(self._version, version)
        self._latest = snapshot
        self._final = final
        self._changed.set()

    def __aiter__(self) -> TaskSubscription:
        return self

    async def __anext__(self) -> TaskSnapshot:
        if self._closed:
            raise StopAsyncIteration
        if not self._fetched:
            self._fetched = True
            try:
                found, version, finished = await self._runner._current_tree(self.run_id)
            except BaseException:
                await self.aclose()
                raise
            if self._latest is None and found is not None:
                self._offer(found, version, finished, local=True)
            elif found is None and finished:
                await self.aclose()
                raise StopAsyncIteration
        while self._latest is None or self._latest is self._seen:
            if self._final:
                await self.aclose()
                raise StopAsyncIteration
            await self._changed.wait()
            self._changed = anyio.Event()
            if self._closed:
                raise StopAsyncIteration
        snapshot = self._latest
        self._seen = snapshot
        if self._final:
            await self.aclose()
        return snapshot

    async def aclose(self) -> None:
        """Stop following the tree (a reader waiting for the next one stops too)."""
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._changed.set()
        subs = self._runner._task_subscribers.get(self.run_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._runner._task_subscribers[self.run_id]

    async def __aenter__(self) -> TaskSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
