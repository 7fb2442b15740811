"""A page on the server: one view, its regions, its connections and its mailbox.

A page exists per session and URL. It is a small actor: mount, commands and messages are
handled one at a time under its lock, and each is followed by a render whose changed regions go
to every connection. Messages sent with `send_info` wait in a coalescing mailbox (a message
with a `key` replaces the pending one with the same key), and the page renders at most once per
`throttle` interval while messages keep coming — always once more after the last one, so the
final state is never lost.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from markupsafe import Markup, escape

from ._regions import Projection
from ._session import Session
from ._stream import Connection
from ._view import Event, LiveView, NotFound, Reply

if TYPE_CHECKING:
    from ._app import LiveApp

log = logging.getLogger("bridges.live")

_KEYS_REMEMBERED = 256  # accepted idempotency keys kept per page


class Page:
    """The server side of one page (one session, one URL), handed to every view method.

    What a view uses: `params` (path parameters), `query`, `session`, `app`, `send_info`,
    `spawn`, `render_template`, `hidden` (the CSRF/event/key fields of a form) and `action`
    (the URL forms post to).
    """

    def __init__(
        self,
        app: LiveApp,
        session: Session,
        path: str,
        params: Mapping[str, Any],
        query: Mapping[str, str],
        view: LiveView,
        root_path: str = "",
    ) -> None:
        self.app = app
        self.session = session
        self.path = path
        self.params = dict(params)
        self.query = dict(query)
        self.view = view
        self.root_path = root_path
        self.projection = Projection()
        self.connections: set[Connection] = set()
        self.lock = anyio.Lock()
        self.closed = False
        self.last_seen = time.monotonic()
        self.ready = anyio.Event()
        self.failure: BaseException | None = None
        self._inbox: dict[object, Any] = {}
        self._wake = anyio.Event()
        self._hurry = anyio.Event()
        self._tg: TaskGroup | None = None
        self._accepted: OrderedDict[str, Reply] = OrderedDict()

    # -- what views use ----------------------------------------------------------------------

    @property
    def action(self) -> str:
        """The URL the page's forms post to (the page itself)."""
        return self.root_path + self.path

    @property
    def csrf(self) -> str:
        """The session's CSRF token (forms send it back as `_csrf`)."""
        return self.session.csrf

    def url(self, path: str) -> str:
        """`path` (absolute within the app) with the app's mount prefix."""
        return self.root_path + path

    def hidden(self, event: str, key: str = "") -> Markup:
        """The hidden inputs every command form carries: `_csrf`, `_event` and `_key`."""
        return Markup(
            f'<input type="hidden" name="_csrf" value="{escape(self.csrf)}">'
            f'<input type="hidden" name="_event" value="{escape(event)}">'
            f'<input type="hidden" name="_key" value="{escape(key)}">'
        )

    def render_template(self, name: str, /, **context: Any) -> Markup:
        """Render a Jinja template (autoescaped) with `page` and `view` in its context."""
        template = self.app.templates.get_template(name)
        return Markup(template.render(page=self, view=self.view, **context))

    def send_info(self, message: Any, *, key: object = None, urgent: bool = False) -> None:
        """Deliver `message` to the view's `handle_info`, soon and in order. With a `key`, a
        message still waiting with the same key is replaced (only the newest matters).
        Messages are handled at most once per `throttle` interval; an `urgent` one (a step
        ending, say) is handled at once. Never blocks; call it from the page's event loop."""
        if self.closed:
            return
        if key is None:
            key = object()
        self._inbox.pop(key, None)
        self._inbox[key] = message
        self._wake.set()
        if urgent:
            self._hurry.set()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the background for as long as the page lives."""
        if self._tg is None:
            raise RuntimeError("the page is not running")
        self._tg.start_soon(self._guard, fn, *args)

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("a task of page %s failed", self.path)

    # -- what the bridge uses ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether the view says work is running."""
        return self.view.busy(self)

    def touch(self) -> None:
        """Record activity (pages idle for long are evicted)."""
        self.last_seen = time.monotonic()

    async def main(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The page's life: its mailbox worker and the tasks it spawns."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._worker)
            task_status.started()

    async def mount(self) -> None:
        """Mount the view and render it the first time."""
        async with self.lock:
            await self.view.mount(self)
            self._publish()

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.flush()
            except Exception:
                # A view that fails to render must not take the app's task group down.
                log.exception("page %s failed to render", self.path)
            if self.app.throttle > 0 and not self._hurry.is_set():
                with anyio.move_on_after(self.app.throttle):
                    await self._hurry.wait()
            self._hurry = anyio.Event()

    async def flush(self) -> None:
        """Handle every waiting message now, then render."""
        async with self.lock:
            await self._drain()
            self._publish()

    async def reload(self) -> None:
        """A full-page GET of a mounted page: the view refreshes, then everything renders."""
        self.touch()
        async with self.lock:
            await self._drain()
            await self.view.refresh(self)
            self._publish()

    async def _drain(self) -> None:
        while self._inbox:
            inbox, self._inbox = self._inbox, {}
            for message in inbox.values():
                try:
                    await self.view.handle_info(message, self)
                except Exception:
                    log.exception("handle_info of page %s failed on %r", self.path, message)

    def _publish(self) -> None:
        epoch = self.projection.epoch
        changed = self.projection.update(self.view.render(self))
        if self.projection.epoch != epoch:
            # The revision counter reached its bound and started a new epoch: a client can
            # only take a new epoch from a full snapshot, which a reconnection starts with.
            for conn in list(self.connections):
                conn.close()
        elif changed:
            for conn in self.connections:
                conn.mark(changed)

    async def command(self, event: Event) -> Reply:
        """Handle a command: a duplicate key is a no-op, otherwise the view decides."""
        self.touch()
        async with self.lock:
            await self._drain()
            first = self._accepted.get(event.key) if event.key else None
            if first is not None:
                # Answer a duplicate as the original was answered, without doing it again.
                reply = Reply(duplicate=True, redirect=first.redirect)
            else:
                reply = await self.view.handle_event(event, self) or Reply()
                if reply.ok and event.key and not reply.duplicate:
                    self._accepted[event.key] = reply
                    if len(self._accepted) > _KEYS_REMEMBERED:
                        self._accepted.popitem(last=False)
            self._publish()
        return reply

    def connect(self) -> Connection:
        """Open a connection; it starts with a snapshot (sent by the caller)."""
        conn = Connection()
        self.connections.add(conn)
        self.touch()
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Close a connection."""
        conn.close()
        self.connections.discard(conn)
        self.touch()

    def document(self) -> str:
        """The whole HTML document, server-rendered (works without JavaScript)."""
        template = self.app.templates.get_template(self.view.layout)
        return template.render(
            page=self,
            view=self.view,
            title=self.view.title(self),
            regions=[self.projection[rid] for rid in self.projection.ids],
            busy=self.busy,
            epoch=self.projection.epoch,
            revision=self.projection.revision,
            refresh=self.app.noscript_refresh,
        )

    def close(self) -> None:
        """Stop the page: its tasks are cancelled and its connections closed."""
        self.closed = True
        for conn in list(self.connections):
            conn.close()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()


class Pages:
    """The live pages of an app, by (session, path); idle pages are evicted."""

    def __init__(self, app: LiveApp) -> None:
        self.app = app
        self._pages: dict[tuple[str, str], Page] = {}

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, key: object) -> bool:
        return key in self._pages

    async def open(
        self,
        session: Session,
        path: str,
        params: Mapping[str, Any],
        query: Mapping[str, str],
        factory: Callable[[], LiveView],
        root_path: str = "",
    ) -> Page:
        """The page for `session` at `path`, mounted now if it does not exist yet."""
        key = (session.id, path)
        page = self._pages.get(key)
        if page is not None and not page.closed:
            await page.ready.wait()
            if page.failure is not None:
                raise page.failure
            page.touch()
            return page
        page = Page(self.app, session, path, params, query, factory(), root_path)
        self._pages[key] = page
        try:
            await self.app.task_group.start(page.main)
            await page.mount()
        except BaseException as err:
            page.failure = err if isinstance(err, NotFound) else NotFound(str(err))
            page.close()
            if self._pages.get(key) is page:
                del self._pages[key]
            raise
        finally:
            page.ready.set()
        self._trim()
        return page

    def _trim(self) -> None:
        excess = len(self._pages) - self.app.max_pages
        if excess <= 0:
            return
        idle = sorted(
            (p for p in self._pages.values() if not p.connections), key=lambda p: p.last_seen
        )
        for page in idle[:excess]:
            self._drop(page)

    def _drop(self, page: Page) -> None:
        page.close()
        key = (page.session.id, page.path)
        if self._pages.get(key) is page:
            del self._pages[key]

    def evict_idle(self, ttl: float) -> int:
        """Close pages without connections that saw no activity for `ttl` seconds."""
        cutoff = time.monotonic() - ttl
        stale = [p for p in self._pages.values() if not p.connections and p.last_seen < cutoff]
        for page in stale:
            self._drop(page)
        return len(stale)

    def close_all(self) -> None:
        """Close every page (app shutdown)."""
        for page in list(self._pages.values()):
            self._drop(page)
