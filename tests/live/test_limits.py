"""The limits of a live app on a real server: how many pages it keeps (unconnected pages for a
short while, per session, in total with least-recently-used eviction), that a dropped page's
client recovers with a snapshot, and how many runs a session may start per minute.

Time is a fake clock handed to the app: nothing sleeps.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile import receive, websocket
from live_client import (
    SECRET,
    EventReader,
    LiveServer,
    Visitor,
    form_key,
    page_position,
    parse_id,
    region,
)
from live_flows import names
from markupsafe import Markup, escape

from bridges.live import Event, Limits, LiveApp, LiveView, Page, RateLimit, Reply, wizard_app

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Tally(LiveView):
    """A count kept in the page's memory, and a button that adds one."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_event(self, event: Event, page: Page) -> Reply | None:
        if event.name == "inc":
            self.count += 1
            return None
        return await super().handle_event(event, page)

    def render(self, page: Page) -> Mapping[str, str]:
        form = Markup(
            f'<form method="post" action="{escape(page.action)}" data-live-form>'
            f"{page.hidden('inc', f'inc:{self.count}')}<button>+1</button></form>"
        )
        return {"main": Markup("<p>count {}</p>").format(self.count) + form}


def tally_app(serve: Serve, limits: Limits, clock: FakeClock) -> tuple[LiveApp, LiveServer]:
    live = LiveApp(secret=SECRET, limits=limits, clock=clock)
    live.page("/t/{name}", Tally)
    return live, serve(live.build())


async def cookieless_get(server: LiveServer, path: str) -> httpx.Response:
    """A GET without a cookie (a crawler, a script): a new session, hence a new page."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(path)
    assert response.status_code == 200
    assert "live_session=" in response.headers["set-cookie"]
    return response


async def test_cookieless_gets_keep_the_page_count_bounded(serve: Serve) -> None:
    """A flood of cookieless GETs never keeps more than `max_pages` pages, and pages nobody
    connected to are dropped after `connect_timeout`; a page a stream is connected to
    survives both, and its stream keeps working."""
    clock = FakeClock()
    live, server = tally_app(serve, Limits(max_pages=8, connect_timeout=5), clock)
    async with Visitor(server.url) as ada:
        await ada.get("/t/a")
        async with ada.stream("/t/a") as events:
            await events.next()
            for _ in range(40):
                await cookieless_get(server, "/t/a")
                assert len(live.pages) <= 8
            assert len(live.pages) == 8
            clock.advance(5.5)
            await cookieless_get(server, "/t/a")
            assert len(live.pages) == 2  # ada's and the newest
            page = await ada.get("/t/a")
            assert (await ada.post("/t/a", "inc", form_key(page, "inc"), live=True)).is_success
            await events.until("main", "count 1")


async def test_pages_of_one_session_are_bounded(serve: Serve) -> None:
    """One session opening many URLs keeps `pages_per_session` pages: the least recently used
    go first, and a page with a connected stream is kept while the session has idle ones."""
    clock = FakeClock()
    live, server = tally_app(serve, Limits(pages_per_session=3), clock)
    async with Visitor(server.url) as ada:
        await ada.get("/t/0")
        async with ada.stream("/t/0") as events:
            await events.next()
            for i in range(1, 8):
                await ada.get(f"/t/{i}")
                assert len(live.pages) == min(i + 1, 3)
            page = await ada.get("/t/0")
            assert (await ada.post("/t/0", "inc", form_key(page, "inc"), live=True)).is_success
            await events.until("main", "count 1")
        assert len(live.pages) == 3


async def test_open_tabs_of_a_session_are_not_dropped_for_its_limit(serve: Serve) -> None:
    """Pages with a connected stream are not dropped for `pages_per_session` (each dropped tab
    would reconnect and drop the next one's page): the session keeps them all open."""
    clock = FakeClock()
    live, server = tally_app(serve, Limits(pages_per_session=2), clock)
    async with Visitor(server.url) as ada:
        await ada.get("/t/0")
        await ada.get("/t/1")
        async with ada.stream("/t/0") as first, ada.stream("/t/1") as second:
            await first.next()
            await second.next()
            page = await ada.get("/t/2")
            assert len(live.pages) == 3
            assert (await ada.post("/t/2", "inc", form_key(page, "inc"), live=True)).is_success
            for path, events in (("/t/0", first), ("/t/1", second)):
                page = await ada.get(path)
                assert (await ada.post(path, "inc", form_key(page, "inc"), live=True)).is_success
                await events.until("main", "count 1")
            await ada.get("/t/3")  # /t/2 has no stream: it goes
            assert len(live.pages) == 3


async def test_a_dropped_page_recovers_with_a_snapshot(serve: Serve) -> None:
    """A stream for a page dropped before any stream connected gets a snapshot of the page
    mounted anew (never an error); a connected page evicted to make room ends its stream, and
    the reconnection gets a snapshot of a new epoch, which the client takes whole."""
    clock = FakeClock()
    live, server = tally_app(serve, Limits(max_pages=2, connect_timeout=5), clock)
    async with Visitor(server.url) as ada, Visitor(server.url) as bob:
        document = await ada.get("/t/a")
        clock.advance(6)
        await bob.get("/t/b")  # opening a page sweeps: ada's, never connected, is dropped
        assert len(live.pages) == 1
        async with ada.stream("/t/a", page_position(document)) as events:
            event, snapshot = await events.next()
            assert event.event == "snapshot"
            assert parse_id(event.id)[0] != parse_id(page_position(document))[0]
            assert "count 0" in snapshot["regions"]["main"]["html"]
            page = await ada.get("/t/a")
            assert (await ada.post("/t/a", "inc", form_key(page, "inc"), live=True)).is_success
            await events.until("main", "count 1")
            last = f"{event.id.split('.')[0]}.{max(events.ids)}"

            # Both pages have streams: one more page evicts the least recently used one.
            async with bob.stream("/t/b") as bobs:
                await bobs.next()
                async with Visitor(server.url) as carl:
                    await carl.get("/t/c")
                with pytest.raises(EOFError):
                    await drain(events)
                async with ada.stream("/t/a", last) as again:
                    event, snapshot = await again.next()
                    assert event.event == "snapshot"
                    assert parse_id(event.id)[0] != parse_id(last)[0]
                    assert set(snapshot["regions"]) == {"main"}
                await bobs.until("main", "count 0")  # bob's page was never touched


async def drain(events: EventReader) -> None:
    """Read a stream until the server ends it (EOFError)."""
    while True:
        await events.next()


def starts_app(serve: Serve, db_url: str, clock: FakeClock, per_minute: int) -> LiveServer:
    return serve(
        wizard_app(
            names,
            secret=SECRET,
            url=db_url,
            limits=Limits(starts_per_minute=per_minute),
            clock=clock,
            settle=0,
        )
    )


def runs_in(db_url: str) -> int:
    path = db_url.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM effects_runs").fetchone()
    return int(count)


async def test_run_starts_per_session_are_limited(
    serve: Serve, db_url: str, tmp_path: Path
) -> None:
    """The N+1th start within a minute is answered 429 with Retry-After, with the reason on
    the page, and starts no run; another session is not affected; a minute later the session
    may start again."""
    clock = FakeClock()
    server = starts_app(serve, db_url, clock, per_minute=3)
    async with Visitor(server.url) as ada, Visitor(server.url) as bob:
        for _ in range(3):
            await ada.start()
            clock.advance(1)
        assert runs_in(db_url) == 3
        page = await ada.get("/")
        key = form_key(page, "start")
        refused = await ada.post("/", "start", key)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 58
        assert "too many runs" in region(refused.text, "start")
        live = await ada.post("/", "start", key, live=True)
        assert live.status_code == 429
        assert live.headers["retry-after"] == refused.headers["retry-after"]
        assert live.json()["ok"] is False
        assert 0 < live.json()["retry_after"] <= 58
        assert runs_in(db_url) == 3

        await bob.start()
        assert runs_in(db_url) == 4

        clock.advance(58)  # the first start is now a minute old
        again = await ada.post("/", "start", key)
        assert again.status_code == 303
        assert again.headers["location"].startswith("/runs/")
        assert runs_in(db_url) == 5


def test_rate_limit_forgets_old_keys() -> None:
    """The start limiter holds only the keys of the last window (bounded memory)."""
    clock = FakeClock()
    limit = RateLimit(2, 60, clock=clock)
    assert limit.take("a") is None
    assert limit.take("a") is None
    assert limit.take("a") == 60
    for i in range(100):
        assert limit.take(f"s{i}") is None
    clock.advance(30)
    assert limit.take("a") == 30
    clock.advance(31)
    assert limit.take("new") is None
    assert len(limit) == 1
    assert limit.take("a") is None


def test_limits_are_checked() -> None:
    """Nonsense limits are refused when the app is configured, not at the first request."""
    with pytest.raises(ValueError, match="max_pages"):
        Limits(max_pages=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        Limits(connect_timeout=0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the websockets client
async def test_a_start_over_the_limit_by_websocket_gets_retry_after(
    serve: Serve, db_url: str
) -> None:
    """Over the WebSocket, a start beyond the limit gets a `reply` with `ok: false` and
    `retry_after`, and starts no run."""
    clock = FakeClock()
    server = starts_app(serve, db_url, clock, per_minute=1)
    async with Visitor(server.url) as ada:
        await ada.start()
        page = await ada.get("/")
        async with websocket(server, ada, "/") as ws:
            await receive(ws, "snapshot")
            start = {"type": "event", "ref": "r1", "csrf": ada.csrf, "event": "start"}
            await ws.send(json.dumps({**start, "key": form_key(page, "start")}))
            reply = await receive(ws, "reply")
            assert (reply["ok"], reply["ref"]) == (False, "r1")
            assert 59 <= reply["retry_after"] <= 60
            assert "too many runs" in reply["errors"][0]["msg"]
        assert runs_in(db_url) == 1
