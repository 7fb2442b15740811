"""Helpers of the hostile-input tests: an ASGI wrapper that records every exception escaping
the app (what uvicorn would log as "Exception in ASGI application"), a WebSocket opened the way
the page's script opens it, and the durable state of a run as stored in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from live_client import LiveServer, Visitor
from websockets.asyncio.client import ClientConnection, connect


class Guarded:
    """Wraps an ASGI app and keeps the exceptions that escape it (cancellation, a
    BaseException, is how a server stops a request and is not one)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.errors: list[Exception] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as err:
            self.errors.append(err)
            raise


@asynccontextmanager
async def websocket(
    server: LiveServer, visitor: Visitor, path: str
) -> AsyncIterator[ClientConnection]:
    """The page's WebSocket with the visitor's cookie and the page's own Origin (asyncio)."""
    url = f"ws://127.0.0.1:{server.port}{path.rstrip('/')}/_live/ws"
    headers = {"Cookie": visitor.cookie}
    async with connect(url, origin=server.url, additional_headers=headers) as ws:  # type: ignore[arg-type]
        yield ws


async def receive(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next envelope of type `kind` (patches and pings in between are skipped)."""
    with anyio.fail_after(20):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]


def run_state(db_url: str, run_id: str) -> tuple[Any, ...]:
    """Everything stored about a run: its row and its log."""
    path = db_url.split(":///", 1)[1]
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT * FROM effects_runs WHERE id = ?", (run_id,)).fetchone()
        entries = db.execute(
            "SELECT seq, entry FROM effects_log WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    assert row is not None
    return (tuple(row), tuple(entries))
