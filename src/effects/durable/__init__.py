"""Durable runs: record a computation's effects, replay them, resume cold after a restart.

`EffectLogger` is a handler installed directly around a computation. It records every effect
that is not handled by a replayable in-memory handler as a `LogEntry` in a `Log` (pydantic
models, stored as JSON), and replays a log so that a restarted run returns the recorded results
without performing the effects again, up to the `Yield` it was waiting at.

`DurableRunner.enqueue` puts runs on a durable `Queue`; `DurableRunner.work` (a `Worker`) or
`python -m effects worker` claims and runs them in worker processes.

`durable_loop` keeps long loops' logs bounded; `patched` lets a changed computation replay runs
recorded by its older version; `Checkpoint`, `StartTimer`, `AwaitTimer`, `idempotency_key` and
`at_most_once` are the contract with a durable store. `Clock.sleep` in a logged run is a durable
timer: its wake-up time is recorded before it waits. A runner keeps a copy of each run's task
tree in the store (`DurableRunner.task_tree`, `subscribe_tasks`, `TaskSubscription`).
`replay` checks a stored log against the code deployed now, performing nothing (a CI step).
`DurableRunner.watch` and `watch_tasks` follow a run with a callback instead of a task.
"""

from ._effects import AwaitTimer, Checkpoint, StartTimer, at_most_once, idempotency_key
from ._log import ErrorInfo, Log, LogEntry
from ._logger import EffectLogger
from ._loop import LoopDone, durable_loop
from ._queues import Queue
from ._replay import Replayed, replay
from ._run import Run, RunStatus, Subscription
from ._runner import DurableRunner, current_run_id
from ._serialize import ReplayedError
from ._tasks import TaskSubscription
from ._versioning import Patched, patched
from ._watch import RunWatch, TaskWatch
from ._worker import Worker

__all__ = (
    "DurableRunner",
    "Queue",
    "Worker",
    "Run",
    "RunStatus",
    "Subscription",
    "TaskSubscription",
    "RunWatch",
    "TaskWatch",
    "current_run_id",
    "EffectLogger",
    "Log",
    "LogEntry",
    "ErrorInfo",
    "Checkpoint",
    "StartTimer",
    "AwaitTimer",
    "idempotency_key",
    "at_most_once",
    "durable_loop",
    "LoopDone",
    "patched",
    "Patched",
    "ReplayedError",
    "replay",
    "Replayed",
)
