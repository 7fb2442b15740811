"""Single-model apps (lofigui's idea): one computation, one current run, one page.

`model_app(fit)` serves a model function — typically one that `Print`s as it works — as a
single page: `GET /` shows the current run, starting the model when it has never run; the
finished page has *Run again*, which cancels the run still going (if any) and starts a new
one. `serve_model(fit)` is the command-line form: it starts the model, serves its page, and
exits when the run ends (0 when it finished, 1 when it failed or was cancelled) unless
`hold=True` keeps the page up.

The current run is the newest run of the computation in the store, so every process serving
the app and every restart agrees on it. Run ids are `<name>.<n>` for the n-th run: two GETs of
a never-run model, or two *Run again* clicks, name the same run, which the store starts once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from effects import Comp, ComputationFunction, ConflictError, Handler, RunNotFound, Stack
from effects.durable import DurableRunner, Run

from ._app import LiveApp
from ._limits import retry_after
from ._runs import DEFAULT_URL, RunsConfig, run_app
from ._session import Session, same_origin

log = logging.getLogger("bridges.live")

MODEL_TEMPLATES = {
    "done": "live/model_done.html",
    "failed": "live/model_failed.html",
    "cancelled": "live/model_cancelled.html",
}


def _anyone(_session: Session, _run: Run) -> bool:
    return True


def model_live_app(
    computation: ComputationFunction[..., Any] | Comp[Any],
    *,
    secret: str | bytes,
    url: str = DEFAULT_URL,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    authorize: Callable[[Session, Run], Any] | None = None,
    **options: Any,
) -> LiveApp:
    """The `LiveApp` behind `model_app` (add pages or lifespans to it, then `build()` it)."""
    templates = {**MODEL_TEMPLATES, **options.pop("templates", {})}
    live = run_app(
        computation,
        secret=secret,
        url=url,
        handlers=handlers,
        shared=True,
        # One model for everyone who can reach the page: anyone may answer, cancel and run it
        # again unless `authorize` says otherwise.
        authorize=authorize or _anyone,
        templates=templates,
        **options,
    )
    config: RunsConfig = live.state["runs"]

    async def show(request: Request) -> Response:
        run = await current_run(config, start=True)
        assert run is not None
        return RedirectResponse(_url(request, f"/runs/{run.id}"), status_code=303)

    async def restart(request: Request) -> Response:
        session = live.sessions.load(request)
        if session is None or not same_origin(request, live.allowed_origins):
            return Response("forbidden: no session or a foreign origin", status_code=403)
        form = await request.form()
        token = form.get("_csrf")
        if not live.sessions.check_csrf(session, token if isinstance(token, str) else None):
            return Response("forbidden: missing or invalid CSRF token", status_code=403)
        active = await current_run(config, start=False)
        if active is not None and not await config.allowed(session, active):
            return Response("forbidden: you may not restart this model", status_code=403)
        limit = config.start_limit
        wait = limit.take(session.id) if limit is not None else None
        if wait is not None:
            seconds = retry_after(wait)
            return Response(
                f"too many runs started: try again in {seconds} s",
                status_code=429,
                headers={"Retry-After": str(seconds)},
            )
        run = await restart_model(config)
        return RedirectResponse(_url(request, f"/runs/{run.id}"), status_code=303)

    # Before the run app's own routes: `/` is the model, not the list of runs.
    live.route(Route("/", show, methods=["GET"]), first=True)
    live.route(Route("/restart", restart, methods=["POST"]), first=True)
    return live


def model_app(
    computation: ComputationFunction[..., Any] | Comp[Any],
    *,
    secret: str | bytes,
    url: str = DEFAULT_URL,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    **options: Any,
) -> Starlette:
    """A single-model app: `GET /` shows the current run of `computation` (started if the model
    never ran); its finished page offers *Run again* (a new run; a run still going is
    cancelled first). Runs are durable in `url`; `authorize(session, run)` restricts who may
    answer, cancel and restart (default: anyone who can reach the page). Other options as
    `run_app`."""
    return model_live_app(computation, secret=secret, url=url, handlers=handlers, **options).build()


async def current_run(config: RunsConfig, *, start: bool) -> Run | None:
    """The newest run of the model; with `start`, a new one when the model never ran."""
    runs = await config.the_runner().list(name=config.name)
    if runs:
        return max(runs, key=_order)
    if not start:
        return None
    return await _start(config, 1)


async def restart_model(config: RunsConfig) -> Run:
    """Cancel the current run if it is still going, then start the next one."""
    runner = config.the_runner()
    runs = await runner.list(name=config.name)
    newest = max(runs, key=_order) if runs else None
    if newest is not None and not newest.finished:
        try:
            await runner.cancel(newest.id, "restarted")
        except (ConflictError, RunNotFound):
            pass  # it ended (or was restarted) meanwhile
    return await _start(config, _generation(newest) + 1)


async def _start(config: RunsConfig, n: int) -> Run:
    runner = config.the_runner()
    run_id = f"{config.name}.{n}"
    try:
        return await runner.start(config.make(None), run_id=run_id, wait=False)
    except ConflictError:
        return await runner.get(run_id)  # started by a concurrent request


def _generation(run: Run | None) -> int:
    if run is None:
        return 0
    try:
        return int(run.id.rsplit(".", 1)[-1])
    except ValueError:
        return 0


def _order(run: Run) -> tuple[int, float]:
    return (_generation(run), run.created_at.timestamp())


def _url(request: Request, path: str) -> str:
    root: str = request.scope.get("root_path", "")
    return root + path


def serve_model(
    computation: ComputationFunction[..., Any] | Comp[Any],
    *,
    secret: str | bytes,
    url: str = DEFAULT_URL,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    host: str = "127.0.0.1",
    port: int = 8000,
    hold: bool = False,
    **options: Any,
) -> int:
    """Run `computation` as a command-line program with its page served on `host:port`.

    The model starts at once (continuing the current run if the store has an unfinished one);
    the page shows it live. When the current run ends the server stops and the exit status
    is returned: 0 when it finished, 1 when it failed or was cancelled. `hold=True` keeps
    serving (and *Run again* works) until Ctrl-C, which ends the process as interrupted (the
    signal is re-raised after a clean shutdown). Use as `sys.exit(serve_model(fit, ...))`.
    """
    live = model_live_app(computation, secret=secret, url=url, handlers=handlers, **options)
    config: RunsConfig = live.state["runs"]
    server = uvicorn.Server(
        uvicorn.Config(live.build(), host=host, port=port, access_log=False, log_level="warning")
    )
    status = 1  # the server stopped before the run ended (it failed to start)

    @asynccontextmanager
    async def exit_when_done(_: LiveApp) -> AsyncIterator[None]:
        async def follow() -> None:
            nonlocal status
            runner = config.the_runner()
            run = await current_run(config, start=True)
            assert run is not None
            if run.finished:
                # The model already ran (a previous invocation on this store): run it anew.
                run = await restart_model(config)
            print(f"{live.title or config.name}: http://{host}:{port}/", flush=True)
            while True:
                run = await _until_finished(runner, run.id)
                newest = await current_run(config, start=False)
                if newest is not None and newest.id != run.id and not newest.finished:
                    run = newest  # restarted from the page meanwhile: follow the new run
                    continue
                break
            status = 0 if run.status == "done" else 1
            if not hold:
                server.should_exit = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            yield
            tg.cancel_scope.cancel()

    live.add_lifespan(exit_when_done)
    server.run()
    return status


async def _until_finished(runner: DurableRunner, run_id: str) -> Run:
    async with runner.subscribe(run_id) as runs:
        async for run in runs:
            if run.finished:
                return run
    return await runner.get(run_id)
