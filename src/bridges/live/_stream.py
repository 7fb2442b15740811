"""The per-connection outbox and the Server-Sent Events wire format.

A connection does not queue messages: it remembers *which regions changed* since it last sent
(a set bounded by the number of regions) and, when it gets to send, reads their newest HTML.
A slow client therefore skips intermediate states instead of falling behind, and the page that
publishes never waits for any client.

An open stream is served by one task, the server's task for that request: it waits for the
client (`receive()`: a disconnect, a WebSocket frame) inside a cancel scope, and a change of
the page wakes it by cancelling that scope. No second task listens for the disconnect, and no
event is kept per connection (a stream costs what the server's request costs, plus this
object).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio


class Wake:
    """What `Connection.next` returns when it was not the client that spoke."""

    __slots__ = ("ids",)

    def __init__(self, ids: set[str] | None) -> None:
        self.ids = ids


PING = Wake(None)
"""Nothing changed for `idle` seconds: time for a heartbeat."""

CLOSED = Wake(None)
"""The page closed the connection (it was dropped, or started a new epoch)."""


class Connection:
    """One open stream (SSE or WebSocket) of a page: the set of regions it has yet to send,
    and the cancel scope its task waits in (cancelled to wake it)."""

    __slots__ = ("_dirty", "_waiting", "closed")

    def __init__(self) -> None:
        self._dirty: set[str] | None = None
        self._waiting: anyio.CancelScope | None = None
        self.closed = False

    def mark(self, region_ids: Iterable[str]) -> None:
        """Note that `region_ids` changed; never blocks."""
        if self._dirty is None:
            self._dirty = set(region_ids)
        else:
            self._dirty.update(region_ids)
        self._wake()

    def close(self) -> None:
        """Wake the sender so that it notices the connection is closed."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()

    async def next(self, receive: Callable[[], Awaitable[Any]], idle: float) -> Any:
        """Wait for whatever comes first: changed regions (a `Wake` with their ids), `CLOSED`,
        `PING` after `idle` seconds without a change, or a message from the client (what
        `receive()` returned, as is). A message that arrives as the connection is woken is
        not lost: the scope is only left by the cancellation while `receive()` still waits,
        and a cancelled `receive()` has consumed nothing (ASGI servers' receive is a queue or
        an event)."""
        if not self._dirty and not self.closed:
            deadline = anyio.current_time() + idle if idle > 0 else math.inf
            with anyio.CancelScope(deadline=deadline) as scope:
                self._waiting = scope
                try:
                    return await receive()
                finally:
                    self._waiting = None
        if self.closed:
            return CLOSED
        ids, self._dirty = self._dirty, None
        return Wake(ids) if ids else PING


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One Server-Sent Event: optional `id:` line, `event:` line and a one-line JSON `data:`."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body}\n\n".encode()
