"""Fixtures of the end-to-end tests: the examples as real servers, headless Chromium.

Playwright's async API runs on asyncio only, so these tests do too. One browser serves a whole
test module (each test opens its own contexts: separate cookies, separate sessions), which
needs the anyio backend fixture at module scope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from e2e import RUNNING, ExampleServer, NewPage, StartServer
from fixtures.browser import launch_browser

TIMEOUT_MS = 5_000  # Playwright's bound on each wait: a few seconds


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failure report shows what every example server still running printed."""
    report = yield
    if report.failed:
        for server in RUNNING:
            report.sections.append((f"output of {server.script} on {server.url}", server.output()))
    return report


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Asyncio (Playwright), shared by the module's tests and its browser."""
    return "asyncio"


@pytest.fixture(scope="module")
async def chromium(chromium_path: str) -> AsyncIterator[Browser]:
    """One headless Chromium for the module."""
    async with launch_browser(chromium_path) as browser:
        yield browser


@pytest.fixture
async def new_page(chromium: Browser) -> AsyncIterator[NewPage]:
    """`await new_page(**context_options)`: a page in a fresh browser context (a new session).
    Every wait is bounded by a few seconds; a script error in any page fails the test."""
    contexts = []
    errors: list[str] = []

    async def open_page(**options: Any) -> Page:
        context = await chromium.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Shown by pytest when the test fails: what the page saw.
        page.on("console", lambda m: print(f"[console {m.type}] {m.text}"))
        page.on("framenavigated", lambda f: print(f"[navigated] {f.url}"))
        page.on("request", lambda r: print(f"[request] {r.method} {r.url}"))
        page.on("requestfinished", lambda r: print(f"[finished] {r.method} {r.url}"))
        page.on("requestfailed", lambda r: print(f"[failed] {r.method} {r.url} {r.failure}"))
        return page

    yield open_page
    for context in contexts:
        await context.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """`start_server(example, *args, port=None)` starts an example; all stop after the test."""
    servers: list[ExampleServer] = []

    def start(example: str, *args: str, port: int | None = None) -> ExampleServer:
        server = ExampleServer(example, *args, port=port).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
