"""Group commit: checkpoints that wait at the same moment are written in one transaction.

Many runs of one process checkpoint concurrently (a worker with eight runs, a server with a
hundred pages); committing them one by one costs a commit (and, on PostgreSQL, a round trip)
each. `GroupCommit` lets the first caller commit at once, alone (a lone run never waits for a
timer or for company), and collects everything that arrives while that commit is in flight;
when it is done, the next group, everything waiting at that moment, is committed as one
transaction by one of its members (the *leader*), and so on.

Each caller's `submit` returns only once the transaction holding its item committed (or raises
its own error), so a run never continues (never performs its next external effect) before its
checkpoint is durable. A group is one transaction: after a crash either all of its checkpoints
are in the store or none is, and none of its runs went on. How one member's failure is kept
from failing the others is the `flush` function's business (savepoints on SQLite, a retry one
by one on PostgreSQL); it returns one result or exception per item.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


class _Waiter(Generic[T, R]):
    __slots__ = ("done", "error", "event", "item", "key", "lead", "result")

    def __init__(self, item: T, key: Hashable) -> None:
        self.item = item
        self.key = key
        self.event = anyio.Event()
        self.done = False
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Commits items in groups with `flush(items) -> results` (one result or exception per
    item, in order). Items with the same key (one run's checkpoints) never share a group: the
    later one waits for the next, so a group holds at most one checkpoint per run.
    `max_group` bounds a group (a statement's parameters, a transaction's length)."""

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_group: int = 500,
    ) -> None:
        self._flush = flush
        self.max_group = max_group
        self._queue: list[_Waiter[T, R]] = []
        self._busy = False
        self.groups = 0
        """How many groups were flushed (for tests and benchmarks)."""

    @property
    def waiting(self) -> int:
        """Items waiting for a group."""
        return len(self._queue)

    async def submit(self, item: T, key: Hashable) -> R:
        """Commit `item` in the next group; its result, or its error raised."""
        me: _Waiter[T, R] = _Waiter(item, key)
        self._queue.append(me)
        # Shielded: once queued, the item may be taken into a group at any moment, and a
        # leader must hand its leadership on; a cancelled caller would leave the outcome
        # unknown, as a commit cut off by a crash does.
        with anyio.CancelScope(shield=True):
            if self._busy:
                await me.event.wait()
            else:
                self._busy = True
                me.lead = True
            if me.lead:
                await self._lead(me)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    async def _lead(self, me: _Waiter[T, R]) -> None:
        try:
            while not me.done:
                group = self._take()
                try:
                    results = await self._flush([w.item for w in group])
                    if len(results) != len(group):  # a bug in flush: fail all, loudly
                        raise RuntimeError("group commit: one result per item expected")
                except BaseException as err:
                    results = [err] * len(group)
                self.groups += 1
                for w, outcome in zip(group, results, strict=True):
                    if isinstance(outcome, BaseException):
                        w.error = outcome
                    else:
                        w.result = outcome
                    w.done = True
                    if w is not me:
                        w.event.set()
        finally:
            # Hand the leadership to the first waiter (it commits the next group: everything
            # waiting when it runs), or end the busy period.
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.event.set()
            else:
                self._busy = False

    def _take(self) -> list[_Waiter[T, R]]:
        group: list[_Waiter[T, R]] = []
        keys: set[Hashable] = set()
        rest: list[_Waiter[T, R]] = []
        for w in self._queue:
            if w.key in keys or len(group) >= self.max_group:
                rest.append(w)
            else:
                keys.add(w.key)
                group.append(w)
        self._queue = rest
        return group
