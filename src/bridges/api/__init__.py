"""The JSON API for durable runs, beside the live pages: `api_app`, `RunsApi`, `ApiComputation`.

Start, list, read, answer and cancel runs with JSON requests, and follow a run over
Server-Sent Events (a snapshot, then its state, task tree, progress, output and prompts, with
the prompt's JSON Schema). Callers are the pages' browser sessions (cookie + CSRF header) or
bearer-token users; a run that is not the caller's is a 404. Mount it in any Starlette app::

    app = Starlette(routes=[Mount("/api", app=api_app(runner, computations=[signup],
                                                      secret=SECRET))])

See docs/api/json-api.md for the wire format, and clients/typescript for a typed client.
"""

from ._app import ApiComputation, ApiLimits, RunsApi, api_app
from ._auth import Caller, Verify
from ._models import (
    AnswerIn,
    ApiError,
    CancelIn,
    ComputationList,
    ComputationOut,
    EndEvent,
    PingEvent,
    PromptOut,
    RunError,
    RunEvent,
    RunList,
    RunOut,
    SessionOut,
    SnapshotEvent,
    StartIn,
    StreamEvent,
    TasksEvent,
)

__all__ = (
    # serving the API
    "api_app",
    "RunsApi",
    "ApiComputation",
    "ApiLimits",
    "Caller",
    "Verify",
    # requests
    "StartIn",
    "AnswerIn",
    "CancelIn",
    # responses
    "RunOut",
    "PromptOut",
    "RunError",
    "RunList",
    "ComputationOut",
    "ComputationList",
    "SessionOut",
    "ApiError",
    # stream events
    "StreamEvent",
    "SnapshotEvent",
    "RunEvent",
    "TasksEvent",
    "EndEvent",
    "PingEvent",
)
