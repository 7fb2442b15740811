"""Computations and an app of the JSON API's tests, and a small client reading its streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.routing import Mount

from bridges.api import ApiComputation, api_app
from bridges.live import run_app
from effects import Output, Progress, Yield, computation, task

SECRET = "test-secret-of-the-json-api-0123456789"


class Plan(BaseModel):
    """The step's answer."""

    plan: Literal["free", "pro"]
    seats: int = Field(default=1, ge=1, le=100)


class Account(BaseModel):
    """The result."""

    user: str
    plan: str
    seats: int


def _load(n: int) -> Generator[Any, Any, None]:
    for i in range(n):
        yield Progress(i + 1, n)
    yield Output(f"loaded {n} items")


@computation(name="api_signup", version=1)
def signup(user: str, items: int = 3) -> Generator[Any, Any, Account]:
    """Load some items (a task with progress and output), ask for a plan, return an account."""
    yield from task("Load", _load(items))
    choice: Plan = yield Yield({"title": f"Plan for {user}?", "submit": "Sign up"}, input=Plan)
    return Account(user=user, plan=choice.plan, seats=choice.seats)


def tokens(token: str) -> str | None:
    """Test tokens: `token-<user>` is user `<user>`."""
    user = token.removeprefix("token-")
    return user if user != token and user.isalnum() else None


def build(url: str, *, queue: str | None = None, **api: Any) -> Starlette:
    """Pages at / and the JSON API at /api (cookies and bearer tokens) over one runner;
    with `queue`, the API enqueues runs on it instead of starting them."""
    live = run_app(signup, secret=SECRET, url=url, lease=5.0)
    options: dict[str, Any] = {"bearer": tokens, **api}
    spec = ApiComputation(signup, prompts=[Plan], queue=queue)
    live.route(
        Mount(
            "/api",
            app=api_app(
                live.state["runs"].the_runner, computations=[spec], secret=SECRET, **options
            ),
        )
    )
    return live.build()


def bearer(base_url: str, user: str) -> httpx.AsyncClient:
    """An API client authenticated as `user`."""
    return httpx.AsyncClient(
        base_url=base_url + "/api", headers={"Authorization": f"Bearer token-{user}"}, timeout=30
    )


@dataclass
class Event:
    """One Server-Sent Event: its name, id and JSON data."""

    event: str
    id: str | None
    data: dict[str, Any]


class Events:
    """Reads the events of an open stream, one at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> Event:
        name, event_id, data = "message", None, ""
        async for line in self._lines:
            if line == "":
                if data:
                    return Event(name, event_id, json.loads(data))
                name, event_id = "message", None
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data += value
        raise EOFError("the stream ended")

    async def aclose(self) -> None:
        """Close the line reader (an unfinished async generator must not be left to the GC)."""
        await self._lines.aclose()  # type: ignore[attr-defined]

    async def until(self, predicate: Any) -> Event:
        """The next event for which `predicate(event)` holds (pings and others skipped)."""
        while True:
            event = await self.next()
            if predicate(event):
                return event


@asynccontextmanager
async def events(
    client: httpx.AsyncClient, run_id: str, last_event_id: str | None = None
) -> AsyncIterator[Events]:
    """The run's event stream."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = Events(response)
        try:
            yield reader
        finally:
            await reader.aclose()
