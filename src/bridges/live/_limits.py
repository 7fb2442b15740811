"""What a live app keeps in memory, and how fast a session may start work: `Limits`.

Every page a browser opens is a small actor on the server (its view, its regions, a task or two,
a few kilobytes), kept so that its stream, its commands and its next GET find it. Nothing a
client sends may make the server keep an unbounded number of them, or start an unbounded
number of runs: a script that GETs a page without a cookie gets a new session, hence a new
page, every time. The limits below bound both, with defaults meant for a small (2-core) server.
See docs/live/limits.md.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
"""A monotonic clock in seconds (`time.monotonic`; tests pass a fake one)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The memory and rate limits of a live app (`LiveApp(limits=...)`, `run_app(limits=...)`).

    - `connect_timeout`: a page that no stream (SSE or WebSocket) has connected to, and that no
      command was sent to, is dropped after this many seconds without a request: a GET by a
      crawler or a script costs memory only briefly. A browser with JavaScript connects within
      a second; one without JavaScript sends commands, which keep its page.
    - `page_ttl`: a page without connections is dropped after this many seconds without a
      request.
    - `max_pages`: pages kept in total. Opening one more drops the least recently used page:
      first one nobody connected to, then one without connections, then (only if every page
      has a stream) the least recently used connected page, whose streams end.
    - `pages_per_session`: pages kept per session (a tab per URL); one more drops the
      session's least recently used page without connections. Pages with connections (open
      tabs) are not dropped for this limit, only for `max_pages`.
    - `starts_per_minute`: runs one session may start per minute (the start page of
      `run_app`); one more is refused with `429 Too Many Requests` and `Retry-After`. Counted
      per server process.

    A dropped page is not an error for its client: the next request or stream for it mounts
    it again (its view reads its state again: a run page loses nothing), and a stream gets a
    full snapshot of the new page.
    """

    connect_timeout: float = 20.0
    page_ttl: float = 600.0
    max_pages: int = 2_000
    pages_per_session: int = 16
    starts_per_minute: int = 10

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "page_ttl"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Limits.{name} must be a positive number of seconds")
        for name in ("max_pages", "pages_per_session", "starts_per_minute"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"Limits.{name} must be a positive integer")


class RateLimit:
    """At most `limit` events per key within any `window` seconds (a sliding window).

    Memory stays bounded by the events of the last window: a key whose newest event is older
    than the window is forgotten (the keys are kept in order of their newest event, so the
    forgetting costs O(1) per key forgotten).
    """

    def __init__(self, limit: int, window: float = 60.0, *, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        # A list per key, not a deque: limits are small, and an empty deque costs ~0.6 KiB.
        self._events: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Count one event for `key` if the limit allows it (returns None), or return how many
        seconds to wait before it would (nothing is counted then). Check and count are one
        step with no await in between: two concurrent requests cannot both take the last one.
        """
        now = self.clock()
        self._forget(now - self.window)
        times = self._events.get(key)
        if times is None:
            times = self._events[key] = []
        expired = 0
        while expired < len(times) and times[expired] <= now - self.window:
            expired += 1
        del times[:expired]
        if len(times) >= self.limit:
            return max(times[0] + self.window - now, 0.001)
        times.append(now)
        self._events.move_to_end(key)
        return None

    def _forget(self, cutoff: float) -> None:
        while self._events:
            key, times = next(iter(self._events.items()))
            if times and times[-1] > cutoff:
                return
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)


def retry_after(seconds: float) -> str:
    """A `Retry-After` header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
