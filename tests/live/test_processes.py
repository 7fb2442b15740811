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

from bridges.live import run_app, wizard_app
from effects import ConflictError

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


async def test_an_answer_meeting_the_previous_step_still_finishing_is_taken(
    serve: Serve, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's page shows a step as soon as its suspension is committed, possibly
    before the process that ran the step has put it away; an answer posted to that process
    then meets a busy run (`ConflictError`) although nobody answered the step. The page tries
    again instead of dropping the answer as stale. (The race is simulated: the runner's first
    resume raises what it raises in that window.)"""
    live = run_app(signup, secret=SECRET, url=db_url)
    server = serve(live.build())
    async with Visitor(server.url) as visitor:
        path = await visitor.start()
        await visitor.get(path)
        runner = live.state["runs"].the_runner()
        real = runner.resume
        calls: list[str] = []

        async def busy_once(run_id: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(run_id)
            if len(calls) == 1:
                raise ConflictError(f"cannot resume run {run_id!r}: a step is running")
            return await real(run_id, *args, **kwargs)

        monkeypatch.setattr(runner, "resume", busy_once)
        await visitor.answer(path, {"name": "Ada", "age": "36"})
        await shows(visitor, path, "Choose a plan")
        assert len(calls) == 2
