"""`Worker`: serves durable queues in one process (`DurableRunner.work`, `python -m effects
worker`).

The loop: claim what the limits allow (see `_queues.claim`), run each claimed run's step in a
task of its own, and wait until something changes: a run of ours stopped executing (a slot is
free), a NOTIFY says a run was enqueued (or a slot freed elsewhere in a limited queue), a rate
limit's window moves, or `poll` seconds passed (the fallback when notifications are lost or the
store is SQLite).

A claimed run occupies a slot of this worker only while its step executes: when it suspends
for input, sleeps on a long timer, or ends, the slot is free. A suspended run is resumed by
whoever answers it (`DurableRunner.resume`, in any process), not by a worker.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .._computation import registered_names
from .._exceptions import ConfigurationError
from ._queues import Queue, claim, ensure_queue, slot_freed, unclaim
from ._store import RunRow

if TYPE_CHECKING:
    from ._runner import DurableRunner

logger = logging.getLogger("effects.durable")


class Worker:
    """Claims and runs the queued runs of `queues` with `runner`, at most `concurrency` at
    once. Use `DurableRunner.work(...)`, which builds one and runs it until cancelled."""

    def __init__(
        self,
        runner: DurableRunner,
        queues: Sequence[str | Queue],
        *,
        concurrency: int = 8,
        poll: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("a worker's concurrency must be at least 1")
        if not poll > 0:
            raise ConfigurationError("poll must be a positive number of seconds")
        self.runner = runner
        self.queues = [q if isinstance(q, Queue) else Queue(q) for q in queues]
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"a queue is listed twice: {names}")
        self.concurrency = concurrency
        self.poll = poll
        self.active: Counter[str] = Counter()
        self._changed = anyio.Event()
        # Runs this worker could not begin or take over: not claimed again, so a run that only
        # a differently deployed worker can run does not keep this one busy.
        self._skip: set[str] = set()
        # When to look for runs whose worker died next (monotonic): every quarter lease, not
        # at every claim (a claim of fresh runs alone is one statement on PostgreSQL).
        self._next_takeover = 0.0

    def _wake(self, queue: str | None) -> None:
        if queue is None or any(q.name == queue for q in self.queues):
            self._changed.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the queues until cancelled (the runs in flight then stop as in a crash and
        are taken over after their lease expires, or at once by `recover()` of the same
        owner)."""
        runner = self.runner
        store = runner.store
        for q in self.queues:
            await ensure_queue(store, q.name)
        runner._queue_wakers.add(self._wake)
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    # Reset before claiming: a wake-up during the claim is not lost.
                    self._changed = anyio.Event()
                    delay = self.poll
                    now = anyio.current_time()
                    takeover = now >= self._next_takeover
                    if takeover:
                        self._next_takeover = now + self.runner.lease / 4
                    for q in self.queues:
                        retry = await self._claim(tg, q, takeover)
                        if retry is not None:
                            delay = min(delay, retry)
                    delay = min(delay, max(self._next_takeover - anyio.current_time(), 0.0))
                    with anyio.move_on_after(delay):
                        await self._changed.wait()
        finally:
            runner._queue_wakers.discard(self._wake)

    async def _claim(self, tg: anyio.abc.TaskGroup, q: Queue, takeover: bool) -> float | None:
        free = self.concurrency - sum(self.active.values())
        if q.worker_concurrency is not None:
            free = min(free, q.worker_concurrency - self.active[q.name])
        if free <= 0:
            return None
        runner = self.runner
        try:
            # Shielded: a claim cut off by shutdown would leave its connection to a task of
            # SQLAlchemy's own (see the runner's timer loop); claimed runs still get a step.
            with anyio.CancelScope(shield=True):
                got = await claim(
                    runner.store,
                    q,
                    owner=runner.owner,
                    lease=runner.lease,
                    want=free,
                    names=registered_names(),
                    skip=list(self._skip),
                    stale=takeover,
                )
        except Exception as err:
            logger.warning("queue %s: could not claim runs: %s", q.name, err)
            return None
        for row in got.taken_over:
            self.active[q.name] += 1
            tg.start_soon(self._take_over, q, row)
        for row in got.fresh:
            self.active[q.name] += 1
            tg.start_soon(self._begin, q, row)
        # A full claim may leave more to claim: look again at once.
        if len(got.taken_over) + len(got.fresh) == free:
            self._changed.set()
        return got.retry_in

    async def _begin(self, q: Queue, row: RunRow) -> None:
        runner = self.runner
        try:
            try:
                await runner._run_claimed(row)
            except (ConfigurationError, LookupError) as err:
                # Not registered in the version this run needs, or a handler failed to
                # install: nothing ran; give the run back to the queue.
                logger.warning("queued run %s cannot run in this worker: %s", row.id, err)
                self._skip.add(row.id)
                with anyio.CancelScope(shield=True):
                    await unclaim(runner.store, row, owner=runner.owner)
        except Exception:
            logger.exception("queued run %s: the step failed", row.id)
        finally:
            await self._done(q)

    async def _take_over(self, q: Queue, row: RunRow) -> None:
        runner = self.runner
        try:
            run = await runner._recover_isolated(row)
            if run is None:
                with anyio.CancelScope(shield=True):
                    now = await runner.store.get(row.id)
                if (
                    now.status == "running"
                    and now.lease_owner is None
                    and now.recovery_attempts <= row.recovery_attempts
                ):
                    # Released uncounted: the code deployed here cannot run it.
                    self._skip.add(row.id)
        except Exception:
            logger.exception("queued run %s: taking it over failed", row.id)
        finally:
            await self._done(q)

    async def _done(self, q: Queue) -> None:
        self.active[q.name] -= 1
        self._changed.set()
        if q.limited:
            try:
                with anyio.CancelScope(shield=True):
                    await slot_freed(self.runner.store, q.name)
            except Exception as err:  # the others poll
                logger.warning("queue %s: could not announce a free slot: %s", q.name, err)
