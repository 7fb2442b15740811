"""Records of durable runs: `RunStatus`, the `Run` snapshot, and `Subscription` (following a
run's committed changes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Generic

import anyio
from typing_extensions import TypeVar

from .._outcome import Outcome, Suspend

if TYPE_CHECKING:
    from ._runner import DurableRunner

# The computation's result type (a bare `Run` is `Run[Any]`).
R = TypeVar("R", default=Any)


class RunStatus(StrEnum):
    """Where a durable run is. `RUNNING` means a step holds (or held, if its process died) the
        run's lease; `QUEUED` that it waits on a queue for a worker to claim it (nothing has run
    yet); `SLEEPING` that it waits, in no process's memory, for its timer (`Run.wake_at`);
        the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUSPENDED = "suspended"
    SLEEPING = "sleeping"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES: Final = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Run(Generic[R]):
    """A snapshot of a durable run, as committed to the store; `R` is the computation's result
    type (`Run[R]` when the runner method was given a `Comp[R]`, else `Run[Any]`).

    `outcome` is what the run is at: a `Suspend` report while it waits for input (`value` is the
    prompt as JSON, `input` the JSON schema of the expected answer or `None`; resume through
    the runner), `Done(result)` (rebuilt through the computation's return type when the
    computation is registered in this process), `Throw(error)`, `Cancelled(reason)`, or `None`
    while a step runs. From the call that ran the step, `Done` and `Throw` carry the very value
    and exception (with its traceback); read back later, the error is rebuilt from its type and
    message, and `error` holds the stored form (type, message, traceback text).

    `parked` is set (to the reason) on a `running` run that `recover()` gave up on after
    `max_recovery_attempts` attempts without progress; `recovery_attempts` counts the attempts
    since the run's last checkpoint. `DurableRunner.unpark` lets recovery try again.
    A `sleeping` run has no outcome; `wake_at` says when its `Clock.sleep` is over (by the
    database's clock): then any runner's timer loop continues it. On a `suspended` run waiting
    at a `Receive` with a timeout, `wake_at` is when that timeout is due.
    `queue`, `priority` and `dedup_id` are set on runs made by `DurableRunner.enqueue`.
    """

    id: str
    name: str
    version: int
    status: RunStatus
    outcome: Outcome[R] | None
    revision: int
    created_at: datetime
    updated_at: datetime
    args: dict[str, Any]
    error: dict[str, Any] | None = None
    lease_owner: str | None = None
    cancel_requested: bool = False
    parked: str | None = None
    recovery_attempts: int = 0
    wake_at: datetime | None = None
    queue: str | None = None
    priority: int = 0
    dedup_id: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the run is done, failed or cancelled."""
        return self.status in FINAL_STATUSES

    @property
    def prompt(self) -> Any:
        """The pending prompt of a suspended run (else `None`)."""
        return self.outcome.value if type(self.outcome) is Suspend else None


class Subscription:
    """Follows one run: an async iterator of `Run` snapshots, the current one first, then one
    per committed change, ending after a final status. A slow reader skips intermediate
    snapshots (it always gets the newest). Use it as `async with runner.subscribe(id) as runs`
    or iterate it directly (then `aclose()` it if you stop early)."""

    def __init__(self, runner: DurableRunner, run_id: str) -> None:
        self._runner = runner
        self.run_id = run_id
        self._latest: Run | None = None
        self._seen: Run | None = None  # the snapshot returned last (offers only move forward)
        self._changed = anyio.Event()
        self._fetched = False
        self._closed = False
        runner._subscribers.setdefault(run_id, set()).add(self)

    def _offer(self, run: Run) -> None:
        latest = self._latest
        # A cancel request flagged on a running step keeps the revision (bumping it would
        # fail the step's guarded checkpoint), so an equal revision counts when the flag moved.
        if (
            latest is None
            or run.revision > latest.revision
            or (run.revision == latest.revision and run.cancel_requested != latest.cancel_requested)
        ):
            self._latest = run
            self._changed.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Run:
        if self._closed:
            raise StopAsyncIteration
        if not self._fetched:
            self._fetched = True
            try:
                self._offer(await self._runner.get(self.run_id))
            except BaseException:
                await self.aclose()
                raise
        while self._latest is None or self._latest is self._seen:
            await self._changed.wait()
            self._changed = anyio.Event()
            if self._closed:  # closed meanwhile, or the runner was closed
                raise StopAsyncIteration
        run = self._latest
        self._seen = run
        if run.finished:
            await self.aclose()
        return run

    async def aclose(self) -> None:
        """Stop following the run (a reader waiting for the next snapshot stops too)."""
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._changed.set()
        subs = self._runner._subscribers.get(self.run_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._runner._subscribers[self.run_id]

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
