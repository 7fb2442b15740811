"""Two server processes' worth of live apps on one store: any of them serves any request.

Each app has its own `DurableRunner`, pages and memory, as two processes behind a load
balancer would. They share a SQLite file, whose runners do not notify each other: what one
app's pages know of a change made through the other comes from the store alone, so these
tests show what is derived from the store and the signed session rather than kept in memory.
(The same with PostgreSQL's notifications, real processes and nginx: tests/e2e/test_cluster.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from live_client import SECRET, LiveServer, Visitor, form_key
from live_flows import signup

from bridges.live import wizard_app

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]


def two(serve: Serve, db_url: str) -> tuple[LiveServer, LiveServer]:
    """Two apps on one store, one secret (sessions and CSRF tokens valid on both)."""
    return (
        serve(wizard_app(signup, secret=SECRET, url=db_url, owner="one")),
        serve(wizard_app(signup, secret=SECRET, url=db_url, owner="two")),
    )


async def shows(visitor: Visitor, path: str, text: str) -> str:
    """The page at `path` once its main region shows `text`, waited for on the page's stream
    (a POST without JavaScript waits for its step only so long: on a loaded machine the step
    may still be running when the 303 comes)."""
    with anyio.fail_after(10):
        async with visitor.stream(path) as events:
            await events.until("main", text)
    return await visitor.get(path)


def same_session(visitor: Visitor, other: Visitor) -> None:
    other.http.cookies = visitor.http.cookies
    other.csrf = visitor.csrf


async def test_an_answer_to_a_process_whose_page_is_behind(serve: Serve, db_url: str) -> None:
    """The page on process one still shows step 1 when step 2's form (rendered by process
    two, which took step 1's answer) is posted to it: it reads the run from the store and
    takes the answer, instead of calling it a stale step."""
    one, two_ = two(serve, db_url)
    async with Visitor(one.url) as a, Visitor(two_.url) as b:
        path = await a.start()
        await a.get(path)  # process one's page: step 1
        same_session(a, b)
        await b.answer(path, {"name": "Ada", "age": "36"})  # through process two
        # (Each waits on the stream of the process that ran the step: on SQLite a runner
        # hears only of its own changes.)
        page = await shows(b, path, "Choose a plan")
        response = await a.post(path, "answer", form_key(page, "answer"), {"plan": "pro"})
        assert response.status_code == 303
        await shows(a, path, "Ada (36) on pro")


async def test_a_start_repeated_on_another_process_starts_one_run(
    serve: Serve, db_url: str
) -> None:
    """The start form posted to one process and again (same key) to the other: one run,
    both answers lead to it."""
    one, two_ = two(serve, db_url)
    async with Visitor(one.url) as a, Visitor(two_.url) as b:
        index = await a.get("/")
        key = form_key(index, "start")
        first = await a.post("/", "start", key)
        same_session(a, b)
        again = await b.post("/", "start", key)
        assert first.status_code == again.status_code == 303
        assert first.headers["location"] == again.headers["location"]
        listed = await b.get("/")
        assert listed.count('href="/runs/') == 1
        # A new form (a new key) starts a new run, on either process.
        third = await b.post("/", "start", form_key(listed, "start"))
        assert third.headers["location"] != first.headers["location"]
        # A form rendered by process two, posted to process one: two did not see that
        # start, and its next render must not offer the used key again.
        key = form_key(await b.get("/"), "start")
        fourth = await a.post("/", "start", key)
        assert fourth.headers["location"] not in (
            first.headers["location"],
            third.headers["location"],
        )
        assert form_key(await b.get("/"), "start") != key
