"""What a live session costs the server (issue 10): no task per page, one per open stream; no
page kept for a start page its user left; the SSE fast path and its fallback through user
middleware; the garbage collector option.

The memory itself is measured by bench/live.py (bench/README.md, "live"); these tests pin the
structure that makes it small, on a real uvicorn server.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from live_client import SECRET, LiveServer, Visitor, form_key
from live_flows import names
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridges.live import GcTuning, LiveApp, run_app

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]
SESSIONS = 6


def wizard(db_url: str, **options: Any) -> tuple[LiveApp, list[asyncio.AbstractEventLoop]]:
    """The `names` wizard as a `LiveApp`, and (once it runs) the server's event loop."""
    loops: list[asyncio.AbstractEventLoop] = []

    @asynccontextmanager
    async def capture(app: LiveApp) -> AsyncIterator[None]:
        loops.append(asyncio.get_running_loop())
        yield

    live = run_app(names, secret=SECRET, url=db_url, **options)
    live.add_lifespan(capture)
    return live, loops


def tasks_of(loop: asyncio.AbstractEventLoop) -> tuple[int, int]:
    """The server's tasks (counted in its loop): how many serve a request (uvicorn's
    `run_asgi`), and how many were started in anyio task groups (the app's, the runner's, a
    page's or a response's)."""

    async def count() -> tuple[int, int]:
        names = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
        return names.count("RequestResponseCycle.run_asgi"), names.count("TaskHandle._run_coro")

    return asyncio.run_coroutine_threadsafe(count(), loop).result(10)


async def settled(loop: asyncio.AbstractEventLoop, expected: tuple[int, int]) -> tuple[int, int]:
    """The counts once they are `expected` (short tasks of the last requests end soon after
    them); the counts at the deadline otherwise."""
    deadline = time.monotonic() + 10
    while (counts := tasks_of(loop)) != expected:
        if time.monotonic() > deadline:
            break
        await anyio.sleep(0.02)
    return counts


async def test_a_run_page_with_its_stream_holds_one_task(serve: Serve, db_url: str) -> None:
    """Sessions that started a run, opened its page and its stream cost the server one task
    each: the stream's request. The pages hold none (no mailbox worker, no follower per run,
    no task group), the streams no second task for the disconnect, and the start pages the
    users left are gone."""
    live, loops = wizard(db_url)
    server = serve(live.build())
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(Visitor(server.url))
        await first.get("/")  # the app has started
        [loop] = loops
        _, own = tasks_of(loop)  # the app's and the runner's own tasks
        for _ in range(SESSIONS):
            visitor = await stack.enter_async_context(Visitor(server.url))
            path = await visitor.start()
            await visitor.get(path)
            events = await stack.enter_async_context(visitor.stream(path))
            await events.until("main", "Person 1")
        assert await settled(loop, (SESSIONS, own)) == (SESSIONS, own)
        # The run pages, and the first visitor's start page (it is still there); none of
        # the start pages the others left.
        assert len(live.pages) == SESSIONS + 1


async def test_a_start_page_left_after_a_start_is_dropped(serve: Serve, db_url: str) -> None:
    """The script's start: the start page's stream is open while the start is posted; the
    reply sends the browser to the run, whose page closes that stream. The start page is
    dropped then, not kept for `page_ttl`; going back to it mounts it anew."""
    live, _ = wizard(db_url)
    server = serve(live.build())
    async with Visitor(server.url) as ada:
        page = await ada.get("/")
        async with ada.stream("/") as events:
            await events.next()
            response = await ada.post("/", "start", form_key(page, "start"), live=True)
            assert response.status_code == 200
            path = response.json()["redirect"]
            assert path.startswith("/runs/")
            assert len(live.pages) == 1  # shown by a stream: kept until it closes
        deadline = time.monotonic() + 10
        while len(live.pages):  # the stream's end reaches the server soon after
            assert time.monotonic() < deadline, "the start page was kept"
            await anyio.sleep(0.02)
        assert "Person 1" in await ada.get(path)
        again = await ada.get("/")  # back: a new start page, listing the run
        assert path.rsplit("/", 1)[1][:8] in again


async def test_a_start_without_javascript_keeps_no_start_page(serve: Serve, db_url: str) -> None:
    """A form posted without JavaScript: the 303 leads to the run page, and the start page,
    which no stream shows, is dropped at once."""
    live, _ = wizard(db_url)
    server = serve(live.build())
    async with Visitor(server.url) as ada:
        path = await ada.start()
        assert len(live.pages) == 0
        assert "Person 1" in await ada.get(path)
        assert len(live.pages) == 1


class Stamp:
    """User middleware: stamps every response with a header, and counts the requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str] = []
        STAMPS.append(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(scope["path"])

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


STAMPS: list[Stamp] = []


async def test_streams_go_through_user_middleware(serve: Serve, db_url: str) -> None:
    """An app with middleware of the user's serves its streams through it (the fast path that
    skips Starlette's stack is only taken without any), and they still work."""
    live, _ = wizard(db_url)
    app = live.build()
    app.add_middleware(Stamp)
    server = serve(app)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        await ada.get(path)
        async with ada.stream(path) as events:
            await events.until("main", "Person 1")
            assert events.conn.head.get("x-stamp") == "1"
        response = await ada.http.get("/runs/nope/_live/sse")
        assert response.status_code == 404
        assert response.headers.get("x-stamp") == "1"
    assert any(p == path + "/_live/sse" for stamp in STAMPS for p in stamp.seen)


async def test_a_stream_for_no_page_is_404_on_the_fast_path(serve: Serve, db_url: str) -> None:
    """Without user middleware, a stream the app cannot open (no session, another session's
    run) is answered by Starlette's own 404, as before."""
    live, _ = wizard(db_url)
    server = serve(live.build())
    async with Visitor(server.url) as ada, Visitor(server.url) as eve:
        path = await ada.start()
        assert (await eve.http.get(path + "/_live/sse")).status_code == 404  # no session
        await eve.get("/")
        assert (await eve.http.get(path + "/_live/sse")).status_code == 404  # not hers


def test_gc_tuning_applies_and_restores() -> None:
    """`GcTuning.apply` freezes what exists and sets the thresholds; `restore` undoes both,
    once the last of several apps applying it stops."""
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    first, second = GcTuning(), GcTuning(thresholds=(5_000, 10, 10))
    first.apply()
    try:
        assert gc.get_threshold() == (10_000, 20, 100)
        assert gc.get_freeze_count() > 0
        second.apply()
        assert gc.get_threshold() == (5_000, 10, 10)
        second.restore()
        assert gc.get_freeze_count() > 0  # the first app still runs
    finally:
        first.restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_the_app_tunes_the_gc_while_it_runs(db_url: str) -> None:
    """`LiveApp(gc=GcTuning())`: tuned once the app has started, restored when it stops."""
    before = gc.get_threshold()
    live, _ = wizard(db_url, gc=GcTuning(thresholds=(20_000, 30, 40)))
    server = LiveServer(live.build()).start()
    try:
        async with Visitor(server.url) as ada:
            await ada.get("/")
        assert gc.get_threshold() == (20_000, 30, 40)
        assert gc.get_freeze_count() > 0
    finally:
        server.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_the_page_lock_is_fifo_and_survives_cancelled_waiters() -> None:
    """The page's lock (no deque until contended): waiters get it in order; a waiter
    cancelled while waiting, or just as it was handed the lock, does not keep it."""
    from bridges.live._page import _Mutex

    lock = _Mutex()
    order: list[str] = []

    async def take(name: str, hold: anyio.Event | None = None) -> None:
        async with lock:
            order.append(name)
            if hold is not None:
                await hold.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            release = anyio.Event()
            tg.start_soon(take, "first", release)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, "second")
            await anyio.wait_all_tasks_blocked()
            cancelled = anyio.CancelScope()

            async def third() -> None:
                with cancelled:
                    await take("third")

            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, "fourth")
            await anyio.wait_all_tasks_blocked()
            cancelled.cancel()  # gives up its place before its turn
            release.set()
    assert order == ["first", "second", "fourth"]
    assert not lock.locked()

    # Handed the lock as it is cancelled: it passes the lock on.
    order.clear()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.__aenter__()  # the test holds it
            scope = anyio.CancelScope()

            async def b() -> None:
                with scope:
                    await take("b")

            tg.start_soon(b)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, "c")
            await anyio.wait_all_tasks_blocked()
            scope.cancel()  # b is cancelled, and before it runs...
            await lock.__aexit__(None, None, None)  # ...is handed the lock: it passes it on
    assert order == ["c"]
    assert not lock.locked()
