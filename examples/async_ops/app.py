"""An async operation on a live page: loading, then success or error.

    python examples/async_ops/app.py                  # http://127.0.0.1:8000
    python examples/async_ops/app.py --latency 3      # a slower "server"

The fetch is a computation: it waits (`Clock.sleep`) and fails about one time in three
(`Random`), so the same code runs in a test with a fixed clock and seeded random numbers. The
page is a `LiveView` of its own: while a fetch is loading its button is disabled, and a second
click (or a second POST) is ignored.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import uvicorn
from starlette.applications import Starlette

from bridges.live import Event, LiveApp, LiveView, Page, Reply
from effects import Clock, Random, arun

HERE = Path(__file__).resolve().parent

QUOTES = (
    "Simple is better than complex.",
    "Errors should never pass silently.",
    "Now is better than never.",
    "In the face of ambiguity, refuse the temptation to guess.",
    "If the implementation is hard to explain, it's a bad idea.",
)


class FetchFailed(Exception):
    """The (simulated) server did not answer."""


def fetch_quote(latency: float) -> Generator[Any, Any, str]:
    """A slow and unreliable fetch: about one call in three fails."""
    yield Clock.sleep(latency)
    if (yield Random.random()) < 1 / 3:
        raise FetchFailed("The quote server did not answer. Try again.")
    quote: str = yield Random.choice(QUOTES)
    return quote


@dataclass(frozen=True)
class Fetched:
    """The end of fetch number `number`: a quote or an error."""

    number: int
    quote: str = ""
    error: str = ""


class QuoteView(LiveView):
    """One page per session: `idle` -> `loading` -> `success` | `error` -> `loading` ..."""

    region_attrs: ClassVar[Mapping[str, Mapping[str, str]]] = {
        "status": {"role": "status", "aria-live": "polite"},
    }

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.state: Literal["idle", "loading", "success", "error"] = "idle"
        self.quote = ""
        self.error = ""
        self.fetches = 0

    async def handle_event(self, event: Event, page: Page) -> Reply | None:
        if event.name != "fetch":
            return await super().handle_event(event, page)
        if self.state == "loading":
            # A second click while loading: nothing happens (and its key stays unused).
            return Reply(duplicate=True)
        self.state = "loading"
        self.fetches += 1
        page.spawn(self.fetch, page, self.fetches)
        return None

    async def fetch(self, page: Page, number: int) -> None:
        """Run the fetch in the page's task group and report back as a message."""
        try:
            quote = await arun(fetch_quote(self.latency), Random(), Clock())
        except FetchFailed as err:
            page.send_info(Fetched(number, error=str(err)), urgent=True)
        else:
            page.send_info(Fetched(number, quote=quote), urgent=True)

    async def handle_info(self, message: Any, page: Page) -> None:
        if isinstance(message, Fetched) and message.number == self.fetches:
            self.state = "error" if message.error else "success"
            self.quote, self.error = message.quote, message.error

    def busy(self, page: Page) -> bool:
        return self.state == "loading"

    def render(self, page: Page) -> Mapping[str, str]:
        return {
            "status": page.render_template("status.html"),
            "main": page.render_template("quote.html", key=f"fetch:{self.fetches}"),
        }


def build(latency: float = 1.0, secret: str | None = None) -> Starlette:
    """The app: one page at `/`."""
    live = LiveApp(
        secret=secret or os.environ.get("LIVE_SECRET") or secrets.token_urlsafe(32),
        title="Async operations",
        template_dirs=[HERE / "templates"],
    )
    live.page("/", lambda: QuoteView(latency))
    return live.build()


def main() -> None:
    parser = argparse.ArgumentParser(description="Loading, success and error states.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--latency", type=float, default=1.0, help="seconds a fetch takes")
    args = parser.parse_args()
    print(f"Async operations: http://127.0.0.1:{args.port}", flush=True)
    uvicorn.run(
        build(args.latency),
        host="127.0.0.1",
        port=args.port,
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
