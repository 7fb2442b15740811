"""`RunsApi`: the JSON API for durable runs, as Starlette routes or a mountable app.

Routes, relative to where the API is mounted:

- `GET /session`: the caller's CSRF token (sets the session cookie if the browser has none);
- `GET /computations`: what can be started, with JSON Schemas;
- `POST /runs` (`StartIn`) → 201 `RunOut` (200 for a repeated `key`);
- `GET /runs` → `RunList`; `GET /runs/{id}` → `RunOut`;
- `POST /runs/{id}/answer` (`AnswerIn`) → 202 `RunOut`, 422 with pydantic's errors, 409 stale;
- `POST /runs/{id}/cancel` (`CancelIn`, may be empty) → `RunOut`;
- `GET /runs/{id}/events`: Server-Sent Events (`SnapshotEvent`, `RunEvent`, `TasksEvent`,
  `EndEvent`, `PingEvent`).

Errors are `ApiError` JSON. A run that is not the caller's, or of a computation the API does
not serve, is a 404 like a run that does not exist.
"""

from __future__ import annotations

import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bridges.live import RateLimit
from effects import (
    ComputationFunction,
    ConflictError,
    InvalidInput,
    ResumeError,
    RunNotFound,
    SerializationError,
)
from effects.durable import DurableRunner, Queue, Run

from ._auth import Auth, AuthError, Caller, Verify
from ._body import BodyError, json_errors, parse_body
from ._models import (
    AnswerIn,
    ApiError,
    CancelIn,
    ComputationList,
    ComputationOut,
    RunList,
    RunOut,
    SessionOut,
    StartIn,
)
from ._stream import RunStream

log = logging.getLogger("bridges.api")

_RESUME_ATTEMPTS = 10  # an answer meeting the previous step still being put away retries
_CANCEL_ATTEMPTS = 20  # a cancel meeting a step being set up or torn down retries

RunnerSource = DurableRunner | Callable[[], DurableRunner]
"""The runner, or a function returning it (for a runner opened later, in a lifespan)."""


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """The JSON API's bounds: `max_body` bytes of a request body, `starts_per_minute` per
    caller (429 past it, per server process), `max_streams` open event streams in the process
    and `streams_per_caller` per caller (429 past them), `list_limit` runs listed at most."""

    max_body: int = 64 * 1024
    starts_per_minute: int = 10
    max_streams: int = 1_000
    streams_per_caller: int = 8
    list_limit: int = 100

    def __post_init__(self) -> None:
        for name in ("max_body", "starts_per_minute", "max_streams", "streams_per_caller"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"ApiLimits.{name} must be a positive integer")


@dataclass(slots=True)
class ApiComputation:
    """A computation the API serves.

    - `function`: the `@computation` function.
    - `input`: the pydantic model of its start input (its fields are the function's keyword
      arguments). Default: a model made from the function's parameters and type hints.
    - `prompts`: the input models of its `Yield`s, declared for clients (their JSON Schemas are
      listed by `GET /computations` and become TypeScript types); answers are validated by the
      run's own `Yield` whether listed or not.
    - `queue`: enqueue its runs on this durable queue for workers instead of starting them in
      the web process.
    """

    function: ComputationFunction[..., Any]
    input: type[pydantic.BaseModel] | None = None
    prompts: Sequence[type[pydantic.BaseModel]] = ()
    queue: str | Queue | None = None
    _model: type[pydantic.BaseModel] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The computation's registered name."""
        return self.function.name

    @property
    def input_model(self) -> type[pydantic.BaseModel]:
        """The start input model (given, or made from the function's signature)."""
        if self.input is not None:
            return self.input
        if self._model is None:
            self._model = _signature_model(self.function)
        return self._model


def _signature_model(function: ComputationFunction[..., Any]) -> type[pydantic.BaseModel]:
    hints = typing.get_type_hints(function.fn)
    fields: dict[str, Any] = {}
    for p in inspect.signature(function.fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(
                f"computation {function.name!r}: give ApiComputation(input=Model), its "
                f"parameter {p.name!r} cannot be a field of a start input"
            )
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    title = "".join(part.capitalize() for part in function.name.replace("-", "_").split("_"))
    return pydantic.create_model(
        f"{title}Input", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )


def _error(
    status: int,
    code: str,
    message: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    run: Run | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ApiError(
        error=code,
        message=message,
        errors=errors or [],
        run=RunOut.of(run) if run is not None else None,
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers={**_HEADERS, **(headers or {})}
    )


_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _ok(model: pydantic.BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=_HEADERS)


class RunsApi:
    """The JSON API for durable runs of `computations` (see the module docstring for routes).

    `routes` to add to a Starlette app or `Router`; `app()` for an app to `Mount`. It needs no
    lifespan of its own: `runner` is the app's `DurableRunner`, or a function returning it (the
    runner of `run_app`, opened by that app's lifespan: `live.state["runs"].the_runner`).
    Authentication: see `api_app`.
    """

    def __init__(
        self,
        runner: RunnerSource,
        *,
        computations: Iterable[ComputationFunction[..., Any] | ApiComputation],
        secret: str | bytes,
        cookies: bool = True,
        bearer: Verify | None = None,
        allowed_origins: Sequence[str] = (),
        https_only: bool = False,
        limits: ApiLimits | None = None,
        heartbeat: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self.computations: dict[str, ApiComputation] = {}
        for item in computations:
            spec = item if isinstance(item, ApiComputation) else ApiComputation(item)
            if spec.name in self.computations:
                raise ValueError(f"computation {spec.name!r} is listed twice")
            spec.input_model  # noqa: B018 - a signature that cannot be a model fails now
            self.computations[spec.name] = spec
        self.auth = Auth(
            secret,
            https_only=https_only,
            cookies=cookies,
            bearer=bearer,
            allowed_origins=frozenset(allowed_origins),
        )
        self.limits = limits if limits is not None else ApiLimits()
        self.heartbeat = heartbeat
        self.start_limit = RateLimit(self.limits.starts_per_minute, 60.0, clock=clock)
        self._streams: dict[str, int] = {}
        self._stream_count = 0

    @property
    def runner(self) -> DurableRunner:
        """The runner (raises `RuntimeError` while it is not open)."""
        runner = self._runner if isinstance(self._runner, DurableRunner) else self._runner()
        return runner

    @property
    def routes(self) -> list[BaseRoute]:
        """The API's routes, relative to where they are mounted."""
        return [
            Route("/session", self._guard(self.session), methods=["GET"]),
            Route("/computations", self._guard(self.list_computations), methods=["GET"]),
            Route("/runs", self._guard(self.start), methods=["POST"]),
            Route("/runs", self._guard(self.list_runs), methods=["GET"]),
            Route("/runs/{run_id}", self._guard(self.get_run), methods=["GET"]),
            Route("/runs/{run_id}/answer", self._guard(self.answer), methods=["POST"]),
            Route("/runs/{run_id}/cancel", self._guard(self.cancel), methods=["POST"]),
            Route("/runs/{run_id}/events", self._guard(self.events), methods=["GET"]),
        ]

    def app(self) -> Starlette:
        """A Starlette app serving the routes (for `Mount("/api", app=...)`); its 404s and
        405s are `ApiError` JSON too."""
        return Starlette(routes=self.routes, exception_handlers={HTTPException: _http_error})

    # -- plumbing -----------------------------------------------------------------------------

    def _guard(
        self, endpoint: Callable[[Request, Caller], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            unsafe = request.method not in ("GET", "HEAD")
            try:
                if endpoint.__name__ == "session":
                    caller = await self._session_caller(request)
                else:
                    caller = await self.auth.caller(request, unsafe=unsafe)
                return await endpoint(request, caller)
            except AuthError as err:
                return _error(err.status, err.code, err.message)
            except BodyError as err:
                return _error(err.status, err.code, err.message, errors=err.errors)
            except _NotFound:
                return _error(404, "not_found", "no such run")

        guarded.__name__ = endpoint.__name__
        return guarded

    async def _session_caller(self, request: Request) -> Caller:
        if request.headers.get("authorization") is not None or not self.auth.cookies:
            return await self.auth.caller(request, unsafe=False)
        # The one request that may create a session, like a page's GET.
        return Caller(self.auth.sessions.load_or_create(request), "session")

    async def _own_run(self, caller: Caller, run_id: str) -> Run:
        # Ownership is checked before the store is read: another caller's id (or a made-up
        # one) costs no query and says nothing about whether it exists.
        if len(run_id) > 200 or not caller.session.owns(run_id):
            raise _NotFound
        try:
            run = await self.runner.get(run_id)
        except RunNotFound:
            raise _NotFound from None
        if run.name not in self.computations:
            raise _NotFound
        return run

    # -- endpoints ----------------------------------------------------------------------------

    async def session(self, request: Request, caller: Caller) -> Response:
        """`GET /session`."""
        csrf = caller.session.csrf if caller.via == "session" else None
        response = _ok(SessionOut(csrf=csrf, auth=caller.via))
        self.auth.sessions.save(response, caller.session)
        return response

    async def list_computations(self, request: Request, caller: Caller) -> Response:
        """`GET /computations`."""
        return _ok(
            ComputationList(
                computations=[
                    ComputationOut(
                        name=spec.name,
                        input=spec.input_model.model_json_schema(),
                        prompts={m.__name__: m.model_json_schema() for m in spec.prompts},
                    )
                    for spec in self.computations.values()
                ]
            )
        )

    async def start(self, request: Request, caller: Caller) -> Response:
        """`POST /runs`."""
        body = await parse_body(request, StartIn, self.limits.max_body)
        spec = self.computations.get(body.computation)
        if spec is None:
            return _error(
                422,
                "invalid",
                "no such computation",
                errors=[{"loc": ["computation"], "msg": "unknown computation", "type": "unknown"}],
            )
        try:
            answers = spec.input_model.model_validate(body.input)
        except pydantic.ValidationError as err:
            errors = err.errors(include_url=False, include_input=False, include_context=False)
            return _error(
                422, "invalid", "the input does not fit", errors=json_errors(errors, ("input",))
            )
        session = caller.session
        run_id = session.run_id_for(f"api:{body.key}") if body.key else session.new_run_id()
        runner = self.runner
        if body.key:
            try:
                existing = await runner.get(run_id)
            except RunNotFound:
                pass
            else:
                return self._repeated(existing, spec)
        wait = self.start_limit.take(session.owner_tag)
        if wait is not None:
            seconds = str(max(1, int(wait + 0.999)))
            return _error(
                429,
                "rate_limited",
                f"too many runs started in the last minute: try again in {seconds} s",
                headers={"Retry-After": seconds},
            )
        comp = spec.function(
            **{name: getattr(answers, name) for name in type(answers).model_fields}
        )
        try:
            if spec.queue is not None:
                run = await runner.enqueue(comp, queue=spec.queue, run_id=run_id)
            else:
                run = await runner.start(comp, run_id=run_id, wait=False)
        except ConflictError:
            # The same key with other input: the first start stands.
            return self._repeated(await runner.get(run_id), spec)
        except SerializationError as err:
            # Input that validates but cannot be stored (a lone surrogate...): nothing stored.
            return _error(
                422,
                "invalid",
                "the input cannot be stored",
                errors=[{"loc": ["input"], "msg": str(err), "type": "unstorable"}],
            )
        return _ok(RunOut.of(run), 201)

    def _repeated(self, run: Run, spec: ApiComputation) -> Response:
        if run.name != spec.name:
            return _error(409, "conflict", "this key started a run of another computation")
        return _ok(RunOut.of(run), 200)

    async def list_runs(self, request: Request, caller: Caller) -> Response:
        """`GET /runs?computation=NAME&limit=N`."""
        name = request.query_params.get("computation")
        if name is not None and name not in self.computations:
            return _ok(RunList(runs=[]))
        raw = request.query_params.get("limit", str(self.limits.list_limit))
        if not raw.isdigit() or not 1 <= int(raw) <= self.limits.list_limit:
            return _error(
                422, "invalid", f"limit must be an integer from 1 to {self.limits.list_limit}"
            )
        limit = int(raw)
        session = caller.session
        # Only this caller's runs are read: its run ids start with its owner tag.
        found: list[Run] = []
        for prefix in session.run_id_prefixes():
            found += await self.runner.list(
                name=[name] if name is not None else list(self.computations),
                id_prefix=prefix,
                newest_first=True,
                limit=limit,
            )
        mine = [r for r in found if session.owns(r.id)]
        mine.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return _ok(RunList(runs=[RunOut.of(r) for r in mine[:limit]]))

    async def get_run(self, request: Request, caller: Caller) -> Response:
        """`GET /runs/{id}`."""
        return _ok(RunOut.of(await self._own_run(caller, request.path_params["run_id"])))

    async def answer(self, request: Request, caller: Caller) -> Response:
        """`POST /runs/{id}/answer`."""
        run = await self._own_run(caller, request.path_params["run_id"])
        body = await parse_body(request, AnswerIn, self.limits.max_body)
        runner = self.runner
        for attempt in range(1, _RESUME_ATTEMPTS + 1):
            if run.status != "suspended" or run.revision != body.revision:
                return _error(409, "stale", "that step is not the one the run is at", run=run)
            try:
                new = await runner.resume(run.id, body.value, revision=body.revision, wait=False)
            except InvalidInput as err:
                return _error(
                    422, "invalid", "the answer does not fit", errors=json_errors(err.errors)
                )
            except (ConflictError, ResumeError):
                current = await runner.get(run.id)
                if current.status != "suspended" or current.revision != body.revision:
                    return _error(409, "stale", "that step was already answered", run=current)
                # Nobody answered it: the step that led here is still being put away in this
                # process (its suspension is committed; another process already shows it).
                if attempt == _RESUME_ATTEMPTS:
                    break
                await anyio.sleep(0.02 * attempt)
                run = current
                continue
            return _ok(RunOut.of(new), 202)
        return _error(
            409, "busy", "the run is busy: try again", run=run, headers={"Retry-After": "1"}
        )

    async def cancel(self, request: Request, caller: Caller) -> Response:
        """`POST /runs/{id}/cancel`."""
        run = await self._own_run(caller, request.path_params["run_id"])
        body = await parse_body(request, CancelIn, self.limits.max_body, empty_ok=True)
        if run.finished:
            return _ok(RunOut.of(run))
        reason = body.reason or "cancelled through the API"
        for _ in range(_CANCEL_ATTEMPTS):
            try:
                return _ok(RunOut.of(await self.runner.cancel(run.id, reason)))
            except ConflictError:
                # A step is being set up or torn down right now: try again once it is.
                await anyio.sleep(0.05)
        return _error(409, "busy", "the run is busy: try again", run=await self.runner.get(run.id))

    async def events(self, request: Request, caller: Caller) -> Response:
        """`GET /runs/{id}/events`: the run's Server-Sent Events."""
        run = await self._own_run(caller, request.path_params["run_id"])
        owner = caller.session.owner_tag
        if (
            self._stream_count >= self.limits.max_streams
            or self._streams.get(owner, 0) >= self.limits.streams_per_caller
        ):
            return _error(
                429, "too_many_streams", "too many open event streams", headers={"Retry-After": "5"}
            )
        tree = await self.runner.task_tree(run.id)
        self._stream_count += 1
        self._streams[owner] = self._streams.get(owner, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._stream_count -= 1
            left = self._streams[owner] - 1
            if left:
                self._streams[owner] = left
            else:
                del self._streams[owner]

        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        stream = RunStream(self.runner, run, tree, last, heartbeat=self.heartbeat, release=release)
        return _StreamResponse(stream)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)


class _NotFound(Exception):
    pass


class _StreamResponse(Response):
    """Hands the ASGI call to a `RunStream` (Starlette's StreamingResponse iterates a generator,
    which cannot hold the task group the stream runs its followers in)."""

    def __init__(self, stream: RunStream) -> None:
        self.stream = stream
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.stream(scope, receive, send)


def api_app(
    runner: RunnerSource,
    *,
    computations: Iterable[ComputationFunction[..., Any] | ApiComputation],
    secret: str | bytes,
    cookies: bool = True,
    bearer: Verify | None = None,
    **options: Any,
) -> Starlette:
    """The JSON API for runs of `computations` as a Starlette app, to `Mount` anywhere:

    ```
    live = run_app(onboarding, secret=SECRET, url=URL)
    live.route(Mount("/api", app=api_app(live.state["runs"].the_runner,
                                         computations=[onboarding], secret=SECRET)))
    app = live.build()
    ```

    - `runner`: a `DurableRunner`, or a function returning the one open now.
    - `computations`: `@computation` functions or `ApiComputation`s (start input model,
      declared prompt models, queue).
    - `secret`: the live bridge's secret. With the pages' secret, a browser has the same
      session, CSRF token and runs in both.
    - `cookies=True`: callers with the session cookie; each POST needs the `X-CSRF-Token`
      header (from `GET /session`) and a same-origin `Origin` if any (`allowed_origins`).
    - `bearer=verify`: callers with `Authorization: Bearer <token>`; `verify(token)` (sync or
      async) returns the user's id or None (401). A user's runs are theirs in every process.
    - `options`: `allowed_origins`, `https_only`, `limits` (`ApiLimits`), `heartbeat`.
    """
    return RunsApi(
        runner, computations=computations, secret=secret, cookies=cookies, bearer=bearer, **options
    ).app()
