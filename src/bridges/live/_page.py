"""A page on the server: one view, its regions, its connections and its mailbox.

A page exists per session and URL. It is a small actor: mount, commands and messages are
handled one at a time under its lock, and each is followed by a render whose changed regions go
to every connection. Messages sent with `send_info` wait in a coalescing mailbox (a message
with a `key` replaces the pending one with the same key), and the page renders at most once per
`throttle` interval while messages keep coming — always once more after the last one, so the
final state is never lost.

A page holds no task of its own: a mailbox with messages waiting is delivered by a short task
in the app's task group that ends once the mailbox is empty, and a page's streams are served by
their requests' own tasks (`_stream.Connection`). An idle page is plain objects: its view, its
regions and a few attributes (docs/live/limits.md has the measured cost).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from markupsafe import Markup, escape

from ._regions import Projection
from ._session import Session
from ._stream import Connection
from ._view import Event, LiveView, NotFound, Reply

if TYPE_CHECKING:
    from ._app import LiveApp

log = logging.getLogger("bridges.live")

_KEYS_REMEMBERED = 256  # accepted idempotency keys kept per page


class _Mutex:
    """A FIFO lock that allocates nothing until two tasks contend for it (anyio's `Lock`
    keeps a deque per lock: ~0.6 KiB per page, for a lock that is almost never contended)."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[anyio.Event] | None = None

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._locked

    async def __aenter__(self) -> None:
        if not self._locked:
            self._locked = True
            return
        if self._waiters is None:
            self._waiters = deque()
        turn = anyio.Event()
        self._waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self._release()  # handed the lock as it was cancelled: pass it on
            else:
                self._waiters.remove(turn)
            raise
        # Handed over by `_release`: still locked, now ours.

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        waiters = self._waiters
        if waiters:
            waiters.popleft().set()
            if not waiters:
                self._waiters = None
        else:
            self._locked = False


class Page:
    """The server side of one page (one session, one URL), handed to every view method.

    What a view uses: `params` (path parameters), `query`, `session`, `app`, `send_info`,
    `spawn`, `on_close`, `render_template`, `hidden` (the CSRF/event/key fields of a form) and
    `action` (the URL forms post to).
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
        self.lock = _Mutex()
        self.closed = False
        self.last_seen = app.clock()
        # A page is kept only briefly until a stream connects to it or a command arrives:
        # what a real browser does, and what a script that only GETs pages does not.
        self.confirmed = False
        # Set when a command sent the browser to another URL: once no stream shows the page
        # any more, the user has left it and it is dropped (a start page, after its start).
        self.left = False
        # Set while the page is being mounted (requests for it wait), then None.
        self.mounting: anyio.Event | None = anyio.Event()
        self.failure: BaseException | None = None
        # Allocated on first use: most pages never get a message, a task or a keyed command.
        self._inbox: dict[object, Any] | None = None
        self._delivering = False
        self._urgent = False
        self._nap: anyio.CancelScope | None = None
        self._quiet_until = 0.0
        self._tasks: set[anyio.CancelScope] | None = None
        self._on_close: list[Callable[[], None]] | None = None
        self._accepted: OrderedDict[str, Reply] | None = None

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
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = {}
        inbox.pop(key, None)
        inbox[key] = message
        if urgent:
            self._urgent = True
            if self._nap is not None:
                self._nap.cancel()
        if not self._delivering:
            self._delivering = True
            self.app.task_group.start_soon(self._deliver)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the background for as long as the page lives (it is cancelled
        when the page is closed)."""
        if self.closed:
            return
        self.app.task_group.start_soon(self._guard, fn, *args)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when the page is closed (dropped, or the app stops): stop
        following what the view follows. Runs at once if the page is closed already."""
        if self.closed:
            self._call(callback)
            return
        if self._on_close is None:
            self._on_close = []
        self._on_close.append(callback)

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("an on_close callback of page %s failed", self.path)

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self.closed:
            return
        with anyio.CancelScope() as scope:
            if self._tasks is None:
                self._tasks = set()
            self._tasks.add(scope)
            try:
                await fn(*args)
            except Exception:
                log.exception("a task of page %s failed", self.path)
            finally:
                self._tasks.discard(scope)

    async def _deliver(self) -> None:
        # The mailbox's short task: it lives while messages wait, then ends. The first message
        # after a quiet spell is handled at once; later ones wait out the throttle interval
        # since the last render (an urgent one cuts the wait short).
        try:
            while self._inbox and not self.closed:
                if not self._urgent and anyio.current_time() < self._quiet_until:
                    with anyio.CancelScope(deadline=self._quiet_until) as nap:
                        self._nap = nap
                        await anyio.sleep_forever()
                    self._nap = None
                    continue
                self._urgent = False
                try:
                    await self.flush()
                except Exception:
                    # A view that fails to render must not take the app's task group down.
                    log.exception("page %s failed to render", self.path)
                self._quiet_until = anyio.current_time() + self.app.throttle
        finally:
            self._nap = None
            self._delivering = False

    # -- what the bridge uses ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether the view says work is running."""
        return self.view.busy(self)

    @property
    def key(self) -> tuple[str, str]:
        """The page's key among the app's pages: (session id, path)."""
        return (self.session.id, self.path)

    def touch(self) -> None:
        """Record activity (pages idle for long, or least recently used, are dropped)."""
        self.last_seen = self.app.clock()
        self.app.pages.seen(self)

    async def mount(self) -> None:
        """Mount the view and render it the first time."""
        async with self.lock:
            await self.view.mount(self)
            self._publish()

    async def flush(self) -> None:
        """Handle every waiting message now, then render."""
        async with self.lock:
            await self._drain()
            self._publish()

    async def reload(self) -> None:
        """A full-page GET of a mounted page: the view refreshes, then everything renders."""
        self.left = False  # back on the page (the back button, another tab)
        self.touch()
        async with self.lock:
            await self._drain()
            await self.view.refresh(self)
            self._publish()

    async def _drain(self) -> None:
        while self._inbox:
            inbox, self._inbox = self._inbox, None
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
        self.confirmed = True
        self.touch()
        async with self.lock:
            await self._drain()
            accepted = self._accepted
            first = accepted.get(event.key) if accepted is not None and event.key else None
            if first is not None:
                # Answer a duplicate as the original was answered, without doing it again.
                reply = Reply(duplicate=True, redirect=first.redirect)
            else:
                reply = await self.view.handle_event(event, self) or Reply()
                if reply.ok and event.key and not reply.duplicate:
                    if accepted is None:
                        accepted = self._accepted = OrderedDict()
                    accepted[event.key] = reply
                    if len(accepted) > _KEYS_REMEMBERED:
                        accepted.popitem(last=False)
            if reply.redirect is not None and reply.redirect != self.action:
                self.left = True
            self._publish()
        return reply

    def connect(self) -> Connection:
        """Open a connection; it starts with a snapshot (sent by the caller). A page that
        was closed meanwhile (dropped to make room) gives a closed connection: the stream
        ends after its snapshot and the client reconnects to a page mounted anew."""
        conn = Connection()
        if self.closed:
            conn.close()
            return conn
        self.confirmed = True
        self.left = False  # a stream shows it: whoever opened it is on the page
        self.connections.add(conn)
        self.touch()
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Close a connection. The last one of a page its user left drops the page."""
        conn.close()
        self.connections.discard(conn)
        if self.closed:
            return
        if self.left and not self.connections:
            self.app.pages.drop(self)
        else:
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
        """Stop the page: its tasks are cancelled, its connections closed and its `on_close`
        callbacks called."""
        if self.closed:
            return
        self.closed = True
        self._inbox = None
        for conn in list(self.connections):
            conn.close()
        if self._nap is not None:
            self._nap.cancel()
        for scope in list(self._tasks or ()):
            scope.cancel()
        callbacks, self._on_close = self._on_close or [], None
        for callback in callbacks:
            self._call(callback)


class Pages:
    """The live pages of an app, by (session, path), within the app's `Limits`.

    Three orders make every limit O(1) per page dropped: pages nobody has connected to yet
    (`_unconfirmed`), pages without connections (`_idle`, which includes those) and pages with
    connections (`_connected`), each in least-recently-used order, plus each session's pages.
    `touch` moves a page to the back of its order, and the clock is monotonic, so the front of
    `_unconfirmed` and `_idle` is always the page idle the longest.
    """

    def __init__(self, app: LiveApp) -> None:
        self.app = app
        self._pages: dict[tuple[str, str], Page] = {}
        self._unconfirmed: OrderedDict[tuple[str, str], Page] = OrderedDict()
        self._idle: OrderedDict[tuple[str, str], Page] = OrderedDict()
        self._connected: OrderedDict[tuple[str, str], Page] = OrderedDict()
        self._sessions: dict[str, OrderedDict[str, Page]] = {}

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
        while (page := self._pages.get(key)) is not None:
            if page.mounting is not None:
                await page.mounting.wait()
            if page.failure is not None:
                raise page.failure
            if not page.closed:
                page.touch()
                return page
            # Dropped while it was being mounted: mount it anew (unless another request
            # already does).
            self._forget(page)
        # Pages need the running app (their messages are delivered in its task group): an app
        # whose lifespan never started says how to fix that, before any view is mounted.
        self.app.task_group  # noqa: B018
        self._make_room(session.id)
        page = Page(self.app, session, path, params, query, factory(), root_path)
        self._pages[key] = page
        self._sessions.setdefault(session.id, OrderedDict())[path] = page
        self.seen(page)
        mounting = page.mounting
        try:
            await page.mount()
        except BaseException as err:
            page.failure = err if isinstance(err, NotFound) else NotFound(str(err))
            page.close()
            self._forget(page)
            raise
        finally:
            page.mounting = None
            if mounting is not None:
                mounting.set()
        return page

    def seen(self, page: Page) -> None:
        """Move `page` to the back of its least-recently-used order (called by `touch`)."""
        key = page.key
        if self._pages.get(key) is not page:
            return  # dropped already
        if page.connections:
            self._unconfirmed.pop(key, None)
            self._idle.pop(key, None)
            self._connected[key] = page
            self._connected.move_to_end(key)
        else:
            self._connected.pop(key, None)
            self._idle[key] = page
            self._idle.move_to_end(key)
            if page.confirmed:
                self._unconfirmed.pop(key, None)
            else:
                self._unconfirmed[key] = page
                self._unconfirmed.move_to_end(key)
        self._sessions[page.session.id].move_to_end(page.path)

    def sweep(self) -> int:
        """Drop the pages past their time: unconfirmed ones after `connect_timeout`, pages
        without connections after `page_ttl`. Returns how many were dropped."""
        limits = self.app.limits
        now = self.app.clock()
        dropped = self._expire(self._unconfirmed, now - limits.connect_timeout)
        return dropped + self._expire(self._idle, now - limits.page_ttl)

    def _expire(self, order: OrderedDict[tuple[str, str], Page], cutoff: float) -> int:
        dropped = 0
        while order:
            page = next(iter(order.values()))
            if page.last_seen > cutoff:
                break
            self._drop(page)
            dropped += 1
        return dropped

    def _make_room(self, session_id: str) -> None:
        # Called before a page is added, so the page being opened is never the one dropped.
        limits = self.app.limits
        self.sweep()
        mine = self._sessions.get(session_id)
        if mine is not None and len(mine) >= limits.pages_per_session:
            # Only a page without connections: dropping an open tab's page would make it
            # reconnect and drop the next open tab's, round and round. `max_pages` still
            # bounds the pages a session keeps open.
            idle = next((p for p in mine.values() if not p.connections), None)
            if idle is not None:
                self._drop(idle)
        while len(self._pages) >= limits.max_pages:
            order = self._unconfirmed or self._idle or self._connected
            self._drop(next(iter(order.values())))

    def drop(self, page: Page) -> None:
        """Close `page` and forget it (its next request mounts it anew)."""
        self._drop(page)

    def _drop(self, page: Page) -> None:
        page.close()
        self._forget(page)

    def _forget(self, page: Page) -> None:
        key = page.key
        if self._pages.get(key) is not page:
            return
        del self._pages[key]
        self._unconfirmed.pop(key, None)
        self._idle.pop(key, None)
        self._connected.pop(key, None)
        mine = self._sessions[page.session.id]
        del mine[page.path]
        if not mine:
            del self._sessions[page.session.id]

    def close_all(self) -> None:
        """Close every page (app shutdown)."""
        for page in list(self._pages.values()):
            self._drop(page)
