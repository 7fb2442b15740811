"""A wizard mounted inside a FastAPI app (`Mount("/signup", wizard_app(...))`), served by real
uvicorn on 127.0.0.1: the page, its stream and its POSTs all live under the mount prefix."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from live_client import SECRET, LiveServer, Visitor, form_key, region
from live_flows import signup
from playwright.async_api import Browser, expect
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from bridges.live import mounted_lifespans, wizard_app

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]


def fastapi_app(db_url: str, **options: Any) -> FastAPI:
    app = FastAPI(**options)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/signup", wizard_app(signup, secret=SECRET, url=db_url, title="Signup"))
    return app


async def walk_the_wizard(visitor: Visitor) -> None:
    """Start a wizard under /signup, answer both steps while the page's stream is open."""
    index = await visitor.get("/signup/")
    # Every URL the page hands the browser is under the mount prefix.
    assert 'action="/signup/"' in index
    assert 'src="/signup/_live/static/live.js"' in index
    response = await visitor.post("/signup/", "start", form_key(index, "start"))
    assert response.status_code == 303, response.text[:300]
    path = response.headers["location"]
    assert re.fullmatch(r"/signup/runs/[\w.-]+", path), path

    page = await visitor.get(path)
    assert "Who are you?" in region(page, "main")
    assert f'data-live-stream="{path}/_live/sse"' in page
    assert f'data-live-socket="{path}/_live/ws"' in page
    assert f'action="{path}"' in page
    script = await visitor.http.get("/signup/_live/static/live.js")
    assert script.status_code == 200
    assert "EventSource" in script.text

    async with visitor.stream(path) as events:
        await events.until("main", "Who are you?")
        answered = await visitor.post(
            path, "answer", form_key(page, "answer"), {"name": "Ada", "age": "36"}, live=True
        )
        assert answered.status_code == 200, answered.text[:300]
        await events.until("main", "Choose a plan")
    page = await visitor.answer(path, {"plan": "pro"})
    assert "Ada (36) on pro" in region(page, "main")
    assert path in await visitor.get("/signup/")


async def test_wizard_mounted_in_fastapi(serve: Serve, db_url: str) -> None:
    """`FastAPI(lifespan=mounted_lifespans)` starts the mounted wizard: without it every page
    of the wizard answered 500 ("lifespan has not started")."""
    server = serve(fastapi_app(db_url, lifespan=mounted_lifespans))
    async with Visitor(server.url) as ada:
        health = await ada.http.get("/health")
        assert health.json() == {"status": "ok"}
        await walk_the_wizard(ada)


async def test_mounted_next_to_an_own_lifespan(serve: Serve, db_url: str) -> None:
    """An app with a lifespan of its own enters `mounted_lifespans(app)` inside it; the
    wizard is mounted in a `Mount(routes=[...])` of a plain Starlette app."""
    entered: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        entered.append("own")
        async with mounted_lifespans(app):
            yield
        entered.append("left")

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = Starlette(
        routes=[
            Route("/", home),
            Mount(
                "/signup",
                routes=[Mount("/", wizard_app(signup, secret=SECRET, url=db_url, title="Signup"))],
            ),
        ],
        lifespan=lifespan,
    )
    server = serve(app)
    async with Visitor(server.url) as ada:
        assert (await ada.http.get("/")).text == "home"
        await walk_the_wizard(ada)
    server.stop()
    assert entered == ["own", "left"]


async def test_unstarted_mount_says_how_to_fix_it(serve: Serve, db_url: str) -> None:
    """Mounted without `mounted_lifespans`, the error names the fix."""
    app = fastapi_app(db_url)
    server = serve(app)
    mounted = next(r for r in app.routes if getattr(r, "path", "") == "/signup")
    mounted.app.debug = True  # type: ignore[attr-defined]
    async with Visitor(server.url) as ada:
        response = await ada.http.get("/signup/")
        assert response.status_code == 500
        assert "mounted_lifespans" in response.text


async def test_mounted_wizard_in_chromium(serve: Serve, db_url: str, browser: Browser) -> None:
    """In a browser, the mounted page's script (served under the prefix) connects its stream
    under the prefix and answers through it: the next step arrives live, with no failed
    request and the tab's title following."""
    server = serve(fastapi_app(db_url, lifespan=mounted_lifespans))
    page = await browser.new_page()
    failed: list[str] = []
    # (Leaving a page aborts its stream: requests that fail are counted on the run page only.)
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    await page.goto(f"{server.url}/signup/")
    await page.wait_for_selector("body[aria-busy]", state="attached")
    await page.get_by_role("button", name="Start").click()
    await expect(page.get_by_role("heading", name="Who are you?")).to_be_visible()
    assert "/signup/runs/" in page.url
    await page.wait_for_selector("body[aria-busy]", state="attached")
    loads = 0

    def count_load(_: object) -> None:
        nonlocal loads
        loads += 1

    page.on("load", count_load)
    page.on("requestfailed", lambda request: failed.append(request.url))
    await page.get_by_role("textbox", name="Name").fill("Ada")
    await page.get_by_role("spinbutton", name="Age").fill("36")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Choose a plan")).to_be_visible()
    await expect(page).to_have_title("Choose a plan — Signup")
    assert loads == 0  # answered by the script and patched in over the stream
    assert failed == []
