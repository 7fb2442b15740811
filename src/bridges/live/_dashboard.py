"""`runs_dashboard`: a web page for operators over a durable store — list and filter runs, read
a run's log with its times and errors, and cancel, resume, fork, retry or unpark a run.

Plain server-rendered HTML and forms (no script): every action is a POST carrying the
session's CSRF token, from the app's own origin, and every request (pages too) first passes
the `authorize` hook; without one the app answers 403 to everything. Actions redirect back
(303) to the run's page with a fixed message; a refused action re-renders it with the error
(status 400, 404 or 409) and changes nothing.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from effects import (
    ConfigurationError,
    ConflictError,
    Done,
    EffectsError,
    Handler,
    InvalidInput,
    ResumeError,
    RunNotFound,
    Stack,
    Suspend,
)
from effects.durable import DurableRunner, Log, LogEntry, Run, RunStatus

from ._app import make_templates
from ._session import Session, Sessions, same_origin

HERE = Path(__file__).parent

Authorize = Callable[[Request], bool | Awaitable[bool]]
"""The access check of every request: true to let it through, false for 403."""

CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)

# Bounds on what a form may carry: answers are JSON documents, reasons one line.
_MAX_FIELD = 64 * 1024
_MAX_REASON = 500
# What the page says after each action (the redirect names the action, never the text).
_MESSAGES = {
    "cancel": "The run was cancelled.",
    "cancel-requested": "Cancel requested: the process running the run cancels it at its next"
    " checkpoint.",
    "resume": "The answer was accepted; the run continues.",
    "fork": "This run was forked from another one.",
    "retry": "This run retries a failed run.",
    "unpark": "Recovery may continue the run again.",
}
_ACTIVE = ("queued", "running", "suspended", "sleeping")
_EMPTY: Any = object()  # a form field left empty (`null` is an answer)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class _Refused(Exception):
    """An action refused before anything changed: the page says why, with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def runs_dashboard(
    url: str | None = None,
    *,
    authorize: Authorize | None,
    secret: str | bytes,
    runner: DurableRunner | None = None,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    title: str = "Runs",
    page_size: int = 50,
    allowed_origins: Iterable[str] = (),
    https_only: bool = False,
) -> Starlette:
    """The operators' dashboard of a durable store, as a Starlette app.

    - `authorize(request)` (sync or async) decides every request, pages and actions alike:
      false (or no hook at all) answers 403. Check your operators' session, header or
      network there.
    - `url` opens a `DurableRunner` (with `handlers`, no timer loop) in the app's lifespan, or
      `runner` shares one the host app keeps open (then mount it anywhere). Resuming,
      cancelling and forking run steps, so that runner needs the computations imported and
      their handlers.
    - `secret` (16 bytes or more) signs the session cookie that the CSRF token is bound to;
      `allowed_origins` are other origins whose POSTs are accepted (the app's own always is).
    """
    if page_size < 1:
        raise ConfigurationError("page_size must be at least 1")
    if (url is None) == (runner is None):
        raise ConfigurationError("give the dashboard a store url or an open runner (one of them)")
    dashboard = _Dashboard(
        authorize=authorize,
        sessions=Sessions(secret, cookie="effects_dashboard", https_only=https_only),
        runner=runner,
        title=title,
        page_size=page_size,
        origins=frozenset(allowed_origins),
    )
    lifespan = None
    if url is not None:
        opened = url

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with DurableRunner(opened, handlers=handlers, timers=False) as own:
                dashboard.runner = own
                try:
                    yield
                finally:
                    dashboard.runner = None

    d = dashboard
    routes = [
        Route("/", d.guard(d.index), methods=["GET"]),
        Route("/dashboard.css", d.guard(d.css), methods=["GET"]),
        Route("/runs/{run_id}", d.guard(d.show), methods=["GET"]),
        Route("/runs/{run_id}/{action}", d.guard(d.act), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class _Dashboard:
    def __init__(
        self,
        *,
        authorize: Authorize | None,
        sessions: Sessions,
        runner: DurableRunner | None,
        title: str,
        page_size: int,
        origins: frozenset[str],
    ) -> None:
        self.authorize = authorize
        self.sessions = sessions
        self.runner = runner
        self.title = title
        self.page_size = page_size
        self.origins = origins
        self.templates = make_templates()
        self.templates.filters["when"] = _when
        self.templates.filters["json"] = _json

    # -- access -------------------------------------------------------------------------------

    def guard(
        self, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not await self._authorized(request):
                return _headers(PlainTextResponse("forbidden", status_code=403))
            return _headers(await endpoint(request))

        return guarded

    async def _authorized(self, request: Request) -> bool:
        if self.authorize is None:
            return False  # no hook: the dashboard is closed, never open by default
        verdict = self.authorize(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    def _runner(self) -> DurableRunner:
        if self.runner is None:
            raise RuntimeError("the dashboard's runner is not open (its lifespan has not started)")
        return self.runner

    # -- pages --------------------------------------------------------------------------------

    async def css(self, _request: Request) -> Response:
        text = (HERE / "static" / "dashboard.css").read_text()
        return Response(text, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def index(self, request: Request) -> Response:
        session = self.sessions.load_or_create(request)
        q = request.query_params
        statuses = [s for s in q.getlist("status") if s in {x.value for x in RunStatus}]
        name = (q.get("name") or "").strip()[:255] or None
        prefix = (q.get("id") or "").strip()[:255]
        since_text = (q.get("since") or "").strip()[:64]
        page = _whole(q.get("page"), 0)
        error = None
        since = None
        if since_text:
            since = _since(since_text)
            if since is None:
                error = f"{since_text!r} is neither a time (2026-11-22T10:00) nor a duration (2h)"
        runs: list[Run] = []
        more = False
        if error is None:
            found = await self._runner().list(
                statuses,
                name=name,
                since=since,
                id_prefix=prefix or None,
                limit=self.page_size + 1,
                offset=page * self.page_size,
                newest_first=True,
            )
            more = len(found) > self.page_size
            runs = found[: self.page_size]
        filters = {"status": statuses, "name": name or "", "since": since_text, "id": prefix}

        def page_link(n: int) -> str:
            params: list[tuple[str, Any]] = [("status", s) for s in statuses]
            params += [(k, v) for k, v in filters.items() if k != "status" and v]
            params.append(("page", n))
            return "?" + urlencode(params)

        html = self.templates.get_template("dashboard/index.html").render(
            title=self.title,
            root=_base(request),
            runs=runs,
            filters=filters,
            all_statuses=[s.value for s in RunStatus],
            error=error,
            newer=page_link(page - 1) if page > 0 else None,
            older=page_link(page + 1) if more else None,
        )
        response = HTMLResponse(html, status_code=400 if error else 200)
        self.sessions.save(response, session)
        return response

    async def show(self, request: Request) -> Response:
        session = self.sessions.load_or_create(request)
        run_id = request.path_params["run_id"]
        done = request.query_params.get("done")
        try:
            response = await self._run_page(
                request, session, run_id, message=_MESSAGES.get(done or "")
            )
        except RunNotFound:
            response = self._not_found(request, run_id)
        self.sessions.save(response, session)
        return response

    def _not_found(self, request: Request, run_id: str) -> Response:
        html = self.templates.get_template("dashboard/missing.html").render(
            title=self.title, run_id=run_id, root=_base(request)
        )
        return HTMLResponse(html, status_code=404)

    async def _run_page(
        self,
        request: Request,
        session: Session,
        run_id: str,
        *,
        message: str | None = None,
        error: str | None = None,
        status: int = 200,
        form: Mapping[str, str] | None = None,
    ) -> Response:
        runner = self._runner()
        run = await runner.get(run_id)
        log = await runner.get_log(run_id)
        html = self.templates.get_template("dashboard/run.html").render(
            title=self.title,
            root=_base(request),
            run=run,
            view=_run_view(run),
            entries=[_entry_view(e) for e in log.entries],
            prompts=_prompts(log),
            steps=[(e.seq, _short(e.effect)) for e in log.entries],
            retry_at=_retry_step(run, log),
            csrf=session.csrf,
            message=message,
            error=error,
            form=form or {},
        )
        return HTMLResponse(html, status_code=status)

    # -- actions ------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        action = request.path_params["action"]
        if action not in ("cancel", "resume", "fork", "retry", "unpark"):
            return PlainTextResponse("not found", status_code=404)
        session = self.sessions.load(request)
        if not same_origin(request, self.origins):
            return PlainTextResponse("cross-origin request refused", status_code=403)
        fields = await _form(request)
        if fields is None:
            return PlainTextResponse("malformed or oversized form", status_code=400)
        if session is None or not self.sessions.check_csrf(session, fields.get("csrf")):
            return PlainTextResponse("missing or invalid CSRF token", status_code=403)
        try:
            target, said = await self._do(action, run_id, fields)
        except RunNotFound:
            return self._not_found(request, run_id)
        except _Refused as refused:
            try:
                return await self._run_page(
                    request, session, run_id, error=str(refused), status=refused.status,
                    form=fields,
                )  # fmt: skip
            except RunNotFound:
                return self._not_found(request, run_id)
        location = f"{_base(request)}/runs/{quote(target, safe='')}?done={said}"
        return RedirectResponse(location, status_code=303)

    async def _do(self, action: str, run_id: str, fields: Mapping[str, str]) -> tuple[str, str]:
        """Perform `action` on `run_id`; returns the id of the run to show next and what to
        say there (a key of `_MESSAGES`)."""
        runner = self._runner()
        try:
            if action == "cancel":
                reason = (fields.get("reason") or "").strip()[:_MAX_REASON]
                run = await runner.cancel(run_id, reason or "cancelled by an operator")
                if run.status is RunStatus.RUNNING:
                    return run_id, "cancel-requested"  # its step runs in another process
                return run_id, action
            if action == "unpark":
                await runner.unpark(run_id)
                return run_id, action
            if action == "resume":
                revision = _whole(fields.get("revision"), None)
                value = _json_field(fields.get("value"), "the answer")
                if value is _EMPTY:
                    raise _Refused(400, "the answer is empty: write it as JSON")
                await runner.resume(run_id, value, revision=revision, wait=False)
                return run_id, action
            if action == "fork":
                at = _whole(fields.get("at"), None)
                if at is None:
                    raise _Refused(400, "choose the step to fork at")
                answer = _json_field(fields.get("answer"), "the answer")
                if answer is _EMPTY:  # no answer: the step is performed again
                    forked = await runner.fork(run_id, at=at, wait=False)
                else:
                    forked = await runner.fork(run_id, at=at, answer=answer, wait=False)
                return forked.id, action
            # retry: a new run from the failed step (performed again), the failed run kept.
            run = await runner.get(run_id)
            if run.status is not RunStatus.FAILED:
                raise _Refused(
                    409, f"only a failed run can be retried; this one is {run.status.value}"
                )
            log = await runner.get_log(run_id)
            forked = await runner.fork(run_id, at=_retry_step(run, log) or 0, wait=False)
            return forked.id, action
        except InvalidInput as err:
            raise _Refused(400, _one_line(f"invalid answer: {err}")) from None
        except (ConflictError, ResumeError) as err:
            raise _Refused(409, _one_line(str(err))) from None
        except RunNotFound:
            raise
        except (ConfigurationError, EffectsError, LookupError) as err:
            raise _Refused(400, _one_line(f"{type(err).__name__}: {err}")) from None


# -- helpers ------------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of a POST, read up to a bound (None if it is not one, or larger):
    the forms here carry a token, a few numbers and one JSON document."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FIELD + 4096:
            return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16,
                          strict_parsing=False)  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _whole(text: str | None, default: Any) -> Any:
    if text is None or not text.strip().isdigit() or len(text.strip()) > 9:
        return default
    return int(text.strip())


def _json_field(text: str | None, what: str) -> Any:
    """A JSON form field: `_EMPTY` when empty, the value otherwise."""
    if text is None or not text.strip():
        return _EMPTY
    try:
        return json.loads(text)
    except ValueError:
        raise _Refused(400, f'{what} must be JSON (a text is written "like this")') from None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _since(text: str) -> float | None:
    number, unit = text[:-1], text[-1:].lower()
    if unit in _UNITS:
        try:
            n = float(number)
        except ValueError:
            n = math.nan
        if 0 <= n < 1e9:
            return datetime.now(UTC).timestamp() - n * _UNITS[unit]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - 1e-6


def _when(value: datetime | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr, indent=None)


def _short(effect: str) -> str:
    return effect.rsplit(".", 1)[1] if effect.startswith("effects.") else effect


def _took(e: LogEntry) -> str:
    if e.started_at is None or e.ended_at is None:
        return "…" if e.status == "pending" and e.started_at is not None else ""
    seconds = max(0.0, e.ended_at - e.started_at)
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _entry_view(e: LogEntry) -> dict[str, Any]:
    error = None
    if e.error is not None:
        error = f"{e.error['type']}: {e.error['message']}"
    return {
        "seq": e.seq,
        "status": e.status,
        "effect": _short(e.effect),
        "args": _json(e.args),
        "result": _json(e.result) if e.status == "done" else "",
        "error": error,
        "started": _when(e.started_at),
        "took": _took(e),
    }


def _run_view(run: Run) -> dict[str, Any]:
    outcome = run.outcome
    view: dict[str, Any] = {"args": _json(run.args), "prompt": None, "result": None}
    if type(outcome) is Suspend:
        view["prompt"] = _json(outcome.value)
        view["input"] = outcome.input
    elif type(outcome) is Done:
        view["result"] = _json(outcome.value)
    if run.error is not None:
        view["error"] = f"{run.error.get('type')}: {run.error.get('message')}"
        view["traceback"] = run.error.get("traceback")
    view["active"] = run.status.value in _ACTIVE
    return view


def _prompts(log: Log) -> list[tuple[int, str]]:
    """The steps a fork can answer differently: the prompts (`Yield`s) of the log."""
    return [(e.seq, _json(e.args.get("value"))) for e in log.entries if e.effect == "effects.Yield"]


def _retry_step(run: Run, log: Log) -> int | None:
    """Where a retry of a failed run starts: its last failed step, performed again (or the
    beginning when no recorded effect failed: the computation itself raised)."""
    if run.status is not RunStatus.FAILED:
        return None
    for e in reversed(log.entries):
        if e.status == "error":
            return e.seq
    return 0
