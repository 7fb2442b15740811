"""`LiveApp`: the Starlette application that serves live pages.

For every page path `P` it serves:

- `GET P`: the whole document, server-rendered;
- `POST P`: a command (form fields `_csrf`, `_event`, `_key` + the event's fields); answers
  303 back to the page (or to the reply's redirect), or JSON when the request says
  `X-Live: 1`;
- `GET P/_live/sse`: the Server-Sent Events stream (a snapshot, then patches and pings);
- `WS P/_live/ws`: the optional WebSocket carrying the same envelopes both ways;

plus the client at `/_live/static/live.js`. See docs/live/protocol.md for the wire format.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

import anyio
import jinja2
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ._blocks import render_block
from ._gc import GcTuning
from ._limits import Clock, Limits, retry_after
from ._messages import BadMessage, json_errors, parse_command
from ._page import Page, Pages
from ._session import Session, Sessions, same_origin
from ._stream import CLOSED, PING, Wake, sse
from ._view import Event, LiveView, NotFound, Reply

log = logging.getLogger("bridges.live")

HERE = Path(__file__).parent
SSE_SUFFIX = "/_live/sse"
WS_SUFFIX = "/_live/ws"

DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The Content-Security-Policy of live pages: the bridge's own script and styles only."""

ViewFactory = Callable[[], LiveView]
Lifespan = Callable[["LiveApp"], AbstractAsyncContextManager[Any]]


def _route_path(conn: HTTPConnection) -> str:
    path: str = conn.scope["path"]
    root: str = conn.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def make_templates(template_dirs: Sequence[str | Path] = ()) -> jinja2.Environment:
    """The Jinja environment: the app's own directories first, then the bridge's templates.
    Autoescaping is on for every template, whatever its name."""
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader([str(d) for d in template_dirs]),
            jinja2.FileSystemLoader(str(HERE / "templates")),
        ]
    )
    env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals["output_block"] = render_block
    return env


class LiveApp:
    """Serves `LiveView`s as live pages; `build()` returns the Starlette app.

    ::

        live = LiveApp(secret=SECRET)
        live.page("/", CounterView)
        app = live.build()

    Options: `title` (default document title), `template_dirs` (searched before the bridge's
    own templates, so any of them can be overridden), `throttle` (seconds between two renders
    of a page driven by messages), `settle` (how long a command sent without JavaScript may
    wait for its effect before the 303, so that the next page already shows it), `heartbeat`
    (seconds between pings on an idle stream), `noscript_refresh` (seconds between reloads of
    a busy page without JavaScript), `limits` (a `Limits`: how many pages are kept, how long,
    and how fast a session may start runs; `clock` is the monotonic clock they are measured
    with), `allowed_origins` (other origins trusted for WebSockets and POSTs), `https_only` (secure
    cookie), `websocket` (serve `P/_live/ws`), `csp` (the Content-Security-Policy of pages;
    None sends none), `gc` (a `GcTuning`: freeze what start-up created and raise the
    collector's thresholds while the app runs, for servers holding many live sessions; off by
    default) and `lifespan`: `lifespan(live_app)`, an async context manager entered at
    start-up (before any page) and left at shutdown (after every page).
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        title: str = "",
        template_dirs: Sequence[str | Path] = (),
        throttle: float = 0.05,
        settle: float = 2.0,
        heartbeat: float = 15.0,
        noscript_refresh: int = 2,
        limits: Limits | None = None,
        clock: Clock = time.monotonic,
        allowed_origins: Sequence[str] = (),
        https_only: bool = False,
        websocket: bool = True,
        lifespan: Lifespan | None = None,
        csp: str | None = DEFAULT_CSP,
        gc: GcTuning | None = None,
        debug: bool = False,
    ) -> None:
        self.sessions = Sessions(secret, https_only=https_only)
        self.title = title
        self.templates = make_templates(template_dirs)
        self.throttle = throttle
        self.settle = settle
        self.heartbeat = heartbeat
        self.noscript_refresh = noscript_refresh
        self.limits = limits if limits is not None else Limits()
        self.clock = clock
        self.allowed_origins = frozenset(allowed_origins)
        self.websocket = websocket
        self.gc = gc
        self.debug = debug
        self.headers = {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            **({"Content-Security-Policy": csp} if csp else {}),
        }
        self.pages = Pages(self)
        self.state: dict[str, Any] = {}
        self._lifespans: list[Lifespan] = [lifespan] if lifespan is not None else []
        self._routes: list[BaseRoute] = []
        self._streams: list[tuple[Route, ViewFactory]] = []
        self._tg: TaskGroup | None = None

    # -- configuration ----------------------------------------------------------------------

    def page(self, path: str, view: ViewFactory) -> None:
        """Serve the view made by `view()` at `path` (Starlette path syntax: `/runs/{id}`)."""
        base = path.rstrip("/")
        self._routes.append(
            Route(path, self._page_endpoint(view), methods=["GET", "POST"], name=None)
        )
        stream = Route(base + SSE_SUFFIX, self._sse_endpoint(view))
        self._routes.append(stream)
        self._streams.append((stream, view))
        if self.websocket:
            self._routes.append(WebSocketRoute(base + WS_SUFFIX, self._ws_endpoint(view)))

    def route(self, route: BaseRoute, *, first: bool = False) -> None:
        """Add a plain Starlette route (`first=True`: before the routes added so far, so it
        wins over a page at the same path)."""
        if first:
            self._routes.insert(0, route)
        else:
            self._routes.append(route)

    def add_lifespan(self, lifespan: Lifespan) -> None:
        """Enter `lifespan(live_app)` at start-up, after the ones added before."""
        self._lifespans.append(lifespan)

    @property
    def task_group(self) -> TaskGroup:
        """The app's task group (pages live in it); only while the app runs."""
        if self._tg is None:
            raise RuntimeError(
                "the live app is not running (its lifespan has not started): mounted inside "
                "another app? Give that app `lifespan=bridges.live.mounted_lifespans` "
                "(docs/live/deployment.md)"
            )
        return self._tg

    def build(self) -> Starlette:
        """The Starlette application."""
        routes = [
            Mount("/_live/static", StaticFiles(directory=HERE / "static"), name="live-static"),
            *self._routes,
        ]
        app = _LiveStarlette(debug=self.debug, routes=routes, lifespan=self._lifespan)
        app.live = self
        return app

    # -- lifecycle --------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for lifespan in self._lifespans:
                await stack.enter_async_context(lifespan(self))
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._janitor)
                if self.gc is not None:
                    self.gc.apply()  # start-up is over: what it made lives as long as we do
                try:
                    yield
                finally:
                    if self.gc is not None:
                        self.gc.restore()
                    self.pages.close_all()
                    tg.cancel_scope.cancel()
                    self._tg = None

    async def _janitor(self) -> None:
        # Opening a page sweeps too; this catches the pages of an app nobody opens pages of.
        limits = self.limits
        interval = max(0.5, min(limits.connect_timeout, limits.page_ttl) / 2)
        while True:
            await anyio.sleep(interval)
            self.pages.sweep()

    # -- endpoints --------------------------------------------------------------------------

    async def _open(
        self, conn: HTTPConnection, session: Session, view: ViewFactory, path: str
    ) -> Page:
        try:
            return await self.pages.open(
                session,
                path,
                conn.path_params,
                dict(conn.query_params),
                view,
                conn.scope.get("root_path", ""),
            )
        except NotFound:
            raise HTTPException(404) from None

    def _page_endpoint(self, view: ViewFactory) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if request.method == "POST":
                return await self._post(request, view)
            session = self.sessions.load_or_create(request)
            fresh = (session.id, _route_path(request)) not in self.pages
            page = await self._open(request, session, view, _route_path(request))
            await (page.flush() if fresh else page.reload())
            response = HTMLResponse(page.document(), headers=self.headers)
            self.sessions.save(response, session)
            return response

        return endpoint

    async def _post(self, request: Request, view: ViewFactory) -> Response:
        session = self.sessions.load(request)
        if session is None or not same_origin(request, self.allowed_origins):
            return Response("forbidden: no session or a foreign origin", status_code=403)
        form = await request.form()
        token = form.get("_csrf") or request.headers.get("x-csrf-token")
        if not self.sessions.check_csrf(session, token if isinstance(token, str) else None):
            return Response("forbidden: missing or invalid CSRF token", status_code=403)
        page = await self._open(request, session, view, _route_path(request))
        live = request.headers.get("x-live") == "1"
        # Only a browser without JavaScript waits for the command's effect: it is about to
        # load a page. A live client gets the effect over its stream as soon as it happens.
        reply = await self._command(page, _event_from_form(form), settle=not live)
        wait = reply.retry_after
        status = 200 if reply.ok else 422 if wait is None else 429
        headers = {} if wait is None else {"Retry-After": retry_after(wait)}
        if live:
            return JSONResponse(
                self._reply_envelope(page, reply), status_code=status, headers=headers
            )
        if status == 429:
            # No redirect to follow: the page itself, showing why, with the 429.
            return HTMLResponse(
                page.document(), status_code=429, headers={**self.headers, **headers}
            )
        return RedirectResponse(reply.redirect or page.action, status_code=303)

    async def _command(self, page: Page, event: Event, *, settle: bool) -> Reply:
        reply = await page.command(event)
        if settle and reply.settle is not None and self.settle > 0:
            with anyio.move_on_after(self.settle):
                await reply.settle.wait()
        await page.flush()
        if page.left and not page.connections:
            # The browser goes elsewhere and no stream shows this page: nobody will look at
            # it again (a back button or a reload mounts it anew).
            self.pages.drop(page)
        return reply

    def _reply_envelope(self, page: Page, reply: Reply) -> dict[str, Any]:
        return page.projection.envelope(
            "reply",
            ok=reply.ok,
            duplicate=reply.duplicate,
            errors=json_errors(reply.errors),
            redirect=reply.redirect,
            busy=page.busy,
            retry_after=reply.retry_after,
        )

    async def _open_stream(
        self, conn: HTTPConnection, view: ViewFactory, suffix: str
    ) -> tuple[Page, str | None]:
        session = self.sessions.load(conn)
        if session is None:
            raise HTTPException(404)
        path = _route_path(conn)[: -len(suffix)] or "/"
        fresh = (session.id, path) not in self.pages
        page = await self._open(conn, session, view, path)
        # A page this process kept may have missed changes made elsewhere (another process
        # answered its form, a notification was lost with a connection): a reconnecting
        # stream refreshes it from the store before its snapshot.
        await (page.flush() if fresh else page.reload())
        last = conn.headers.get("last-event-id") or conn.query_params.get("last_event_id")
        return page, last

    def _snapshot(self, page: Page, last_event_id: str | None) -> dict[str, Any]:
        # A client that names a position this page issued gets the regions changed since;
        # any other id (forged, stale, from another epoch) is ignored: it gets every region.
        proj = page.projection
        since = proj.since(last_event_id)
        ids = None if since is None else [i for i in proj.ids if proj[i].rev > since]
        return proj.envelope("snapshot", ids, busy=page.busy, heartbeat=self.heartbeat)

    def _ping(self, page: Page) -> dict[str, Any]:
        proj = page.projection
        return {"type": "ping", "epoch": proj.epoch, "revision": proj.revision}

    def _sse_endpoint(self, view: ViewFactory) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> _EventStream:
            page, last = await self._open_stream(request, view, SSE_SUFFIX)
            return _EventStream(self, page, last)

        return endpoint

    async def _serve_stream(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve an SSE request directly if one of the pages' stream routes matches it; False
        if none does, or the stream cannot be opened (Starlette's stack then answers)."""
        for route, view in self._streams:
            match, child = route.matches(scope)
            if match is not Match.FULL:
                continue
            scope.update(child)
            try:
                page, last = await self._open_stream(Request(scope, receive), view, SSE_SUFFIX)
            except HTTPException:
                return False  # the 404, as the app's exception handlers answer it
            await _EventStream(self, page, last)(scope, receive, send)
            return True
        return False

    def _patch(self, page: Page, ids: set[str]) -> dict[str, Any]:
        proj = page.projection
        return proj.envelope("patch", [i for i in ids if i in proj], busy=page.busy)

    def _ws_endpoint(self, view: ViewFactory) -> Callable[[WebSocket], Any]:
        async def endpoint(websocket: WebSocket) -> None:
            # The Origin check comes first: browsers attach cookies to cross-site WebSocket
            # handshakes, and a WebSocket carries no CSRF token of its own.
            if not same_origin(websocket, self.allowed_origins):
                await websocket.close(code=1008)
                return
            session = self.sessions.load(websocket)
            if session is None:
                await websocket.close(code=1008)
                return
            try:
                page, last = await self._open_stream(websocket, view, WS_SUFFIX)
            except HTTPException:
                await websocket.close(code=4404)
                return
            await websocket.accept()
            conn = page.connect()

            async def send(data: dict[str, Any]) -> None:
                await websocket.send_text(json.dumps(data, separators=(",", ":")))

            # One task serves the socket: it waits for a frame or a disconnect, and a change
            # of the page wakes it (`Connection.next`). A command is answered before the
            # changes it made are sent; the client takes both in any order.
            try:
                await send(self._snapshot(page, last))
                while True:
                    got = await conn.next(websocket.receive, self.heartbeat)
                    if got is CLOSED:
                        # The page closed or started a new epoch: the client must reconnect
                        # (to a new page, or to a full snapshot) instead of waiting on a
                        # silent socket.
                        with suppress(RuntimeError, WebSocketDisconnect):
                            await websocket.close(code=1012)  # already gone: nothing to tell it
                        return
                    if got is PING:
                        await send(self._ping(page))
                    elif isinstance(got, Wake):
                        await send(self._patch(page, got.ids or set()))
                    elif got["type"] != "websocket.receive":
                        return  # websocket.disconnect
                    else:
                        frame = got.get("text")
                        if frame is None:
                            frame = got.get("bytes")
                        await send(await self._ws_command(page, session, frame))
            except WebSocketDisconnect:
                pass
            finally:
                page.disconnect(conn)

        return endpoint

    async def _ws_command(
        self, page: Page, session: Session, frame: str | bytes | None
    ) -> dict[str, Any]:
        """Answer one WebSocket frame: a `reply`, or an `error` envelope for a frame that is
        not a valid command or lacks the session's CSRF token (nothing reaches the view)."""
        try:
            command = parse_command(frame)
            if not self.sessions.check_csrf(session, command.csrf):
                raise BadMessage("csrf", "missing or invalid CSRF token", command.ref)
        except BadMessage as bad:
            return bad.envelope()
        event = Event(command.event, command.fields(), command.key)
        reply = await self._command(page, event, settle=False)
        return {**self._reply_envelope(page, reply), "ref": command.ref}


def _event_from_form(form: FormData) -> Event:
    params: dict[str, list[str]] = {}
    for name in form.keys():
        if name.startswith("_"):
            continue
        params[name] = [v for v in form.getlist(name) if isinstance(v, str)]
    event = form.get("_event")
    key = form.get("_key")
    return Event(
        event if isinstance(event, str) else "",
        params,
        key if isinstance(key, str) else "",
    )


class _EventStream:
    """The Server-Sent Events response of a page: a snapshot, then patches and pings, served
    by the request's own task (Starlette's `StreamingResponse` adds a task group with two more
    tasks per stream to listen for the disconnect). The wait for the client's disconnect and
    for the page's changes is one wait (`Connection.next`)."""

    __slots__ = ("last", "live", "page")

    headers: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no"),
    ]

    def __init__(self, live: LiveApp, page: Page, last: str | None) -> None:
        self.live = live
        self.page = page
        self.last = last

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        live, page = self.live, self.page
        conn = page.connect()
        # What is sent is built in `_event` and dropped once sent: the loop's frame holds no
        # chunk while the stream idles (a snapshot is a few KiB, kept per open stream).
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            await send(self._event(b"retry: 1000\n\n", "snapshot"))
            self.last = None
            while True:
                got = await conn.next(receive, live.heartbeat)
                if got is CLOSED:
                    break
                if isinstance(got, Wake):
                    await send(self._event(b"", "ping" if got is PING else "patch", got.ids))
                elif got["type"] == "http.disconnect":
                    return
                # else: the request's (empty) body: nothing to do
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client is gone (servers of ASGI 2.4 raise it from send)
        finally:
            page.disconnect(conn)

    def _event(self, head: bytes, kind: str, ids: set[str] | None = None) -> Message:
        live, page = self.live, self.page
        if kind == "snapshot":
            data = head + sse(kind, live._snapshot(page, self.last), page.projection.event_id)
        elif kind == "ping":
            data = sse(kind, live._ping(page))
        else:
            data = sse(kind, live._patch(page, ids or set()), page.projection.event_id)
        return {"type": "http.response.body", "body": data, "more_body": True}


class _LiveStarlette(Starlette):
    """The app `LiveApp.build()` returns: a `Starlette` that serves its pages' SSE streams
    without going through its middleware stack and router when it has no middleware of the
    user's (`add_middleware`). An open stream then holds two coroutine frames instead of a
    dozen (the error and exception middlewares, the router, the route, the request wrapper and
    its exception handling): about 5 KiB per open stream (bench/README.md, "live"). Every other
    request, a stream that cannot be opened (404), and every request of an app with user
    middleware take the ordinary path."""

    live: LiveApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].endswith(SSE_SUFFIX)
            and not self.user_middleware
        ):
            scope["app"] = self
            if await self.live._serve_stream(scope, receive, send):
                return
        await super().__call__(scope, receive, send)
