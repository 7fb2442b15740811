"""The per-connection outbox and the Server-Sent Events wire format.

A connection does not queue messages: it remembers *which regions changed* since it last sent
(a set bounded by the number of regions) and, when it gets to send, reads their newest HTML.
A slow client therefore skips intermediate states instead of falling behind, and the page that
publishes never waits for any client.
"""

from __future__ import annotations

import json
import math
from typing import Any

import anyio


class Connection:
    """One open stream (SSE or WebSocket) of a page: the set of regions it has yet to send."""

    __slots__ = ("_dirty", "_wake", "closed")

    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._wake = anyio.Event()
        self.closed = False

    def mark(self, region_ids: list[str]) -> None:
        """Note that `region_ids` changed; never blocks."""
        self._dirty.update(region_ids)
        self._wake.set()

    def close(self) -> None:
        """Wake the sender so that it notices the connection is closed."""
        self.closed = True
        self._wake.set()

    async def changes(self, idle: float) -> set[str] | None:
        """Wait for changed regions; returns their ids, or None after `idle` seconds without
        any (time for a heartbeat)."""
        if not self._dirty and not self.closed:
            with anyio.move_on_after(idle if idle > 0 else math.inf):
                await self._wake.wait()
        self._wake = anyio.Event()
        ids, self._dirty = self._dirty, set()
        return ids or None


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One Server-Sent Event: optional `id:` line, `event:` line and a one-line JSON `data:`."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body}\n\n".encode()
