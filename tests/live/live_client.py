"""The test server and a small HTTP client that behaves like a browser without JavaScript.

The server is uvicorn on 127.0.0.1, in a thread with its own asyncio loop (uvicorn and the
durable runner are asyncio-only); the tests talk to it over HTTP with httpx, from asyncio or
trio. The listening socket is bound before the server starts, so a client may connect at once:
the connection waits in the backlog until the app's lifespan has started.
"""

from __future__ import annotations

import html
import json
import re
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httpx
import uvicorn

SECRET = "test-secret-of-the-live-bridge-0123456789"


class LiveServer:
    """One uvicorn server serving `app` on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
            ws="websockets-sansio",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as err:  # reported by stop()
            self.error = err

    def start(self) -> LiveServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop"
        if self.error is not None:
            raise self.error


def region(page: str, region_id: str) -> str:
    """The inner HTML of a region of a full page."""
    match = re.search(
        rf'<div id="live-{re.escape(region_id)}" data-live-region="[^"]*"[^>]*>', page
    )
    assert match is not None, f"no region {region_id!r} in the page"
    rest = page[match.end() :]
    end = re.search(r'</div>\n(?=<div id="live-|</main>)', rest)
    assert end is not None
    return rest[: end.start()]


def parse_id(event_id: str) -> tuple[str, int]:
    """An event id, `<epoch>.<revision>`, as its two parts."""
    epoch, dot, revision = event_id.partition(".")
    assert dot, event_id
    assert epoch, event_id
    assert revision.isdigit(), event_id
    return epoch, int(revision)


def page_position(page: str) -> str:
    """The `<epoch>.<revision>` of a full page (what the shipped client resumes from)."""
    epoch = re.search(r'data-live-epoch="([0-9a-f]+)"', page)
    revision = re.search(r'data-live-revision="(\d+)"', page)
    assert epoch is not None
    assert revision is not None
    return f"{epoch.group(1)}.{revision.group(1)}"


def region_rev(page: str, region_id: str) -> int:
    """The revision a full page shows for a region."""
    match = re.search(rf'data-live-region="{re.escape(region_id)}" data-live-rev="(\d+)"', page)
    assert match is not None
    return int(match.group(1))


def form_key(fragment: str, event: str) -> str:
    """The idempotency key of the form that sends `event`."""
    pattern = (
        rf'name="_event" value="{re.escape(event)}">'
        r'<input type="hidden" name="_key" value="([^"]*)"'
    )
    match = re.search(pattern, fragment)
    assert match is not None, f"no form for {event!r}"
    return html.unescape(match.group(1))


class Visitor:
    """One browser session: a cookie jar, the CSRF token of the last page it saw."""

    def __init__(self, base_url: str, **headers: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers)
        self.csrf = ""
        self.last = ""

    async def __aenter__(self) -> Visitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def get(self, path: str, expect: int = 200) -> str:
        response = await self.http.get(path)
        assert response.status_code == expect, (response.status_code, response.text[:500])
        if expect == 200:
            self.last = response.text
            token = re.search(r'<meta name="live-csrf" content="([^"]*)">', response.text)
            if token:
                self.csrf = html.unescape(token.group(1))
        return response.text

    async def post(
        self,
        path: str,
        event: str,
        key: str,
        fields: dict[str, Any] | None = None,
        *,
        live: bool = False,
        csrf: str | None = None,
    ) -> httpx.Response:
        """Post a command the way the page's form does (or its script, with `live=True`)."""
        data: dict[str, Any] = {"_event": event, "_key": key, **(fields or {})}
        token = self.csrf if csrf is None else csrf
        if token:
            data["_csrf"] = token
        headers = {"X-Live": "1"} if live else {}
        return await self.http.post(path, data=data, headers=headers)

    async def start(self, fields: dict[str, Any] | None = None) -> str:
        """Start a run from the index page; returns the run page's path."""
        page = await self.get("/")
        response = await self.post("/", "start", form_key(page, "start"), fields)
        assert response.status_code == 303, response.text[:500]
        location = response.headers["location"]
        assert location.startswith("/runs/")
        return location

    async def answer(self, path: str, fields: dict[str, Any]) -> str:
        """Answer the step a run page shows; returns the page after the redirect."""
        page = await self.get(path)
        response = await self.post(path, "answer", form_key(page, "answer"), fields)
        assert response.status_code == 303, response.text[:500]
        return await self.get(response.headers["location"])

    @property
    def cookie(self) -> str:
        """The session cookie, as a `Cookie` header value."""
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    @asynccontextmanager
    async def stream(
        self, path: str, last_event_id: str | None = None, *, query: str = ""
    ) -> AsyncIterator[EventReader]:
        """Open the page's SSE stream (`Last-Event-ID: last_event_id`, `?query`)."""
        url = httpx.URL(str(self.http.base_url))
        target = path.rstrip("/") + "/_live/sse" + (f"?{query}" if query else "")
        conn = await RawStream.open(url.host, url.port or 80, target, self.cookie, last_event_id)
        try:
            assert conn.status == 200, conn.status
            yield EventReader(conn)
        finally:
            await conn.aclose()


@dataclass
class Event:
    """One Server-Sent Event."""

    event: str
    data: str
    id: str = ""


class RawStream:
    """A minimal HTTP/1.1 SSE client on a plain TCP stream (chunked transfer decoding).

    Used instead of an HTTP library's streaming API because it can be left unread (a slow
    client) and closed at any point without leaving half-consumed generators behind.
    """

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.status = 0
        self.head: dict[str, str] = {}  # the response's headers, lower-case names
        self._raw = bytearray()
        self._text = ""

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        path: str,
        cookie: str,
        last_event_id: str | None = None,
        *,
        receive_buffer: int | None = None,
    ) -> RawStream:
        with anyio.fail_after(20):
            stream = await anyio.connect_tcp(host, port)
            if receive_buffer is not None:
                # A tiny receive buffer: once this client stops reading, the server's sends
                # to it block soon.
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            conn = cls(stream)
            lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
            if cookie:
                lines.append(f"Cookie: {cookie}")
            if last_event_id is not None:
                lines.append(f"Last-Event-ID: {last_event_id}")
            await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
            await conn._read_head()
        return conn

    async def _fill(self) -> None:
        self._raw += await self.stream.receive()

    async def _read_head(self) -> None:
        while (end := self._raw.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self._raw[:end])
        del self._raw[: end + 4]
        status, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status.split(" ", 2)[1])
        for line in lines:
            name, _, value = line.partition(":")
            self.head[name.strip().lower()] = value.strip()

    async def _read_chunk(self) -> None:
        while (eol := self._raw.find(b"\r\n")) < 0:
            await self._fill()
        size = int(bytes(self._raw[:eol]).split(b";")[0], 16)
        need = eol + 2 + size + 2
        while len(self._raw) < need:
            await self._fill()
        self._text += self._raw[eol + 2 : eol + 2 + size].decode()
        del self._raw[:need]
        if size == 0:
            raise EOFError("the server ended the stream")

    async def next(self) -> Event:
        """The next event with data (a `retry:` line alone is skipped)."""
        while True:
            while "\n\n" not in self._text:
                await self._read_chunk()
            block, self._text = self._text.split("\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "data" in fields:
                return Event(fields.get("event", "message"), fields["data"], fields.get("id", ""))

    async def aclose(self) -> None:
        await self.stream.aclose()


class EventReader:
    """Reads envelopes off an SSE stream and keeps the newest fragment of each region."""

    def __init__(self, conn: RawStream) -> None:
        self.conn = conn
        self.regions: dict[str, tuple[int, str]] = {}
        self.ids: list[int] = []
        self.epochs: set[str] = set()

    async def next(self) -> tuple[Event, dict[str, Any]]:
        with anyio.fail_after(20):
            event = await self.conn.next()
        data = json.loads(event.data)
        if event.id:
            epoch, revision = parse_id(event.id)
            self.epochs.add(epoch)
            self.ids.append(revision)
        for rid, fragment in data.get("regions", {}).items():
            old = self.regions.get(rid)
            if old is None or fragment["rev"] > old[0]:
                self.regions[rid] = (fragment["rev"], fragment["html"])
        return event, data

    def html(self, region_id: str) -> str:
        return self.regions.get(region_id, (0, ""))[1]

    async def until(self, region_id: str, needle: str) -> None:
        """Read events until region `region_id` contains `needle`."""
        while needle not in self.html(region_id):
            await self.next()
