"""The JSON API's wire models: request bodies (validated, bounded) and responses and events.

Every request body is parsed by one of the `*In` models (strict, unknown fields refused,
strings bounded); every response and stream event is one of the `*Out` / `*Event` models.
The TypeScript client's types are generated from these models (`python -m bridges.api.schemas`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from bridges.live import Prompt
from effects.durable import Run
from effects.tasks import TaskSnapshot

MAX_KEY = 64
"""The longest idempotency key taken (`StartIn.key`)."""

Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY, pattern=r"^[\w.:-]+$")]
RunStatusName = Literal["queued", "running", "suspended", "sleeping", "done", "failed", "cancelled"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    # Fields with defaults are always sent: in the JSON Schema (serialization mode) they are
    # required, so generated client types do not mark them optional.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class StartIn(_In):
    """`POST /runs`: start a run of `computation` with `input` (validated against the
    computation's input model). Runs started with the same `key` by the same caller are one
    run: repeating the request (a retry after a lost response) starts nothing new."""

    computation: str = Field(min_length=1, max_length=200)
    input: dict[str, JsonValue] = Field(default_factory=dict)
    key: Key | None = None


class AnswerIn(_In):
    """`POST /runs/{id}/answer`: answer the step the run is suspended at. `revision` is the
    run's revision the answer is for (an answer to a step that is no longer current is a 409,
    never applied to the next step); `value` is validated against the step's input model."""

    revision: int = Field(ge=1, le=2**62)
    value: JsonValue = None


class CancelIn(_In):
    """`POST /runs/{id}/cancel` (the body may be empty): cancel the run, with a `reason`."""

    reason: str | None = Field(default=None, max_length=500)


class PromptOut(_Out):
    """What a suspended run asks: the `Yield`'s `value` as stored, read like the pages read it
    (`title`, `text`, `submit`), and the JSON Schema of the answer (`input`, None when any
    JSON is taken) with its `input_name` (the schema's title: the input model's name)."""

    value: JsonValue
    title: str
    text: str | None = None
    submit: str = "Continue"
    input: dict[str, JsonValue] | None = None
    input_name: str | None = None


class RunError(_Out):
    """Why a run failed: the exception's type (its class name) and message. The traceback
    stays on the server."""

    type: str
    message: str


class RunOut(_Out):
    """A run as the API shows it (the committed state, the same in every process).

    `prompt` is set while `suspended`, `result` once `done` (as JSON), `error` once `failed`;
    `revision` grows with every committed change (answer with the revision you saw);
    `cancel_requested` is set while a cancel waits for the process running the step."""

    id: str
    computation: str
    version: int
    status: RunStatusName
    revision: int
    created_at: datetime
    updated_at: datetime
    args: dict[str, JsonValue]
    prompt: PromptOut | None = None
    result: JsonValue = None
    error: RunError | None = None
    cancel_requested: bool = False
    wake_at: datetime | None = None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        """The API's view of a `Run`."""
        prompt = None
        if run.status == "suspended":
            asked = Prompt.of(run.prompt)
            schema = getattr(run.outcome, "input", None)
            schema = schema if isinstance(schema, dict) else None
            title = schema.get("title") if schema is not None else None
            prompt = PromptOut(
                value=_json(run.prompt),
                title=asked.title,
                text=asked.text,
                submit=asked.submit,
                input=_json(schema),
                input_name=title if isinstance(title, str) else None,
            )
        result = None
        if run.status == "done" and run.outcome is not None:
            result = _json(getattr(run.outcome, "value", None))
        error = None
        if run.status == "failed":
            stored = run.error or {}
            kind = str(stored.get("type", "")).rsplit(".", 1)[-1] or "Error"
            error = RunError(type=kind, message=str(stored.get("message", "")))
        return cls(
            id=run.id,
            computation=run.name,
            version=run.version,
            status=run.status.value,
            revision=run.revision,
            created_at=run.created_at,
            updated_at=run.updated_at,
            args=_json(run.args),
            prompt=prompt,
            result=result,
            error=error,
            cancel_requested=run.cancel_requested,
            wake_at=run.wake_at,
        )


def _json(value: Any) -> Any:
    # Results are rebuilt as Python objects (pydantic models, dataclasses...): as JSON again,
    # anything pydantic cannot describe shown as its text rather than failing the response.
    return pydantic_core.to_jsonable_python(value, fallback=str)


class RunList(_Out):
    """`GET /runs`: the caller's runs, newest first."""

    runs: list[RunOut]


class ComputationOut(_Out):
    """`GET /computations`: a computation the API starts, the JSON Schema of its start input,
    and the JSON Schemas of the prompts it declares (by input model name)."""

    name: str
    input: dict[str, JsonValue]
    prompts: dict[str, dict[str, JsonValue]]


class ComputationList(_Out):
    """`GET /computations`."""

    computations: list[ComputationOut]


class SessionOut(_Out):
    """`GET /session`: who the caller is to the API. With a session cookie (set by this very
    response when the browser had none), `csrf` is the token to send back in the
    `X-CSRF-Token` header of every POST; a bearer-token caller needs none (`csrf` is None)."""

    csrf: str | None
    auth: Literal["session", "bearer"]


class ApiError(_Out):
    """Every error response: a machine-readable `error` code, a `message` for people, and
    pydantic's validation `errors` (`loc`, `msg`, `type`) for a 422. A 409 on a run carries the
    run as it is now."""

    error: str
    message: str
    errors: list[dict[str, JsonValue]] = Field(default_factory=list)
    run: RunOut | None = None


class SnapshotEvent(_Out):
    """The first event of every stream: the run and its task tree now. `tasks_unchanged`:
    the client's `Last-Event-ID` named the tree it already has, which is then not sent again
    (`tasks` is None)."""

    type: Literal["snapshot"] = "snapshot"
    run: RunOut
    tasks: TaskSnapshot | None = None
    tasks_unchanged: bool = False


class RunEvent(_Out):
    """The run changed (status, prompt, result...): its new state."""

    type: Literal["run"] = "run"
    run: RunOut


class TasksEvent(_Out):
    """The run's task tree changed (tasks, progress, output): the whole new tree. A slow
    client skips intermediate trees; output lines carry a `seq` to merge by."""

    type: Literal["tasks"] = "tasks"
    tasks: TaskSnapshot


class EndEvent(_Out):
    """The run finished and its final tree was sent: the stream ends after this event."""

    type: Literal["end"] = "end"
    run: RunOut


class PingEvent(_Out):
    """Sent on an idle stream every `heartbeat` seconds (proxies close silent connections)."""

    type: Literal["ping"] = "ping"


StreamEvent = Annotated[
    SnapshotEvent | RunEvent | TasksEvent | EndEvent | PingEvent, Field(discriminator="type")
]
"""Any event of a run's stream (`data:` of the SSE event whose `event:` is its `type`)."""
