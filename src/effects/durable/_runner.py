"""`DurableRunner`: runs registered computations durably on a SQL store.

A run's truth is its row and its log in the store. A step (start, resume, cancel, recovery)
holds the run's *lease* while it executes; between steps nothing is kept in memory: a run
waiting for input is evicted and cold-resumed (replayed from its log) on its next input.

Resume, in order: load the row and the log; replay them to the pending `Yield` (read-only: the
replay performs no handler, takes no lease); validate the answer against the Yield's `input`
type; only then take the lease with a conditional UPDATE on the revision that was read, which
exactly one of several concurrent resumers wins; then continue live, checkpointing as the
logger asks, and write the outcome.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import itertools
import json
import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import TaskGroup

from .._computation import Comp, ComputationFunction, registered
from .._exceptions import (
    ConfigurationError,
    ConflictError,
    DivergenceError,
    InvalidInput,
    LogError,
    MissingHandlerError,
    ResumeError,
    RunNotFound,
    SerializationError,
)
from .._handler import Handler, Stack, flatten, handles
from .._interpreter import Run as _Interpreter
from .._outcome import Cancelled, Done, Outcome, Suspend, Throw, validate_input
from .._std.receive import receive_topic
from .._std.world import uuid7
from ..tasks import TaskSnapshot
from . import _fork, _messages, _observe, _owners, _retention
from ._codec import Signature, dumps, input_schema, loose_json, signature
from ._effects import Checkpoint
from ._fork import NOT_GIVEN
from ._log import Log, make_log
from ._logger import EffectLogger, cancellation
from ._lookup import list_runs
from ._queues import QUEUE_CHANNEL, Queue, cancel_queued, check_priority, enqueue
from ._run import FINAL_STATUSES, Run, RunStatus, Subscription
from ._serialize import codec, dump_error, load_error, storable_text
from ._store import NOTIFY_CHANNEL, LogRows, RunRow, Store
from ._task_store import TASKS_CHANNEL, TaskTrees, encode_tree, error_text
from ._tasks import StepTasks, StepTaskTree, TaskSubscription
from ._timers import Timers
from ._watch import RunWatch, TaskWatch

logger = logging.getLogger("effects.durable")
T = TypeVar("T")

DEFAULT_URL: Final = "sqlite+aiosqlite:///runs.db"

_R = TypeVar("_R")  # a computation's result type: `start(comp)` of a `Comp[R]` is a `Run[R]`

# Backoff of the LISTEN connection after it was lost (seconds).
# Seconds between two reads of the runs followed in a process without NOTIFY (the default of
# `follow_poll`): how late another process's change shows there at most.
FOLLOW_POLL: Final = 0.25
_OTHERS_CHECK: Final = 1.0  # seconds between two looks for other live runners
_LISTEN_RETRY_FIRST: Final = 0.1
_LISTEN_RETRY_MAX: Final = 5.0


class _StepStopped(BaseException):
    """Thrown into a computation whose checkpoint could not be written (another process took
    the run, or the store failed): the step must stop without doing anything more. A
    `BaseException`, so `except Exception` in user code cannot swallow it."""


class _Step:
    """One step of a run in this process."""

    __slots__ = (
        "attempt",
        "cancel_reason",
        "cancelling",
        "committed",
        "done",
        "failure",
        "final_log",
        "interp",
        "leased",
        "observation",
        "resumed",
        "row",
        "rows",
        "scope",
        "sig",
        "sleep_until",
        "tasks",
        "unwinding",
    )

    def __init__(self, row: RunRow, rows: LogRows, sig: Signature) -> None:
        self.row = row  # the row as we last committed (or read) it
        self.rows = rows
        self.sig = sig
        self.interp: _Interpreter | None = None
        self.leased = False
        self.scope: anyio.CancelScope | None = None
        self.cancelling = False
        self.cancel_reason: Any = None
        self.failure: BaseException | None = None
        self.final_log: Log | None = None
        self.sleep_until: float | None = None  # set when a long sleep releases the run
        self.done = anyio.Event()
        self.attempt = False  # this step is a counted recovery attempt
        self.resumed = False  # this step answers the run's pending Yield (`resume`)
        self.committed = False  # a checkpoint of this step was written
        # Recovering a cancellation whose cleanup was cut off: the replay delivers the
        # cancellation where it was recorded, and the cleanup must not be interrupted again.
        self.unwinding = False
        self.tasks: StepTasks | None = None  # the step's task tree (once its handlers exist)
        self.observation: _observe.StepObservation | None = None  # logs and span, if wanted

    def set_log(self, log: Log) -> None:
        self.final_log = log

    def cancel(self, reason: Any) -> None:
        if not self.cancelling:
            self.cancelling, self.cancel_reason = True, reason
        if self.interp is not None:
            # A requested cancel unwinds the computation (cleanup runs and is recorded).
            self.interp.interrupt_reason = self.cancel_reason
        if self.scope is not None:
            self.scope.cancel()


_current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "effects_durable_current_run", default=None
)


def current_run_id() -> str | None:
    """The id of the durable run whose handlers are being installed (call it from
    `Handler.install`): lets a handler passed to `DurableRunner(handlers=...)` know which run
    each installation serves. None outside a `DurableRunner`."""
    return _current_run.get()


class _Checkpoints(Handler):
    """Writes the logger's `Checkpoint`s of one step to the store."""

    def __init__(self, runner: DurableRunner, step: _Step) -> None:
        self.runner = runner
        self.step = step

    def install(self) -> _Checkpoints:
        return self

    @handles(Checkpoint)
    def _checkpoint(self, effect: Checkpoint) -> Awaitable[None]:
        return self.runner._checkpoint(self.step, effect.log)

    def __repr__(self) -> str:
        return f"DurableRunner.checkpoints({self.step.row.id!r})"


_default_owners = itertools.count(1)


def _default_owner() -> str:
    # One owner per runner: a second runner of this process gets `host:pid#2`.
    n = next(_default_owners)
    return f"{_owners.host()}:{os.getpid()}" + (f"#{n}" if n > 1 else "")


def _stamp(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _error_json(err: BaseException) -> str:
    info: dict[str, Any] = dict(dump_error(err))
    info["traceback"] = storable_text("".join(traceback.format_exception(err)))
    return _display_json(info)


def _display_json(value: Any) -> str:
    """JSON text of a value shown, not replayed (a prompt, a cancel reason, an error): never
    fails, so a value the store cannot hold cannot wedge a run between two states."""
    try:
        return dumps(loose_json(value))
    except ValueError:  # NaN, or text with a lone surrogate
        return dumps(storable_text(repr(value)))


class DurableRunner:
    """Runs `@computation`s durably: every effect is logged, checkpoints go to a SQL store, and
    a run survives restarts of the process (see the durable guide).

    ```
    async with DurableRunner("sqlite+aiosqlite:///runs.db", handlers=Stack(...)) as runner:
        await runner.recover()
        run = await runner.start(signup("ada@example.com"))
        run = await runner.resume(run.id, {"plan": "pro"})
    ```

    - `url`: SQLite through aiosqlite (the default, WAL mode) or PostgreSQL through asyncpg;
      the schema is created and migrated on entry.
    - `handlers`: handlers (or `Stack`s) installed around every run, first listed innermost.
    - `owner`: this process's identity for leases (default `host:pid`, unique per runner).
      Give a stable one (like DBOS's executor id) to let `recover()` continue this owner's
      runs at once after a restart instead of waiting for their leases to expire. One owner
      is held by one live runner at a time: entering a runner whose owner another live
      runner holds raises `ConfigurationError` (see the store page).
    - `lease`: seconds a step's lease (and the owner's claim) lasts, by the database's
      clock; renewed every third of it from a thread of the runner's own.
    - `max_recovery_attempts`: how many times `recover()` takes over a run that makes no
      progress (each attempt fails or its process dies before the next checkpoint) before it
      *parks* the run: `Run.parked` says why, `recover()` skips it until `unpark(run_id)`.
    - `recover_concurrency`: how many runs `recover()` continues at once (default 8); a run
      whose recovery waits (a slow call, a sleep) does not hold up the others.
    - `sleep_in_memory`: a `Clock.sleep` with at most this many seconds left waits in the
      step; a longer one releases the run (status `sleeping`, `Run.wake_at`) and the timer
      loop of whichever runner is open then continues it when it is due. Either way the
      wake-up time is recorded first, so a restart sleeps only what is left.
    - `timer_poll`: the longest the timer loop waits before looking for due runs again (it
      wakes earlier for the earliest wake-up time it knows of).
    - `follow_poll`: without NOTIFY (SQLite, PostgreSQL through psycopg), how often the runs
      followed in this process (subscriptions, watches, task trees, so live pages) are read
      for changes committed by other processes (0.25 s; on asyncpg NOTIFY brings them).
    - `timers=False`: no timer loop in this runner (for short-lived tools such as the CLI,
      which should not take over runs they have no handlers for); `recover()` still continues
      due sleeping runs.
    - Task trees: the runner installs a `TaskTree` (outermost) around every step and keeps a
      copy of each run's tree in the store — written at most every `task_interval` seconds
      while it changes and once when the step ends — so that any process, and this one after a
      restart, can show it (`task_tree`, `subscribe_tasks`). `task_lines` bounds the output
      lines kept per task (older ones are dropped and counted in `TaskNode.dropped`).
      `on_tasks(run_id, snapshot)` is called in this process after every change of a tree of
      a step running here (synchronously: keep it cheap).
    - Observability: steps and external effects are logged on `effects.durable.runs` and
      `effects.durable.effects` with structured fields; `tracing=True` (the global
      OpenTelemetry tracer provider) or `tracing=provider` adds a span per step and per
      external effect performed (docs/durable/observability.md).

    Runs on asyncio only: SQLAlchemy's async drivers (aiosqlite, asyncpg) are asyncio-based.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        handlers: Handler | Stack | Iterable[Handler | Stack] = (),
        owner: str | None = None,
        lease: float = 30.0,
        max_recovery_attempts: int = 5,
        recover_concurrency: int = 8,
        engine_options: dict[str, Any] | None = None,
        sleep_in_memory: float = 5.0,
        timer_poll: float = 1.0,
        follow_poll: float = FOLLOW_POLL,
        timers: bool = True,
        task_lines: int = 200,
        task_interval: float = 0.15,
        on_tasks: Callable[[str, TaskSnapshot], None] | None = None,
        tracing: Any = None,
    ) -> None:
        if lease <= 0:
            raise ConfigurationError("lease must be a positive number of seconds")
        if max_recovery_attempts < 1:
            raise ConfigurationError("max_recovery_attempts must be at least 1")
        self.max_recovery_attempts = max_recovery_attempts
        if recover_concurrency < 1:
            raise ConfigurationError("recover_concurrency must be at least 1")
        self.recover_concurrency = recover_concurrency
        if sleep_in_memory < 0 or timer_poll <= 0 or follow_poll <= 0:
            raise ConfigurationError(
                "sleep_in_memory must be >= 0, timer_poll and follow_poll > 0 (seconds)"
            )
        self.sleep_in_memory = sleep_in_memory
        self.timer_poll = timer_poll
        self.follow_poll = follow_poll
        self.timers = timers
        if task_lines < 1 or task_interval < 0:
            raise ConfigurationError("task_lines must be >= 1 and task_interval >= 0 (seconds)")
        self.task_lines = task_lines
        self.task_interval = task_interval
        self.on_tasks = on_tasks
        self._tracer = _observe.make_tracer(tracing)
        self._task_subscribers: dict[str, set[TaskSubscription]] = {}
        self._timer_changed = anyio.Event()
        # Sleeping runs this process could not continue (at that revision): not retried.
        self._unwakeable: dict[str, int] = {}
        self.url = url
        self.handlers = flatten(handlers)
        self.owner = owner or _default_owner()
        self.lease = lease
        self._engine_options = engine_options or {}
        self._store: Store | None = None
        self._tg: TaskGroup | None = None
        self._steps: dict[str, _Step] = {}
        self._background: set[_Step] = set()
        self._background_changed = anyio.Event()
        self._subscribers: dict[str, set[Subscription]] = {}
        self._token = secrets.token_hex(16)
        self._beat: _owners.Heartbeat | None = None
        # Wake-up callbacks of this runner's queue workers (called with a queue's name, or
        # None when notifications may have been lost).
        self._queue_wakers: set[Callable[[str | None], None]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> DurableRunner:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "DurableRunner needs asyncio (SQLAlchemy's async drivers are asyncio-based); "
                "run it with anyio.run(..., backend='asyncio')"
            ) from None
        store = await Store.open(self.url, **self._engine_options)
        try:
            await self._claim_owner(store)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.aclose()
            raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._store, self._tg = store, tg
        try:
            if self.timers and not store.in_memory:
                # (An in-memory store's sleeps wait in memory: no other process could wake
                # them, and its one connection must not be shared with a loop.)
                tg.start_soon(self._timer_loop)
            if store.engine.dialect.driver == "asyncpg":
                await tg.start(self._listen)
            elif not store.in_memory:
                tg.start_soon(self._follow_by_polling)
        except BaseException as err:
            await self.__aexit__(type(err), err, err.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tg, store = self._tg, self._store
        assert tg is not None
        assert store is not None
        try:
            if exc_type is None:
                # Like a task group: leaving the block waits for steps started with wait=False.
                while self._background:
                    await self._background_changed.wait()
                    self._background_changed = anyio.Event()
        finally:
            # Otherwise (an error, a cancellation) steps in flight stop as in a crash: their
            # runs stay `running` and `recover()` continues them from their last checkpoint.
            tg.cancel_scope.cancel()
            for subs in builtins.list(self._subscribers.values()):
                for sub in builtins.list(subs):
                    sub._close()
            for task_subs in builtins.list(self._task_subscribers.values()):
                for task_sub in builtins.list(task_subs):
                    task_sub._close()
            try:
                # The body's own exception propagates as itself (not in an ExceptionGroup):
                # the group only holds the runner's tasks, which catch their errors.
                await tg.__aexit__(None, None, None)
            finally:
                self._tg = None
                self._store = None
                with anyio.CancelScope(shield=True):
                    try:
                        await self._release_owner(store)
                    finally:
                        await store.aclose()
        return False

    async def _claim_owner(self, store: Store) -> None:
        holder = await store.claim_owner(
            self.owner,
            self._token,
            host=_owners.host(),
            pid=os.getpid(),
            lease=self.lease,
            gone=_owners.holder_is_gone,
        )
        if holder is not None:
            raise ConfigurationError(_owners.refusal(self.owner, holder))
        _owners._live_tokens.add(self._token)
        if store.in_memory:
            return  # no other process can see these leases (nor the heartbeat's connection)
        beat = _owners.Heartbeat(
            self.url, self._engine_options, self.owner, self._token, self.lease, self._leased
        )
        try:
            await anyio.to_thread.run_sync(beat.start)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release_owner(store)
            raise
        self._beat = beat

    async def _release_owner(self, store: Store) -> None:
        # The heartbeat stops first: it would otherwise find the claim gone and report it lost.
        beat, self._beat = self._beat, None
        if beat is not None:
            await anyio.to_thread.run_sync(beat.stop)
        _owners._live_tokens.discard(self._token)
        if beat is None or beat.lost is None:
            try:
                await store.release_owner(self.owner, self._token)
            except Exception as err:  # the claim then expires by itself
                logger.warning("could not give back owner %s: %s", self.owner, err)

    def _leased(self) -> builtins.list[str]:
        # Read from the heartbeat's thread: a copy first (the dict may change meanwhile).
        while True:
            try:
                steps = builtins.list(self._steps.items())
            except RuntimeError:  # changed size during the copy
                continue
            return [run_id for run_id, step in steps if step.leased]

    @property
    def store(self) -> Store:
        """The open store (only inside `async with`)."""
        if self._store is None:
            raise ConfigurationError("use the runner inside `async with DurableRunner(...)`")
        if self._beat is not None and self._beat.lost is not None:
            raise ConfigurationError(f"this runner stopped: {self._beat.lost}")
        return self._store

    # -- public API -------------------------------------------------------------------------

    async def start(
        self, comp: Comp[_R], *, run_id: str | None = None, wait: bool = True
    ) -> Run[_R]:
        """Start a durable run of `comp` (a call of a `@computation` function).

        Runs the first step (to the first `Yield`, the end, or an error) and returns the
        committed `Run`. With `wait=False` it returns as soon as the run exists (status
        `running`) and the step goes on in the runner's task group; follow it with
        `subscribe`. `run_id` defaults to a new time-ordered uuid; starting again with the id
        of an existing run of the same computation and arguments returns that run (a no-op),
        with other ones it is a `ConflictError`.
        """
        store = self.store
        function = _function_of(comp)
        sig = signature(function)
        args = sig.dump_args(comp)
        run_id = run_id if run_id is not None else str(uuid7())
        # The first step runs on the arguments as every replay will rebuild them from the
        # store (an int given for a float parameter is a float, a tuple for a list a list),
        # so the effects it records carry the same arguments as the replays' do.
        comp = sig.load_args(run_id, args)
        if run_id in self._steps:
            raise ConflictError(f"run {run_id!r} is running a step in this process")
        row = RunRow.new(
            run_id,
            function.name,
            function.version,
            args,
            status=RunStatus.RUNNING.value,
            lease_owner=self.owner,  # the expiry: the database's now + lease, by the store
        )
        step = _Step(row, LogRows(run_id), sig)
        # Built before the row exists: a handler that fails to install leaves nothing behind.
        interp = self._interpreter(
            step, comp, function, make_log(function.name, function.version, run_id, [])
        )
        try:
            with anyio.CancelScope(shield=True):
                await store.insert(row, lease=self.lease)
        except ConflictError:
            existing = await store.get(run_id)
            if existing.name == row.name and existing.args == row.args:
                return self._to_run(existing)
            raise ConflictError(
                f"run id {run_id!r} is taken by another run ({existing.name} with other arguments)"
            ) from None
        step.leased = True
        self._publish(row)
        return await self._launch(step, lambda: interp.adrive(None, None), wait)

    async def enqueue(
        self,
        comp: Comp[_R],
        *,
        queue: str | Queue,
        dedup_id: str | None = None,
        priority: int = 0,
        run_id: str | None = None,
    ) -> Run[_R]:
        """Put a run of `comp` on `queue`, for a worker (`work()`, `python -m effects worker`)
        to run; returns the `queued` run at once. Nothing of the computation runs here.

        `priority`: lower runs first (default 0; ties in enqueue order). `dedup_id`: while the
        queue holds a run with this deduplication id (in any status), enqueuing again returns
        that run instead of a new one, whatever its arguments (an idempotency key for the
        enqueue; use a new id for a new run). `run_id` as in `start` (an existing run with
        that id is returned). Cancel a queued run with `cancel`: it ends `cancelled` without
        running.
        """
        store = self.store
        name = queue.name if isinstance(queue, Queue) else Queue(queue).name
        function = _function_of(comp)
        args = signature(function).dump_args(comp)
        if dedup_id is not None and not 0 < len(dedup_id) <= 255:
            raise ConfigurationError("a dedup_id is 1 to 255 characters")
        row = RunRow.new(
            run_id if run_id is not None else str(uuid7()),
            function.name,
            function.version,
            args,
            status=RunStatus.QUEUED.value,
            queue=name,
            priority=check_priority(priority),
            dedup_id=dedup_id,
        )
        with anyio.CancelScope(shield=True):
            stored = await enqueue(store, row)
        if stored is row:
            self._publish(row)
        elif stored.dedup_id is None or stored.dedup_id != dedup_id or stored.queue != name:
            # The id was taken (not the dedup id): the same run, or a conflict as in `start`.
            if stored.name != row.name or stored.args != row.args:
                raise ConflictError(
                    f"run id {row.id!r} is taken by another run "
                    f"({stored.name} with other arguments)"
                )
        return self._to_run(stored)

    async def work(
        self,
        queues: Sequence[str | Queue],
        *,
        concurrency: int = 8,
        poll: float = 1.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve `queues` in this process until cancelled: claim their queued runs and run
        them, at most `concurrency` at once in this worker (and within each `Queue`'s own
        limits), taking over runs of those queues whose worker died once their lease expired.

        Idle workers wake when a run is enqueued (PostgreSQL LISTEN/NOTIFY) and otherwise
        look every `poll` seconds. Only runs of computations registered in this process are
        claimed. Use `await task_group.start(runner.work, [...])` to know when it serves.
        """
        from ._worker import Worker

        await Worker(self, queues, concurrency=concurrency, poll=poll).run(task_status=task_status)

    async def resume(
        self, run_id: str, value: Any = None, *, revision: int | None = None, wait: bool = True
    ) -> Run:
        """Answer the pending `Yield` of a suspended run with `value` and run the next step.

        The answer is validated (`Yield(input=...)`) before the store is touched: invalid
        input raises `InvalidInput` and the run stays as it was (so does a value
        that cannot be stored, such as text with a lone surrogate). Of several concurrent
        resumes of one run (tasks or processes) exactly one wins; the others get
        `ConflictError`. Pass the `revision` of the `Run` you are answering to make sure you
        answer that very step (a stale revision is a `ConflictError`). A run that is not
        suspended raises `ConflictError` while a step runs, `ResumeError` once finished.
        `wait=False` returns once the answer is accepted, the step going on in the background.
        """
        step, suspend = await self._cold(run_id, revision, "resume")
        try:
            answer = validate_input(suspend.input, value)
            # Stored the way the logger will record it, so recovery rebuilds the same answer.
            answer_codec = codec(Any if suspend.input is None else suspend.input)
            try:
                stored = dumps(answer_codec.dump(answer, f"run {run_id!r}: the answer"))
            except SerializationError as err:
                # The caller's value cannot be stored (a lone surrogate, NaN...): bad input,
                # refused before anything is written, as a failed validation would be.
                raise InvalidInput(
                    str(err), [{"type": "unstorable", "loc": (), "msg": str(err), "input": value}]
                ) from None
            await self._acquire(step, ("suspended",), answer=stored)
        except BaseException:
            self._drop(step)
            raise
        step.resumed = True
        return await self._launch(step, lambda: suspend.aresume(answer), wait)

    async def cancel(self, run_id: str, reason: Any = None) -> Run:
        """Cancel a run: its cleanup (`finally` blocks, bracket releases) runs, then it is
        `cancelled`. A finished run is returned unchanged. A run whose step runs in another
        process is flagged; that process cancels it at its next checkpoint (the returned
        `Run` is still `running`, with `cancel_requested`)."""
        step = self._steps.get(run_id)
        if step is not None:
            if not step.leased:
                raise ConflictError(f"run {run_id!r} is between two steps in this process")
            if not step.cancelling:
                step.cancelling, step.cancel_reason = True, reason
                # Committed before the cleanup starts: if this process dies during the
                # cleanup, recovery finishes the cancellation instead of continuing the run.
                try:
                    with anyio.CancelScope(shield=True):
                        self._publish(await self.store.request_cancel(run_id))
                except Exception as err:
                    # The cancel still happens here, and the log records where it was
                    # delivered (checkpointed at once), which recovery replays.
                    logger.warning("run %s: could not commit the cancel request: %s", run_id, err)
            step.cancel(reason)  # a step that has not begun yet starts cancelled
            await step.done.wait()
            return await self.get(run_id)
        row = await self.store.get(run_id)
        status = RunStatus(row.status)
        if status in FINAL_STATUSES:
            return self._to_run(row)
        if status is RunStatus.QUEUED:
            cancelled = await cancel_queued(self.store, run_id, _display_json(reason))
            if cancelled is None:  # claimed meanwhile: cancel it where it runs
                return await self.cancel(run_id, reason)
            self._publish(cancelled)
            return self._to_run(cancelled)
        if status is RunStatus.RUNNING:
            if row.lease_owner in (None, self.owner) or await self.store.lease_expired(row):
                return await self._recover(row, cancel=(reason,))
            flagged = await self.store.request_cancel(run_id)
            self._publish(flagged)  # same revision, so subscribers compare the flag too
            return self._to_run(flagged)
        if status is RunStatus.SLEEPING:
            try:
                return await self._wake(row, cancel=(reason,))
            except ConflictError:
                # Woken meanwhile (by a timer loop here or elsewhere): cancel it as it is now.
                return await self.cancel(run_id, reason)
        step, suspend = await self._cold(run_id, row.revision, "cancel")
        try:
            # Flagged in the same transaction: if this process dies during the cleanup,
            # recovery finishes the cancellation instead of continuing the run.
            await self._acquire(step, ("suspended",), cancel=True)
        except BaseException:
            self._drop(step)
            raise
        # Not `step.cancel(...)`: that cancels the step's scope, which would interrupt the
        # cleanup that `acancel` runs.
        step.cancelling, step.unwinding, step.cancel_reason = True, True, reason
        return await self._launch(step, lambda: suspend.acancel(reason), True)

    async def get(self, run_id: str) -> Run:
        """The run's committed state; `RunNotFound` if there is no such run."""
        return self._to_run(await self.store.get(run_id))

    async def get_log(self, run_id: str) -> Log:
        """The run's committed effect log."""
        row, entries = await self.store.load(run_id)
        return make_log(row.name, row.version, row.id, entries)

    async def list(
        self,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        *,
        name: str | Iterable[str] | None = None,
        limit: int | None = None,
        parked: bool | None = None,
        since: datetime | float | None = None,
        id_prefix: str | None = None,
        newest_first: bool = False,
        offset: int = 0,
    ) -> builtins.list[Run]:
        """Runs in the store, oldest first (`newest_first=True`: newest first), optionally by
        status (one or several), computation name (one or several), whether they are parked
        (`parked=True`: the runs `recover()` gave up on), creation time (`since`: created at
        or after it, a datetime or UTC epoch seconds) and id prefix; `limit` and `offset` page
        through them."""
        if status is None:
            statuses: tuple[str, ...] = ()
        elif isinstance(status, str):
            statuses = (RunStatus(status).value,)
        else:
            statuses = tuple(RunStatus(s).value for s in status)
        rows = await list_runs(
            self.store,
            status=statuses,
            name=name if name is None or isinstance(name, str) else tuple(name),
            # A datetime holds microseconds, the store more: one read from a `Run` (rounded)
            # must still include that run.
            since=since.timestamp() - 1e-6 if isinstance(since, datetime) else since,
            id_prefix=id_prefix,
            limit=limit,
            offset=offset,
            newest_first=newest_first,
            parked=parked,
        )
        return [self._to_run(r) for r in rows]

    async def recover(self, *, concurrency: int | None = None) -> builtins.list[Run]:
        """Continue the runs whose step was cut off (status `running`, not parked, lease
        expired, absent or held by this `owner`), each from its last checkpoint, then the
        `sleeping` runs that are due; returns their new states (oldest run first).

        Runs are isolated from each other: whatever the recovery of one raises is logged and
        the others go on. A run that cannot be replayed with the code now deployed
        (`DivergenceError`, `LogError`, an unknown computation, a missing handler) is left as
        it is, with its lease released, for a fixed deployment. Any other failure counts as a
        recovery attempt, and so does a recovery whose process dies before its next
        checkpoint; a run that used up `max_recovery_attempts` without progress is *parked*
        (returned with `parked` set to the reason) and skipped until `unpark`. An at-most-once
        effect that was interrupted fails its run with `InterruptedEffect`, as documented.

        Runs are recovered concurrently, at most `concurrency` at once (default: the runner's
        `recover_concurrency`); each step still runs to its end (its suspension, result or
        error) before `recover()` returns.
        """
        limit = self.recover_concurrency if concurrency is None else concurrency
        if limit < 1:
            raise ConfigurationError("concurrency must be at least 1")
        limiter = anyio.CapacityLimiter(limit)
        rows = [r for r in await self.store.recoverable(self.owner) if r.id not in self._steps]
        recovered = await self._each(rows, self._recover_isolated, limiter)
        # Then the sleeping runs that are due (what the timer loop does next).
        due = [r for r in await self.store.due(await self.store.clock()) if r.id not in self._steps]
        woken = await self._each(due, self._wake_isolated, limiter)
        return recovered + woken

    async def _each(
        self,
        rows: Sequence[RunRow],
        step: Callable[[RunRow], Awaitable[Run | None]],
        limiter: anyio.CapacityLimiter,
    ) -> builtins.list[Run]:
        """`step` for each row, concurrently within `limiter`; the results in the rows' order."""
        found: builtins.list[Run | None] = [None] * len(rows)

        async def one(i: int, row: RunRow) -> None:
            async with limiter:
                found[i] = await step(row)

        async with anyio.create_task_group() as tg:
            for i, row in enumerate(rows):
                tg.start_soon(one, i, row)
        return [run for run in found if run is not None]

    async def _wake_isolated(self, row: RunRow) -> Run | None:
        """Continue one due sleeping run; never raises an `Exception` (the others go on)."""
        try:
            return await self._wake(row)
        except ConflictError:
            return None  # another process took it first, or it changed meanwhile
        except _DEPLOYMENT_ERRORS as err:
            self._unwakeable[row.id] = row.revision
            logger.warning("sleeping run %s cannot be continued: %s", row.id, err)
        except Exception:
            logger.exception("sleeping run %s: the step failed", row.id)
        return None

    async def unpark(self, run_id: str) -> Run:
        """Let `recover()` continue a parked run again (after fixing what made its recovery
        fail), with its recovery attempts counted from zero. A run that is not parked is
        returned unchanged."""
        row = await self.store.unpark(run_id)
        self._publish(row)
        return self._to_run(row)

    async def _recover_isolated(self, row: RunRow) -> Run | None:
        """Recover one run; never raises an `Exception` (the next run must get its turn)."""
        attempts = row.recovery_attempts
        if attempts >= self.max_recovery_attempts:
            return await self._park(
                row.id,
                f"recovery was attempted {attempts} times without progress: each attempt "
                "stopped before its next checkpoint (its process died or was stopped)",
            )
        try:
            return await self._recover(row, attempt=True)
        except ConflictError:
            return None  # another process got there first
        except _DEPLOYMENT_ERRORS as err:
            logger.warning("run %s cannot be recovered: %s", row.id, err)
            return None
        except Exception as err:
            attempts += 1
            logger.warning(
                "run %s: recovery attempt %d of %d failed",
                row.id,
                attempts,
                self.max_recovery_attempts,
                exc_info=err,
            )
            if attempts < self.max_recovery_attempts:
                return None
            return await self._park(
                row.id,
                f"recovery failed {attempts} times; the last attempt raised "
                f"{type(err).__name__}: {err}",
            )

    async def _park(self, run_id: str, reason: str) -> Run | None:
        reason = storable_text(reason)
        try:
            row = await self.store.get(run_id)
            if (
                row.status != RunStatus.RUNNING.value
                or row.parked is not None
                or row.recovery_attempts < self.max_recovery_attempts  # it progressed since
            ):
                return None
            parked = await self.store.park(
                run_id, revision=row.revision, owner=self.owner, reason=reason
            )
        except (ConflictError, RunNotFound):
            return None  # it moved meanwhile (another process recovered or parked it)
        except Exception as err:
            logger.warning("run %s: could not park it: %s", run_id, err)
            return None
        logger.error("run %s is parked: %s", run_id, reason)
        self._publish(parked)
        return self._to_run(parked)

    def subscribe(self, run_id: str) -> Subscription:
        """Follow a run: `async for run in runner.subscribe(run_id)` yields the current `Run`,
        then a snapshot after each change committed by this process, until it finishes.

        Changes committed by other processes arrive through PostgreSQL LISTEN/NOTIFY (asyncpg);
        without NOTIFY (SQLite, psycopg) the runner reads the runs followed here every
        `follow_poll` seconds (0.25), so they arrive at most that late (a run that changed
        several times in between shows its newest state).
        """
        self.store  # noqa: B018 - fails clearly outside `async with`
        return Subscription(self, run_id)

    # -- task trees -------------------------------------------------------------------------

    async def task_tree(self, run_id: str) -> TaskSnapshot | None:
        """The run's task tree: the live one while a step of the run runs in this process,
        else the copy in the store (at most `task_interval` behind the process running the
        run; after the run ended, its final tree, whose root says how it ended). None if the
        run reported no task, progress or output; `RunNotFound` if there is no such run."""
        return (await self._current_tree(run_id))[0]

    def subscribe_tasks(self, run_id: str) -> TaskSubscription:
        """Follow a run's task tree: `async for tree in runner.subscribe_tasks(run_id)` yields
        the current tree (once the run has one), then each newer one, and ends after the tree
        of the finished run. From a step in this process every change arrives; from a step in
        another process every stored copy arrives through PostgreSQL LISTEN/NOTIFY (without
        NOTIFY, the newest stored copy within `follow_poll` seconds). See `TaskSubscription`.
        """
        self.store  # noqa: B018 - fails clearly outside `async with`
        return TaskSubscription(self, run_id)

    def watch(self, run_id: str, on_run: Callable[[Run], None]) -> RunWatch:
        """Follow a run without a task: `on_run(run)` is called with each newer snapshot
        committed by this process (and, on PostgreSQL, by others), until it finishes or the
        watch is closed. Unlike `subscribe` it does not read the current run: read it after
        registering and hand it to `RunWatch.offer`, so that no change is missed between the
        read and the registration. See `RunWatch`."""
        self.store  # noqa: B018 - fails clearly outside `async with`
        return RunWatch(self, run_id, on_run)

    def watch_tasks(self, run_id: str, on_tree: Callable[[TaskSnapshot], None]) -> TaskWatch:
        """Follow a run's task tree without a task: `on_tree(tree)` is called with each newer
        tree (see `subscribe_tasks` for where they come from), until the run's final tree or
        `close()`. It does not read the current tree: call `task_tree` after registering."""
        self.store  # noqa: B018 - fails clearly outside `async with`
        return TaskWatch(self, run_id, on_tree)

    async def _current_tree(self, run_id: str) -> tuple[TaskSnapshot | None, int | None, bool]:
        """The newest tree of a run (live here, or stored), its stored version (None when
        live), and whether the run finished."""
        step = self._steps.get(run_id)
        if step is not None and step.tasks is not None and step.tasks.reported is not None:
            return step.tasks.reported, None, False
        stored = await TaskTrees(self.store).load(run_id)
        return stored.tree, stored.version, stored.finished

    def _step_tasks(self, step: _Step) -> StepTasks:
        run_id = step.row.id
        trees = TaskTrees(self.store)

        async def save(snapshot: TaskSnapshot) -> int | None:
            # Guarded by this step's lease or last committed revision: a process that lost
            # the run cannot overwrite the tree of the one that took it over.
            return await trees.save(
                run_id, encode_tree(snapshot), owner=self.owner, revision=step.row.revision
            )

        def offer(
            snapshot: TaskSnapshot | None, version: int | None, final: bool, fresh: bool
        ) -> None:
            current = self._steps.get(run_id)
            if current is not None and current is not step and current.tasks is not None:
                return  # a newer step of the run runs here: its tree is the newer one
            if fresh and snapshot is not None and self.on_tasks is not None:
                try:
                    self.on_tasks(run_id, snapshot)
                except Exception:
                    logger.exception("run %s: the on_tasks hook failed", run_id)
            for sub in builtins.list(self._task_subscribers.get(run_id, ())):
                sub._offer(snapshot, version, final, local=True)

        return StepTasks(run_id, save=save, offer=offer, interval=self.task_interval)

    async def _close_tasks(
        self, step: _Step, status: str | None = None, error_json: str | None = None
    ) -> None:
        """Write the last copy of a step's tree, settled to `status` (and the stored error
        `error_json`) if that is final; by default the status the step left the run at. Once a
        step closed its tree, closing again does nothing."""
        tasks = step.tasks
        if tasks is None:
            return
        row = step.row
        if status is None:
            status, error_json = row.status, row.error
        error = error_text(error_json) if status == RunStatus.FAILED.value else None
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.lease / 3):
            try:
                await tasks.close(status, error)
            except Exception as err:
                logger.warning("run %s: could not store its final task tree: %s", row.id, err)

    async def _notified_tasks(self, payload: str) -> None:
        run_id, _, version = payload.rpartition(":")
        subs = self._task_subscribers.get(run_id)
        if not subs or not version.isdigit():
            return
        step = self._steps.get(run_id)
        if step is not None and step.tasks is not None and step.tasks.reported is not None:
            return  # the step runs here: its subscribers have the live tree
        if all(s.stored_version >= int(version) for s in subs):
            return
        await self._reread_tasks(run_id)

    async def _reread_tasks(self, run_id: str) -> None:
        try:
            stored = await TaskTrees(self.store).load(run_id)
        except Exception as err:
            logger.warning("run %s: could not read its task tree: %s", run_id, err)
            return
        if stored.tree is None and not stored.finished:
            return
        for sub in builtins.list(self._task_subscribers.get(run_id, ())):
            sub._offer(stored.tree, stored.version, stored.finished, local=False)

    # -- steps ------------------------------------------------------------------------------

    def _interpreter(
        self, step: _Step, comp: Comp[Any], function: ComputationFunction[Any, Any], log: Log
    ) -> _Interpreter:
        effect_logger = EffectLogger(
            log,
            checkpoints=True,
            run_id=step.row.id,
            computation=function,
            on_log=step.set_log,
        )
        tasks = step.tasks = self._step_tasks(step)
        tree = StepTaskTree(tasks, max_lines=self.task_lines)
        # Handlers are installed while the interpreter is built: `current_run_id()` tells them
        # which run they serve, whichever task (a request, recover()) started the step.
        token = _current_run.set(step.row.id)
        try:
            interp = _Interpreter(
                comp,
                (
                    effect_logger,  # innermost: it records what the handlers outside it answer
                    _Checkpoints(self, step),
                    Timers(self, step),
                    *_observe.effect_observers(self._tracer, step),
                    *self.handlers,
                    tree,
                ),
            )
        finally:
            _current_run.reset(token)
        # A cancellation that was not requested (shutdown) is a crash, not a cancel.
        interp.discard_on_interrupt = True
        step.interp = interp
        return interp

    async def _cold(self, run_id: str, revision: int | None, action: str) -> tuple[_Step, Suspend]:
        """Rebuild a suspended run by replaying its log, without taking its lease."""
        existing = self._steps.get(run_id)
        if existing is not None and existing.sig is not None and await self._putting_away(existing):
            # The step committed its suspension (or its end) and is being put away: a caller
            # that saw that commit (in the store, a subscription, another process) answers it
            # now. Wait for the step to be gone rather than refuse an answer to the current
            # step. A step still running, or a concurrent resume not yet committed, is
            # refused at once below: of concurrent answers to one step exactly one wins.
            with anyio.move_on_after(_PUT_AWAY_WAIT):
                await existing.done.wait()
        if run_id in self._steps:
            raise ConflictError(f"run {run_id!r} is running a step in this process")
        store = self.store
        # Reserve the run in this process before the first await: of two tasks resuming the
        # same run, the second fails here at once.
        placeholder = _Step(_placeholder_row(run_id), LogRows(run_id), None)  # type: ignore[arg-type]
        self._steps[run_id] = placeholder
        try:
            row, entries = await store.load(run_id)
            status = RunStatus(row.status)
            if status is RunStatus.RUNNING and row.parked is not None:
                raise ConflictError(
                    f"cannot {action} run {run_id!r}: it is parked (recovery gave up on it: "
                    f"{row.parked}); unpark it to let recover() continue it"
                )
            if status is RunStatus.RUNNING:
                holder = f" (lease held by {row.lease_owner})" if row.lease_owner else ""
                raise ConflictError(f"cannot {action} run {run_id!r}: a step is running{holder}")
            if status is RunStatus.QUEUED:
                raise ConflictError(
                    f"cannot {action} run {run_id!r}: it is queued on {row.queue!r} and has "
                    "not started yet"
                )
            if status is RunStatus.SLEEPING:
                raise ConflictError(
                    f"cannot {action} run {run_id!r}: it is sleeping until "
                    f"{_stamp(row.wake_at or 0).isoformat()}"
                )
            if status is not RunStatus.SUSPENDED:
                raise ResumeError(f"cannot {action} run {run_id!r}: it is {status.value}")
            if revision is not None and revision != row.revision:
                raise ConflictError(
                    f"cannot {action} run {run_id!r} at revision {revision}: it is at revision "
                    f"{row.revision} (another answer was taken first)"
                )
            function = _registered(row)
            sig = signature(function)
            comp = sig.load_args(run_id, row.args)
            step = _Step(row, LogRows(run_id, entries), sig)
            log = make_log(row.name, row.version, row.id, entries)
            interp = self._interpreter(step, comp, function, log)
            outcome = await interp.adrive(None, None)
            if step.failure is not None:
                raise step.failure
            if type(outcome) is Throw:
                raise _replay_error(outcome.error)
            if type(outcome) is not Suspend:
                raise LogError(
                    f"run {run_id!r} is stored as suspended but its log does not end at a "
                    f"pending Yield (replay ended with {outcome!r})"
                )
        except BaseException:
            del self._steps[run_id]
            raise
        self._steps[run_id] = step
        return step, outcome

    async def _putting_away(self, step: _Step) -> bool:
        """Whether `step` has committed a suspension or an end (it may not know it yet: the
        store's row is read)."""
        if step.committed and step.row.status != RunStatus.RUNNING.value:
            return True
        try:
            stored = await self.store.get(step.row.id)
        except RunNotFound:
            return False
        return stored.status != RunStatus.RUNNING.value and stored.revision > step.row.revision

    def _drop(self, step: _Step) -> None:
        if self._steps.get(step.row.id) is step:
            del self._steps[step.row.id]
        step.done.set()

    async def _acquire(
        self,
        step: _Step,
        from_status: Sequence[str],
        *,
        answer: str | None = None,
        cancel: bool = False,
    ) -> None:
        row = step.row
        now = time.time()
        with anyio.CancelScope(shield=True):
            revision = await self.store.acquire(
                row.id,
                revision=row.revision,
                owner=self.owner,
                lease=self.lease,
                from_status=from_status,
                answer=answer,
                cancel=cancel,
                now=now,
            )
        step.row = replace(
            row,
            status=RunStatus.RUNNING.value,
            revision=revision,
            lease_owner=self.owner,
            answer=answer,
            cancel_requested=cancel or row.cancel_requested,
            updated_at=now,
        )
        step.leased = True
        self._publish(step.row)

    async def _recover(
        self, row: RunRow, cancel: tuple[Any] | None = None, *, attempt: bool = False
    ) -> Run:
        if row.id in self._steps:
            raise ConflictError(f"run {row.id!r} is running a step in this process")
        placeholder = _Step(row, LogRows(row.id), None)  # type: ignore[arg-type]
        self._steps[row.id] = placeholder
        try:
            row, entries = await self.store.load(row.id)
            if row.status != RunStatus.RUNNING.value:
                raise ConflictError(f"run {row.id!r} is no longer running ({row.status})")
            function = _registered(row)
            sig = signature(function)
            comp = sig.load_args(row.id, row.args)
            step = _Step(row, LogRows(row.id, entries), sig)
            log = make_log(row.name, row.version, row.id, entries)
            answer = json.loads(row.answer) if row.answer is not None else None
            now = time.time()
            with anyio.CancelScope(shield=True):
                revision = await self.store.acquire(
                    row.id,
                    revision=row.revision,
                    owner=self.owner,
                    lease=self.lease,
                    from_status=("running",),
                    keep_answer=True,
                    take_expired=True,
                    now=now,
                    attempt=attempt,
                )
        except BaseException:
            del self._steps[row.id]
            raise
        self._steps[row.id] = step
        step.row = replace(
            row,
            revision=revision,
            lease_owner=self.owner,
            updated_at=now,
            recovery_attempts=row.recovery_attempts + attempt,
        )
        step.leased = True
        step.attempt = attempt
        try:
            # Built once the lease is ours, so a handler that fails to install counts as a
            # failed recovery attempt (and the run gets parked if it keeps failing).
            interp = self._interpreter(step, comp, function, log)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(step)
            self._drop(step)
            raise
        cancelled, reason = cancellation(entries)
        if cancelled and row.cancel_requested:  # (a handler may raise a Cancellation too)
            # The log records where a cancellation interrupted the run and the start of its
            # cleanup: replay delivers it there again and the cleanup goes on from its log.
            step.cancelling, step.unwinding = True, True
            step.cancel_reason = reason if reason is not None else "cancel requested"
            interp.cancelling, interp.cancel_reason = True, step.cancel_reason
        elif cancel is not None:
            step.cancelling, step.cancel_reason = True, cancel[0]
        elif row.cancel_requested:
            step.cancelling, step.cancel_reason = True, "cancel requested"
        self._publish(step.row)
        has_answer = row.answer is not None

        async def drive() -> Outcome:
            outcome = await interp.adrive(None, None)
            if has_answer and type(outcome) is Suspend and not step.cancelling:
                # The process died after `resume` accepted this answer and before a
                # checkpoint recorded it: give it again.
                try:
                    outcome = await outcome.aresume(answer)
                except InvalidInput as err:
                    logger.warning("run %s: the stored answer is no longer valid: %s", row.id, err)
            return outcome

        return await self._launch(step, drive, True, recovering=True)

    async def _run_claimed(self, row: RunRow) -> Run:
        """Run the first step of a run a queue worker claimed (its lease is ours)."""
        if row.id in self._steps:
            raise ConflictError(f"run {row.id!r} is running a step in this process")
        function = _registered(row)
        sig = signature(function)
        comp = sig.load_args(row.id, row.args)
        step = _Step(row, LogRows(row.id), sig)
        step.leased = True  # renewed by the heartbeat from now on
        self._steps[row.id] = step
        try:
            interp = self._interpreter(
                step, comp, function, make_log(function.name, function.version, row.id, [])
            )
        except BaseException:
            step.leased = False
            self._drop(step)
            raise
        self._publish(row)
        return await self._launch(step, lambda: interp.adrive(None, None), True)

    async def _launch(
        self,
        step: _Step,
        drive: Callable[[], Awaitable[Outcome]],
        wait: bool,
        *,
        recovering: bool = False,
    ) -> Run:
        self._steps[step.row.id] = step
        assert self._tg is not None
        if step.tasks is not None:
            step.tasks.activate(self._tg)
        if wait:
            return await self._run_step(step, drive, recovering)
        self._background.add(step)
        self._tg.start_soon(self._run_background, step, drive)
        return self._to_run(step.row)

    async def _run_background(self, step: _Step, drive: Callable[[], Awaitable[Outcome]]) -> None:
        try:
            await self._run_step(step, drive, False)
        except Exception:
            logger.exception("durable run %s: the step failed", step.row.id)
        finally:
            self._background.discard(step)
            self._background_changed.set()

    async def _run_step(
        self, step: _Step, drive: Callable[[], Awaitable[Outcome]], recovering: bool
    ) -> Run:
        kind = _observe.step_kind(
            resumed=step.resumed, cancelling=step.cancelling, recovering=recovering
        )
        step.observation = _observe.begin_step(self._tracer, step.row, kind)
        try:
            with anyio.CancelScope() as scope:
                step.scope = scope
                if step.cancelling and not step.unwinding:
                    step.cancel(step.cancel_reason)
                outcome = await drive()
            step.scope = None
            if step.failure is not None:
                raise step.failure
            if scope.cancelled_caught and step.sleep_until is not None and not step.cancelling:
                return await self._release_sleeping(step)
            if scope.cancelled_caught:
                # adrive unwound the computation (its cleanup ran) before re-raising.
                outcome = Cancelled(step.cancel_reason)
            elif step.cancelling and type(outcome) is Suspend:
                outcome = await outcome.acancel(step.cancel_reason)
                if step.failure is not None:
                    raise step.failure
            if type(outcome) is Throw:
                missing = _missing_handler(outcome.error)
                if missing is not None:
                    # Not the computation's error: this process lacks a handler the run needs.
                    # The run is not failed; it waits for a process that has the handler.
                    await self._give_back(step)
                    raise missing
            return await self._finish(step, outcome, recovering)
        except anyio.get_cancelled_exc_class():
            # Whoever awaited this step is being cancelled (the runner is shutting down):
            # stop as a crash would, but hand the run over at once.
            with anyio.CancelScope(shield=True):
                await self._release(step)
            raise
        except BaseException as err:
            if not isinstance(err, ConflictError | RunNotFound):
                with anyio.CancelScope(shield=True):
                    # The deployed code cannot run this run: not an attempt that failed.
                    await self._release(step, uncount=isinstance(err, _DEPLOYMENT_ERRORS))
            raise
        finally:
            # Dropped first: once a suspension is committed, the run may be resumed at once
            # (the next step's takeover then refuses this step's late copy of the tree).
            self._drop(step)
            await self._close_tasks(step)
            _observe.end_step(step.observation, step.row, sys.exc_info()[1])

    async def _give_back(self, step: _Step) -> None:
        """Undo a step that could not run here: a resumed step that committed nothing goes
        back to its suspension (same prompt, the answer not consumed). Any other step keeps its
        checkpoints; the lease is released (by the caller) for `recover()` to continue it."""
        if not (step.resumed and not step.committed and step.leased):
            return
        changes = {
            "status": RunStatus.SUSPENDED.value,
            "answer": None,
            "lease_owner": None,
            "lease_expires": None,
        }
        await self._commit(step, changes, None)
        step.leased = False

    async def _release(self, step: _Step, *, uncount: bool = False) -> None:
        if not step.leased:
            return
        step.leased = False
        try:
            await self.store.release(
                step.row.id,
                revision=step.row.revision,
                owner=self.owner,
                uncount=uncount and step.attempt,
            )
        except Exception as err:  # the store is what failed: the lease will expire instead
            logger.warning("run %s: could not release its lease: %s", step.row.id, err)

    async def _checkpoint(self, step: _Step, log: Log) -> None:
        if step.failure is not None:
            return
        interp = step.interp
        if interp is not None and interp.cancelling and not step.cancelling:
            # The runner is shutting down (a cancellation nobody requested): nothing more may
            # be written, recovery replays the run's normal path. The cleanup of a requested
            # cancel is checkpointed like any other work (its cancel is committed already).
            return
        if not step.leased:
            # Replaying to the pending Yield must not perform anything live.
            if step.rows.diff(log.entries):
                step.failure = LogError(
                    f"run {step.row.id!r} is stored as suspended but its log ends before the "
                    "pending Yield: the replay went on performing effects"
                )
                raise _StepStopped()
            return
        changes: dict[str, Any] = {}
        if step.row.answer is not None:
            changes["answer"] = None
        if step.row.recovery_attempts:
            changes["recovery_attempts"] = 0  # progress: the recovery is no longer failing
        try:
            await self._commit(step, changes, log)
        except Exception as err:
            step.failure = err
            raise _StepStopped() from err

    async def _commit(self, step: _Step, changes: dict[str, Any], log: Log | None) -> None:
        row = step.row
        if log is not None and log.version is not None and log.version != row.version:
            # The code that continued the run is newer (a `patched` change): from now on
            # only that version or a newer one may replay it.
            changes["version"] = log.version
        changes["updated_at"] = time.time()
        # Every checkpoint of a step renews its lease (by the database's clock).
        lease = self.lease if "lease_owner" not in changes else None
        diff = step.rows.diff(log.entries) if log is not None else None
        with anyio.CancelScope(shield=True):
            revision, cancel = await self.store.checkpoint(
                row.id,
                revision=row.revision,
                owner=self.owner,
                changes=changes,
                log=diff,
                lease=lease,
            )
        step.row = replace(row, revision=revision, **changes)
        step.committed = True
        if cancel and not step.cancelling:
            step.cancel("cancel requested")
        self._publish(step.row)

    async def _finish(self, step: _Step, outcome: Outcome, recovering: bool) -> Run:
        changes: dict[str, Any] = {
            "lease_owner": None,
            "lease_expires": None,
            "answer": None,
            "prompt": None,
            "input_schema": None,
            "result": None,
            "error": None,
            "cancel_requested": False,
            "recovery_attempts": 0,
            "parked": None,
        }
        log = step.final_log
        live: Outcome = outcome
        if type(outcome) is Suspend:
            log = outcome.data.get(EffectLogger, log)
            schema = input_schema(outcome.input)
            changes.update(
                status=RunStatus.SUSPENDED.value,
                prompt=_display_json(outcome.value),
                input_schema=dumps(schema) if schema is not None else None,
                # When a Receive's timeout is due (an earlier sleep's time no longer is).
                wake_at=_messages.deadline(log.entries if log is not None else ()),
            )
        elif type(outcome) is Done:
            try:
                changes.update(
                    status=RunStatus.DONE.value, result=step.sig.dump_result(outcome.value)
                )
            except SerializationError as unstorable:
                live = Throw(unstorable)
                changes.update(status=RunStatus.FAILED.value, error=_error_json(unstorable))
        elif type(outcome) is Throw:
            error = outcome.error
            if recovering and isinstance(error, DivergenceError | LogError):
                # The code deployed cannot continue this run; leave it for a fixed deployment.
                raise _replay_error(error)
            changes.update(status=RunStatus.FAILED.value, error=_error_json(error))
        else:
            assert type(outcome) is Cancelled
            changes.update(status=RunStatus.CANCELLED.value, result=_display_json(outcome.reason))
        if changes["status"] in FINAL_STATUSES:
            # The final tree is stored before the final status: a reader that sees the run
            # ended reads its final tree, never a copy from before the end.
            await self._close_tasks(step, changes["status"], changes.get("error"))
        await self._commit(step, changes, log)
        step.leased = False
        if type(outcome) is Suspend and receive_topic(outcome.value) is not None:
            # Messages sent before the run got here are waiting for it.
            self._deliver_soon(step.row.id)
            if changes["wake_at"] is not None:
                self._timer_changed.set()  # a new deadline for the timer loop
        return self._to_run(step.row, live)

    async def _release_sleeping(self, step: _Step) -> Run:
        """Release a run whose step stopped at a long sleep: `sleeping` until `sleep_until`."""
        changes: dict[str, Any] = {
            "status": RunStatus.SLEEPING.value,
            "wake_at": step.sleep_until,
            "lease_owner": None,
            "lease_expires": None,
            "answer": None,
        }
        # The wake-up time was checkpointed before the wait began: the log has nothing new.
        await self._commit(step, changes, step.final_log)
        step.leased = False
        self._timer_changed.set()
        return self._to_run(step.row)

    async def _wake(self, row: RunRow, cancel: tuple[Any] | None = None) -> Run:
        """Continue a sleeping run by replay (its timer is due, or it is being cancelled)."""
        if row.id in self._steps:
            raise ConflictError(f"run {row.id!r} is running a step in this process")
        placeholder = _Step(row, LogRows(row.id), None)  # type: ignore[arg-type]
        self._steps[row.id] = placeholder
        try:
            with anyio.CancelScope(shield=True):  # see `_timer_loop`
                row, entries = await self.store.load(row.id)
            if row.status != RunStatus.SLEEPING.value:
                raise ConflictError(f"run {row.id!r} is no longer sleeping ({row.status})")
            function = _registered(row)
            sig = signature(function)
            comp = sig.load_args(row.id, row.args)
            step = _Step(row, LogRows(row.id, entries), sig)
            log = make_log(row.name, row.version, row.id, entries)
            interp = self._interpreter(step, comp, function, log)
            await self._acquire(step, ("sleeping",), cancel=cancel is not None)
        except BaseException:
            del self._steps[row.id]
            raise
        if cancel is not None:
            step.cancelling, step.cancel_reason = True, cancel[0]
        elif row.cancel_requested:
            # Flagged while its last step was releasing it: the cancel is not lost.
            step.cancelling, step.cancel_reason = True, "cancel requested"
        # The replay ends at the recorded wake-up time, which has come (or the cancel wins).
        return await self._launch(step, lambda: interp.adrive(None, None), True, recovering=True)

    # -- snapshots --------------------------------------------------------------------------

    def _publish(self, row: RunRow) -> None:
        subs = self._subscribers.get(row.id)
        if subs:
            run = self._to_run(row)
            for sub in builtins.list(subs):
                sub._offer(run)

    def _to_run(self, row: RunRow, live: Outcome | None = None) -> Run:
        status = RunStatus(row.status)
        outcome: Outcome | None = None
        error: dict[str, Any] | None = None
        if status is RunStatus.SUSPENDED:
            schema = json.loads(row.input_schema) if row.input_schema else None
            prompt = json.loads(row.prompt) if row.prompt is not None else None
            outcome = Suspend(prompt, {}, schema)
        elif status is RunStatus.DONE:
            if type(live) is Done:
                outcome = live
            else:
                outcome = Done(_load_result(row))
        elif status is RunStatus.FAILED:
            error = json.loads(row.error) if row.error else {"type": "?", "message": ""}
            if type(live) is Throw:
                outcome = live
            else:
                outcome = Throw(load_error(error))  # type: ignore[arg-type]
        elif status is RunStatus.CANCELLED:
            outcome = Cancelled(json.loads(row.result) if row.result else None)
        return Run(
            id=row.id,
            name=row.name,
            version=row.version,
            status=status,
            outcome=outcome,
            revision=row.revision,
            created_at=_stamp(row.created_at),
            updated_at=_stamp(row.updated_at),
            args=json.loads(row.args),
            error=error,
            lease_owner=row.lease_owner,
            cancel_requested=bool(row.cancel_requested),
            parked=row.parked,
            recovery_attempts=row.recovery_attempts,
            wake_at=(
                _stamp(row.wake_at)
                # (a suspended run's: when its Receive times out)
                if status in (RunStatus.SLEEPING, RunStatus.SUSPENDED) and row.wake_at is not None
                else None
            ),
            queue=row.queue,
            priority=row.priority,
            dedup_id=row.dedup_id,
        )

    # -- background tasks -------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        """Continue sleeping runs when they are due, whichever process put them to sleep."""
        while True:
            delay = self.timer_poll
            try:
                # Shielded: a query cut off by the runner's shutdown leaves SQLAlchemy a
                # connection to close in a task of its own, which can outlive the event loop.
                with anyio.CancelScope(shield=True):
                    now = await self.store.clock()
                    due = await self.store.due(now)
                    following = await self.store.next_wake(now)
                for row in due:
                    if row.id not in self._steps and self._unwakeable.get(row.id) != row.revision:
                        assert self._tg is not None
                        # Reserved now: the next round must not start it a second time.
                        reserved = _Step(row, LogRows(row.id), None)  # type: ignore[arg-type]
                        self._steps[row.id] = reserved
                        self._tg.start_soon(self._wake_due, row, reserved)
                if following is not None:
                    delay = min(delay, max(following - now, 0.0))
            except Exception as err:
                logger.warning("could not look for due timers: %s", err)
            with anyio.move_on_after(delay):
                await self._timer_changed.wait()
            self._timer_changed = anyio.Event()

    async def _wake_due(self, row: RunRow, reserved: _Step) -> None:
        if self._steps.get(row.id) is reserved:
            del self._steps[row.id]
        if row.status == RunStatus.SUSPENDED.value:
            await _messages.time_out(self, row)  # a Receive's timeout is due
            return
        await self._wake_isolated(row)

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Follow changes committed by other processes (PostgreSQL NOTIFY), for as long as the
        runner lives: a lost connection (a server restart, a network cut) is re-established
        with backoff, and every subscription then re-reads its run, since the notifications
        sent meanwhile are lost."""
        send, receive = anyio.create_memory_object_stream[tuple[str, str]](1024)

        def on_notify(_conn: Any, _pid: int, channel: str, payload: str) -> None:
            # Only runs followed in this process matter (`_notified`, `_notified_tasks`): a
            # worker hears every change of every run, most of them not followed here.
            run_id = payload.rpartition(":")[0]
            if run_id not in self._subscribers and run_id not in self._task_subscribers:
                return
            try:
                send.send_nowait((channel, payload))
            except anyio.WouldBlock:
                pass  # subscribers re-read the run on the next notification

        delay = _LISTEN_RETRY_FIRST
        started = False

        async def listening() -> None:
            nonlocal started, delay
            if not started:
                task_status.started()
                started = True
            else:
                for run_id in builtins.list(self._subscribers):
                    try:
                        self._publish(await self.store.get(run_id))
                    except RunNotFound:
                        continue
                for run_id in builtins.list(self._task_subscribers):
                    await self._reread_tasks(run_id)
                logger.info("listening again for changes of other processes")
                self._queue_notified(None, 0, QUEUE_CHANNEL, None)  # enqueues may be missed
            delay = _LISTEN_RETRY_FIRST

        with send, receive:
            while True:
                try:
                    await self._listen_once(on_notify, receive, listening)
                except Exception as err:
                    if not started:
                        raise  # the runner does not start without it
                    logger.warning(
                        "lost the connection that listens for changes of other processes "
                        "(%s); reconnecting in %.1f s",
                        " ".join(str(err).split()) or type(err).__name__,
                        delay,
                    )
                await anyio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX)

    async def _listen_once(
        self,
        on_notify: Callable[..., None],
        receive: anyio.abc.ObjectReceiveStream[tuple[str, str]],
        listening: Callable[[], Awaitable[None]],
    ) -> None:
        """LISTEN on one connection and handle notifications until that connection is lost
        (then raise)."""
        async with self.store.engine.connect() as conn:
            # After a server restart the pool may hand out a dead connection: a query finds
            # out (and SQLAlchemy then discards the pool's other connections of that time).
            await conn.exec_driver_sql("SELECT 1")
            await conn.rollback()  # a LISTEN inside a transaction would wait for its commit
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            lost = anyio.Event()

            def on_lost(_conn: Any) -> None:
                lost.set()

            driver.add_termination_listener(on_lost)
            try:
                await driver.add_listener(NOTIFY_CHANNEL, on_notify)
                await driver.add_listener(QUEUE_CHANNEL, self._queue_notified)
                await driver.add_listener(TASKS_CHANNEL, on_notify)
                # Changes committed before the LISTEN are read by `listening` (after it, so
                # nothing falls between the two).
                await listening()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_connection, driver, lost, tg.cancel_scope)
                    async for channel, payload in receive:
                        if channel == TASKS_CHANNEL:
                            await self._notified_tasks(payload)
                        else:
                            await self._notified(payload)
            finally:
                driver.remove_termination_listener(on_lost)
                with anyio.CancelScope(shield=True):
                    if lost.is_set() or driver.is_closed():
                        await conn.invalidate()
                    else:
                        try:
                            await driver.remove_listener(NOTIFY_CHANNEL, on_notify)
                            await driver.remove_listener(QUEUE_CHANNEL, self._queue_notified)
                            await driver.remove_listener(TASKS_CHANNEL, on_notify)
                        except Exception:  # closing anyway
                            await conn.invalidate()
        raise ConnectionError("the listening connection was closed")

    async def _watch_connection(
        self, driver: Any, lost: anyio.Event, scope: anyio.CancelScope
    ) -> None:
        # A server that goes away closes the connection (asyncpg then calls `on_lost`); a
        # network that goes silent does not: probe it once per lease period.
        while True:
            with anyio.move_on_after(self.lease):
                await lost.wait()
                break
            try:
                with anyio.fail_after(self.lease / 3):
                    await driver.execute("SELECT 1")
            except Exception:
                break
        scope.cancel()

    async def _follow_by_polling(self) -> None:
        """Without NOTIFY (SQLite, psycopg), the runs followed in this process (subscriptions,
        watches, task trees) are read every `follow_poll` seconds, and what changed in another
        process is handed over as a notification would be. Runs whose step runs here are
        skipped: the step hands over its own changes; and nothing is read while no other
        runner holds a live claim on the store (looked up every `_OTHERS_CHECK` seconds):
        only runners change runs."""
        others, next_check = False, 0.0
        while True:
            await anyio.sleep(self.follow_poll)
            ids = [
                run_id
                for run_id in {*self._subscribers, *self._task_subscribers}
                if run_id not in self._steps
            ]
            if not ids:
                continue
            try:
                if anyio.current_time() >= next_check:
                    others = await self.store.others_alive(self.owner)
                    next_check = anyio.current_time() + _OTHERS_CHECK
                if not others:
                    continue
                found = await self.store.followed(ids)
            except Exception as err:
                logger.warning("could not read the runs followed here: %s", err)
                continue
            for run_id in ids:
                state = found.get(run_id)
                if state is None:  # gone (purged): its followers are told and closed
                    await self._notified(f"{run_id}:0!")
                    continue
                revision, cancel, status, tree_version = state
                subs = self._subscribers.get(run_id, ())
                if any(
                    s._latest is None
                    or s._latest.revision < revision
                    or s._latest.cancel_requested != cancel
                    for s in subs
                ) or (status in FINAL_STATUSES and self._task_subscribers.get(run_id)):
                    await self._notified(f"{run_id}:{revision}!")
                if tree_version is not None:
                    await self._notified_tasks(f"{run_id}:{tree_version}")

    def _queue_notified(self, _conn: Any, _pid: int, _channel: str, payload: str | None) -> None:
        # A run was enqueued on (or a slot freed in) the queue named `payload`.
        for wake in builtins.list(self._queue_wakers):
            wake(payload)

    async def _notified(self, payload: str) -> None:
        run_id, _, revision = payload.rpartition(":")
        flagged = revision.endswith("!")
        revision = revision.rstrip("!")
        subs = self._subscribers.get(run_id, set())
        # Tree subscribers learn here that a run running elsewhere ended (its final tree was
        # stored first); those of a step running here learn it from the step.
        step = self._steps.get(run_id)
        local = step is not None and step.tasks is not None
        trees = [] if local else [s for s in self._task_subscribers.get(run_id, ()) if not s.ended]
        if not (subs or trees) or not revision.isdigit():
            return
        seen = all(s._latest is not None and s._latest.revision >= int(revision) for s in subs)
        if seen and not flagged and not trees:
            return
        try:
            row = await self.store.get(run_id)
        except RunNotFound:
            # Purged (`purge` announces the runs it removed): nothing will change any more.
            for sub in builtins.list(subs):
                sub._close()
            return
        except Exception as err:
            logger.warning("run %s: could not read a change: %s", run_id, err)
            return
        self._publish(row)
        if trees and row.status in FINAL_STATUSES:
            await self._reread_tasks(run_id)

    # -- operating on stored runs (see _fork.py, _retention.py) -----------------------------

    async def fork(
        self,
        run_id: str,
        *,
        at: int,
        answer: Any = NOT_GIVEN,
        new_id: str | None = None,
        wait: bool = True,
    ) -> Run:
        """Start a new run whose log is the log of `run_id` before step `at` (the `seq` that
        `get_log` and `runs show` print), continued from there: with `answer`, step `at` must
        be a `Yield`, answered with `answer` instead (validated like `resume`); without, the
        new run performs step `at` again, live. Returns the new run after its first step (or at
        once with `wait=False`); `new_id` defaults to a new time-ordered uuid.

        The source run is only read. The new run and its log are written in one transaction
        (a crash before the commit leaves nothing; after it, `recover()` finishes the fork).
        A step that is not in the log, a step with an answer that is not a `Yield`, and a
        prefix ending with an unanswered step are `ConfigurationError`s; the computation must
        be registered here, as for `resume`.
        """
        return await _fork.fork(self, run_id, at, answer, new_id, wait)

    async def purge(
        self,
        *,
        older_than: float | timedelta,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        batch: int = 500,
        dry_run: bool = False,
    ) -> int:
        """Remove the runs last changed more than `older_than` (seconds or a `timedelta`) ago,
        with their logs, task trees and output; returns how many (with `dry_run=True`, how
        many would be, removing nothing).

        Only finished runs (done, failed, cancelled) unless `status` names others (one or
        several statuses, exactly those purged): running, suspended, sleeping or queued runs
        are purged only when asked for by name, and a run whose step holds a live lease
        (executing in some process) never is. Runs go `batch` at a time, one transaction per
        batch: a crash leaves each batch fully purged or untouched.
        """
        return await _retention.purge(self, older_than, status, batch, dry_run)

    def _deliver_soon(self, run_id: str) -> None:
        async def delivering() -> None:
            try:
                await _messages.deliver(self, run_id)
            except Exception:
                logger.exception("durable run %s: delivering its messages failed", run_id)

        if self._tg is not None:
            self._tg.start_soon(delivering)

    async def send(self, run_id: str, topic: str, value: Any) -> Run:
        """Send `value` to the run on `topic`; returns the run as it is after delivery.

        The message is stored first (`RunNotFound` for no such run, `ResumeError` for a
        finished one). If the run waits at a `Receive(topic)`, it is resumed with the oldest
        message of that topic it has not consumed (validated against the `Receive`'s `input`:
        `InvalidInput` leaves run and message as they were), and so on while it reaches
        another `Receive` with a message waiting. Messages sent before the run waits are
        kept, in order. Each is delivered exactly once: a run has consumed as many messages of
        a topic as its checkpointed log records `Receive`s of it. A run busy in a step (here
        or in another process) is left alone: it takes its messages when it reaches its next
        `Receive` (`deliver`).
        """
        return await _messages.send(self, run_id, topic, value)

    async def deliver(self, run_id: str) -> Run:
        """Deliver the waiting messages a suspended run's `Receive` is due (what `send` does
        after storing its message; runs reaching a `Receive` call it themselves)."""
        return await _messages.deliver(self, run_id)

    async def query(self, run_id: str, fn: Callable[[Mapping[Any, Any]], T]) -> T:
        """Evaluate `fn` over a suspended run's state without resuming it: the run is replayed
        in memory to its suspension (no handler called, nothing written, no lease taken) and
        `fn` gets a read-only view of what the handlers in scope show there, `Suspend.data`:
        `view[State]` the State's value, `view[Writer]` its items, `view[EventAccumulator]` the
        events, `view[EffectLogger]` the log. A run that is not suspended raises as `resume`
        would (`ConflictError` while a step runs, `ResumeError` once finished).
        """
        return await _messages.query(self, run_id, fn)


# Errors of a recovery that say the code deployed here cannot run the run (an unknown
# computation, a log it cannot replay, a missing handler): left for a fixed deployment, not
# counted as failed attempts.
_DEPLOYMENT_ERRORS = (DivergenceError, LogError, ConfigurationError, LookupError)


def _missing_handler(err: BaseException) -> MissingHandlerError | None:
    """The missing handler behind a step's error, if that is what it is."""
    if isinstance(err, MissingHandlerError):
        return err
    # A handler missing in this process makes the replay raise where the recording process
    # got an answer, which the logger may then report as a divergence.
    if isinstance(err, DivergenceError | LogError) and isinstance(
        err.__context__, MissingHandlerError
    ):
        return err.__context__
    return None


def _replay_error(err: BaseException) -> BaseException:
    return _missing_handler(err) or err


# How long a resume or cancel waits for a step that already committed its suspension to be
# put away (releasing its lease, closing its task tree: normally milliseconds).
_PUT_AWAY_WAIT = 10.0


def _placeholder_row(run_id: str) -> RunRow:
    return RunRow(
        run_id, "", 0, "{}", "running", None, None, None, None, None, 0, None, None, False, 0, 0
    )


def _function_of(comp: Any) -> ComputationFunction[Any, Any]:
    if not isinstance(comp, Comp):
        raise ConfigurationError(
            f"a durable run needs a call of a @computation function, got {comp!r}"
        )
    function = comp.function
    try:
        found = registered(function.name)
    except LookupError:
        found = None
    if found is not function:
        raise ConfigurationError(
            f"{function!r} is not the computation registered under {function.name!r}; "
            "a restarted process finds computations by name"
        )
    return function


def _registered(row: RunRow) -> ComputationFunction[Any, Any]:
    try:
        function = registered(row.name)
    except LookupError as err:
        raise ConfigurationError(f"run {row.id!r}: {err}") from None
    if function.version < row.version:
        raise LogError(
            f"run {row.id!r} was last run by version {row.version} of {row.name!r}; this "
            f"process has version {function.version}, which cannot replay it"
        )
    return function


def _load_result(row: RunRow) -> Any:
    if row.result is None:
        return None
    try:
        function = registered(row.name)
    except LookupError:
        return json.loads(row.result)
    try:
        return signature(function).load_result(row.result)
    except Exception:
        return json.loads(row.result)
