"""Algebraic effects for Python: computations yield effects, handlers decide what they mean.

The same generator runs with test or production handlers, synchronously or on anyio, and
suspends at `Yield` for input. Durable runs live in `effects.durable`; test doubles in
`effects.testing`; task trees, progress and output in `effects.tasks` (its computation-facing
names are re-exported here).
"""

from ._async_computation import AsyncComputation, Message
from ._computation import Comp, Computation, ComputationFunction, computation
from ._effect import Effect, result_type
from ._exceptions import (
    AsyncHandlerError,
    Cancellation,
    ConfigurationError,
    ConflictError,
    DivergenceError,
    EffectsError,
    InterruptedEffect,
    InvalidInput,
    LogError,
    MissingHandlerError,
    ResumeError,
    RunNotFound,
    SerializationError,
    TimeoutError,
    UnhandledSuspension,
    YieldDuringCancellation,
)
from ._handler import (
    Handler,
    PairedOutput,
    Stack,
    WithHandler,
    handler,
    handles,
    with_handler,
)
from ._interpreter import InScope, running_async
from ._outcome import Cancelled, Done, Outcome, Suspend, Throw
from ._runners import arun, astart, run, start
from ._std.call import Call, Retry
from ._std.control import Err, Ok, Yield, bracket, catch, try_catch
from ._std.parallel import Branching, Parallel, current_branch
from ._std.receive import Receive
from ._std.state import EventAccumulator, Reader, State, Writer
from ._std.transaction import Transactional, transaction
from ._std.world import Clock, Fresh, Random
from .tasks import (
    Output,
    OutputLine,
    Print,
    Progress,
    TaskNode,
    TaskSnapshot,
    TaskTree,
    task,
)

__all__ = (
    # core
    "Effect",
    "Computation",
    "Comp",
    "ComputationFunction",
    "computation",
    "result_type",
    "Handler",
    "handler",
    "handles",
    "with_handler",
    "WithHandler",
    "Stack",
    "PairedOutput",
    "InScope",
    # outcomes
    "Outcome",
    "Done",
    "Suspend",
    "Throw",
    "Cancelled",
    # runners
    "run",
    "arun",
    "start",
    "astart",
    "running_async",
    "AsyncComputation",
    "Message",
    # standard effects
    "Yield",
    "Receive",
    "catch",
    "try_catch",
    "Ok",
    "Err",
    "bracket",
    "State",
    "Reader",
    "Writer",
    "EventAccumulator",
    "Fresh",
    "Random",
    "Clock",
    "Call",
    "Retry",
    "transaction",
    "Transactional",
    "Parallel",
    "Branching",
    "current_branch",
    # tasks, progress and output
    "task",
    "Progress",
    "Output",
    "Print",
    "TaskTree",
    "TaskSnapshot",
    "TaskNode",
    "OutputLine",
    # exceptions
    "EffectsError",
    "MissingHandlerError",
    "AsyncHandlerError",
    "UnhandledSuspension",
    "ResumeError",
    "YieldDuringCancellation",
    "InvalidInput",
    "TimeoutError",
    "ConfigurationError",
    "SerializationError",
    "LogError",
    "DivergenceError",
    "ConflictError",
    "InterruptedEffect",
    "RunNotFound",
    "Cancellation",
)
