"""The test infrastructure itself: a real PostgreSQL server and a real headless Chromium."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.anyio

# asyncpg, and so SQLAlchemy's async engine on it, runs on asyncio only.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>effects infrastructure</title></head>
<body>
<button id="go" onclick="document.getElementById('out').textContent = 'clicked'">Go</button>
<p id="out">waiting</p>
</body></html>
"""


@asyncio_only
@pytest.mark.timeout(30)
async def test_postgres_url_answers_queries(postgres_url: str) -> None:
    """The session server accepts an asyncpg connection and answers ``select 1``."""
    assert make_url(postgres_url).database == "test"
    engine = create_async_engine(postgres_url)
    try:
        with anyio.fail_after(20):
            async with engine.connect() as conn:
                assert (await conn.execute(text("select 1"))).scalar_one() == 1
                version = (await conn.execute(text("show server_version_num"))).scalar_one()
                assert int(version) >= 130000  # DROP DATABASE ... WITH (FORCE) needs 13+
    finally:
        await engine.dispose()


@asyncio_only
@pytest.mark.timeout(30)
async def test_pg_database_url_is_a_fresh_private_database(
    postgres_url: str, pg_database_url: str
) -> None:
    """Each test gets its own empty database; its tables are invisible elsewhere."""
    assert make_url(pg_database_url).database != make_url(postgres_url).database
    private = create_async_engine(pg_database_url)
    shared = create_async_engine(postgres_url)
    try:
        with anyio.fail_after(20):
            async with private.begin() as conn:
                count = "select count(*) from pg_tables where schemaname = 'public'"
                assert (await conn.execute(text(count))).scalar_one() == 0
                await conn.execute(text("create table runs (id int primary key, name text)"))
                await conn.execute(text("insert into runs values (1, 'wizard')"))
            async with private.connect() as conn:
                name = (await conn.execute(text("select name from runs where id = 1"))).scalar()
                assert name == "wizard"
            async with shared.connect() as conn:
                found = (await conn.execute(text("select to_regclass('public.runs')"))).scalar()
                assert found is None
            async with private.begin() as conn:
                await conn.execute(text("drop table runs"))
    finally:
        await private.dispose()
        await shared.dispose()


@pytest.mark.timeout(30)
async def test_postgres_fixture_works_on_every_backend(postgres_url: str) -> None:
    """The server fixture is backend-neutral: it speaks the wire protocol to trio too."""
    url = make_url(postgres_url)
    assert url.host == "127.0.0.1"
    assert url.port is not None
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(url.host, url.port) as stream:
            # SSLRequest: length 8, code 80877103; a server without TLS answers b"N".
            await stream.send(struct.pack("!ii", 8, 80877103))
            assert await stream.receive(1) == b"N"


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


@pytest.fixture
def page_url() -> Iterator[str]:
    """A tiny page served from 127.0.0.1 by a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(45)
async def test_chromium_renders_a_local_page(browser: Browser, page_url: str) -> None:
    """Playwright drives the system Chromium: it reads the title and runs the page's script."""
    with anyio.fail_after(30):
        page = await browser.new_page()
        page.set_default_timeout(10_000)
        await page.goto(page_url)
        assert await page.title() == "effects infrastructure"
        await page.click("#go")
        assert await page.text_content("#out") == "clicked"
        await page.close()
