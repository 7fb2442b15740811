"""The WebSocket transport behind a proxy, in real Chromium through real nginx: passed on, the
page lives on its socket; refused (nginx without the `Upgrade`/`Connection` lines), the
client falls back to the SSE stream and loses neither updates nor answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from live_client import SECRET, LiveServer
from live_flows import signup
from playwright.async_api import Browser, Page, expect

from bridges.live import run_app
from fixtures.nginx import Balancer

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 10_000
WS = "/_live/ws"
SSE = "/_live/sse"


class Traffic:
    """What the page sent: WebSocket handshakes, SSE requests and POSTs (URLs)."""

    def __init__(self, page: Page) -> None:
        self.sockets: list[str] = []
        self.streams: list[str] = []
        self.posts: list[str] = []
        self.frames = 0
        page.on("websocket", self._socket)
        page.on("request", self._request)

    def _socket(self, ws: Any) -> None:
        self.sockets.append(ws.url)
        ws.on("framesent", self._frame)

    def _frame(self, _payload: Any) -> None:
        self.frames += 1

    def _request(self, request: Any) -> None:
        if SSE in request.url:
            self.streams.append(request.url)
        if request.method == "POST":
            self.posts.append(request.url)


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Page]:
    """A page configured for the WebSocket transport, in a fresh context; every wait bounded,
    and a script error fails the test."""
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: print(f"[console {m.type}] {m.text}"))
    await page.add_init_script("window.LIVE_TRANSPORT = 'ws'")
    yield page
    await context.close()
    assert errors == []


def proxied(
    serve: Callable[[Any], LiveServer],
    start_nginx: Callable[..., Balancer],
    db_url: str,
    *,
    upgrade: bool,
) -> Balancer:
    """The signup wizard on a real server, behind nginx (passing upgrades on or not)."""
    server = serve(run_app(signup, secret=SECRET, url=db_url).build())
    return start_nginx([server.port], upgrade=upgrade)


async def synced(page: Page) -> None:
    """Wait until the page's script has applied a snapshot (it marks `<body>` aria-busy)."""
    await page.wait_for_selector("body[aria-busy]", state="attached")


async def signup_to_the_end(page: Page, url: str) -> None:
    """Start a run, answer both steps; the work after the last answer (progress, the result)
    reaches the page only through its stream."""
    await page.goto(url)
    await synced(page)
    await page.get_by_role("button", name="Start").click()
    await expect(page.get_by_role("heading", name="Who are you?", level=2)).to_be_visible()
    await synced(page)
    await page.get_by_role("textbox", name="Name").fill("Ada")
    await page.get_by_role("spinbutton", name="Age").fill("36")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Choose a plan", level=2)).to_be_visible()
    await page.get_by_role("radio", name="pro").check()
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("status")).to_have_text("Finished.")
    await expect(page.get_by_text("Ada (36) on pro")).to_be_visible()


async def test_the_websocket_through_nginx(
    tab: Page,
    serve: Callable[[Any], LiveServer],
    start_nginx: Callable[..., Balancer],
    db_url: str,
) -> None:
    """nginx passes the upgrade on: each page lives on its socket (101), every command goes
    as a frame, and no SSE stream is opened."""
    balancer = proxied(serve, start_nginx, db_url, upgrade=True)
    traffic = Traffic(tab)
    await signup_to_the_end(tab, balancer.url)
    assert len(traffic.sockets) == 2, traffic.sockets  # the start page's, the run page's
    assert traffic.streams == []
    assert traffic.posts == []  # the start and both answers went as frames
    assert traffic.frames == 3
    await tab.context.close()  # ends the sockets: nginx logs them
    sockets = [line for line in balancer.log() if line.path.endswith(WS)]
    assert sockets
    assert all(line.status == 101 for line in sockets), sockets


async def test_a_refused_upgrade_falls_back_to_sse(
    tab: Page,
    serve: Callable[[Any], LiveServer],
    start_nginx: Callable[..., Balancer],
    db_url: str,
) -> None:
    """nginx without the upgrade lines: the handshake reaches the app as a plain GET, and the
    browser gets a plain 404 instead of a socket. The client takes the SSE stream at once,
    sends its commands over HTTP, and does not try the socket again on the next page; the
    run's progress and result, which only a stream brings, arrive."""
    balancer = proxied(serve, start_nginx, db_url, upgrade=False)
    traffic = Traffic(tab)
    await signup_to_the_end(tab, balancer.url)
    assert len(traffic.sockets) == 1, traffic.sockets  # the start page tried, once
    assert traffic.frames == 0
    assert len(traffic.streams) >= 2, traffic.streams  # the start page's, the run page's
    assert len(traffic.posts) == 3, traffic.posts  # the start and both answers
    refused = [line for line in balancer.log() if line.path.endswith(WS)]
    assert [line.status for line in refused] == [404]
