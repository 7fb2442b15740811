"""Live progress: task trees, progress bars and output of long durable runs, shared between
sessions, over a real uvicorn server and a real SQLite file."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from live_client import SECRET, LiveServer, RawStream, Visitor, form_key, region
from live_flows import Job, Prepared, gate, job, prepared

from bridges.live import TasksHub, progress_app

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]


@pytest.fixture
def gate_name() -> Iterator[str]:
    """A fresh gate, opened after the test whatever happens (so no worker thread is left)."""
    name = uuid.uuid4().hex
    yield name
    gate(name).set()


def make(serve: Serve, db_url: str, **options: Any) -> LiveServer:
    options.setdefault("settle", 0)
    return serve(
        progress_app(job, secret=SECRET, url=db_url, title="Jobs", start_input=Job, **options)
    )


async def test_progress_streams_to_its_final_value(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    """Progress and output stream over SSE while the work runs; the last value always
    arrives, and output lines come in sequence order."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start({"items": "300", "gate": gate_name})
        async with ada.stream(path) as events:
            await events.until("tasks", "Waiting")
            gate(gate_name).set()
            await events.until("status", "Finished.")
            await events.until("tasks", 'aria-valuenow="300')
            tasks = events.html("tasks")
            assert tasks.count('role="progressbar"') >= 1
            assert 'aria-valuemax="300' in tasks
            output = events.html("output")
            assert "000299" in output
            seqs = [int(s) for s in _seqs(output)]
            assert seqs == sorted(seqs)
            assert events.ids == sorted(events.ids)
        page = await ada.get(path)
        assert "Done" in region(page, "main")
        assert ">300<" in region(page, "main")


def _seqs(html: str) -> list[str]:
    return re.findall(r'data-seq="(\d+)"', html)


async def test_busy_page_refreshes_itself_without_javascript(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    """While work runs the page says so (busy button, status) and, for browsers without
    JavaScript, refreshes itself; once finished it stops refreshing."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start({"items": "5", "gate": gate_name})
        page = await ada.get(path)
        assert '<noscript><meta http-equiv="refresh"' in page
        assert "Working…" in region(page, "status")
        assert 'disabled aria-busy="true"' in region(page, "main")
        async with ada.stream(path) as events:
            await events.next()
            gate(gate_name).set()
            await events.until("status", "Finished.")
        page = await ada.get(path)
        assert "noscript" not in page


async def test_shared_run_is_seen_by_all_but_cancelled_only_by_its_owner(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    """Every session sees a shared run (with an owner flag); the cancel button shows only to
    the owner, whose cancel reaches every watcher."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada, Visitor(server.url) as bob:
        path = await ada.start({"items": "5", "gate": gate_name})
        index = await bob.get("/")
        assert path in index
        assert "(yours)" not in region(index, "runs")
        assert "(yours)" in region(await ada.get("/"), "runs")

        page = await bob.get(path)
        controls = region(page, "controls")
        assert "Cancel" not in controls
        assert "Started by someone else" in controls
        refused = await bob.post(path, "cancel", "cancel:x", live=True)
        assert refused.status_code == 422
        assert refused.json()["ok"] is False

        owner_page = await ada.get(path)
        assert "Cancel" in region(owner_page, "controls")
        async with bob.stream(path) as events:
            await events.next()
            key = form_key(region(owner_page, "controls"), "cancel")
            reply = await ada.post(path, "cancel", key, live=True)
            assert reply.json()["ok"] is True
            await events.until("status", "Cancelled.")
            await events.until("tasks", "cancelled")
            assert "Cancel" not in events.html("controls")
        again = await ada.post(path, "cancel", key, live=True)
        assert again.json()["duplicate"] is True


async def test_authorizer_may_cancel_shared_runs(serve: Serve, db_url: str, gate_name: str) -> None:
    """An authorizer lets a session that is not the owner cancel."""
    server = make(serve, db_url, authorize=lambda session, run: True)
    async with Visitor(server.url) as ada, Visitor(server.url) as admin:
        path = await ada.start({"items": "5", "gate": gate_name})
        page = await admin.get(path)
        key = form_key(region(page, "controls"), "cancel")
        async with admin.stream(path) as events:
            reply = await admin.post(path, "cancel", key)
            assert reply.status_code == 303
            await events.until("status", "Cancelled.")


async def test_start_form_validates_its_input(serve: Serve, db_url: str) -> None:
    """The start form is generated from its model; invalid input starts nothing."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        index = await ada.get("/")
        assert 'name="items"' in index
        assert 'min="1"' in index
        response = await ada.post("/", "start", form_key(index, "start"), {"items": "0"})
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        index = await ada.get("/")
        assert "greater than or equal to 1" in region(index, "start")
        assert "/runs/" not in region(index, "runs")


async def test_slow_client_does_not_stall_others(serve: Serve, db_url: str, gate_name: str) -> None:
    """A connection that stops reading (its socket buffers full) does not hold back the other
    connections of the same page; reconnecting, it gets the newest state at once."""
    server = make(serve, db_url, throttle=0.01)
    async with Visitor(server.url) as ada:
        path = await ada.start({"items": "3000", "width": "1500", "gate": gate_name})
        url = httpx.URL(server.url)
        slow = await RawStream.open(
            url.host, url.port or 80, path + "/_live/sse", ada.cookie, receive_buffer=4096
        )
        try:
            async with ada.stream(path) as events:
                await events.next()
                gate(gate_name).set()
                # Megabytes of patches go out while `slow` reads nothing.
                await events.until("status", "Finished.")
                assert len(events.ids) > 2
        finally:
            await slow.aclose()
        async with ada.stream(path) as events:
            event, data = await events.next()
            assert event.event == "snapshot"
            assert "Finished." in data["regions"]["status"]["html"]
            assert "002999" in data["regions"]["output"]["html"]


async def test_work_cut_off_by_a_restart_is_recovered(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    """A run mid-step when the server stops is continued by the next server (recovered in
    the background at start-up) and its page follows it to the end."""
    first = make(serve, db_url)
    async with Visitor(first.url) as ada:
        path = await ada.start({"items": "20", "gate": gate_name})
        async with ada.stream(path) as events:
            await events.until("tasks", "Waiting")
        first.stop()

        second = make(serve, db_url)
        ada.http.base_url = httpx.URL(second.url)
        async with ada.stream(path) as events:
            _, snapshot = await events.next()
            assert "Working…" in snapshot["regions"]["status"]["html"]
            gate(gate_name).set()
            await events.until("status", "Finished.")
        page = await ada.get(path)
        assert ">20<" in region(page, "main")


def _run_id(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def test_tree_root_follows_a_failed_or_cancelled_run(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    """The root of a run's task tree is the run: once the run failed or was cancelled, the
    root says so, in the tasks hub and on the page (it used to stay `running`)."""
    hub = TasksHub()
    server = serve(
        progress_app(prepared, secret=SECRET, url=db_url, start_input=Prepared, hub=hub, settle=0)
    )
    async with Visitor(server.url) as ada:
        path = await ada.start({"gate": gate_name})
        async with ada.stream(path) as events:
            await events.until("tasks", "Prepare")
            gate(gate_name).set()
            await events.until("status", "Failed.")
            await events.until("tasks", 'data-status="failed"')
        tree = hub.latest(_run_id(path))
        assert tree is not None
        assert (tree.root.status, tree.root.error) == ("failed", "ValueError: no luck")
        assert [n.status for n in tree.nodes[1:]] == ["completed"]

    other = make(serve, db_url.replace("runs.db", "jobs.db"), hub=(jobs := TasksHub()))
    cancel_gate = gate_name + "-cancel"
    try:
        async with Visitor(other.url) as ada:
            path = await ada.start({"items": "5", "gate": cancel_gate})
            page = await ada.get(path)
            async with ada.stream(path) as events:
                await events.until("tasks", "Waiting")
                key = form_key(region(page, "controls"), "cancel")
                assert (await ada.post(path, "cancel", key, live=True)).json()["ok"]
                await events.until("tasks", 'data-status="cancelled"')
            tree = jobs.latest(_run_id(path))
            assert tree is not None
            assert [n.status for n in tree.nodes] == ["cancelled", "cancelled"]
    finally:
        gate(cancel_gate).set()


@pytest.mark.parametrize("then", ["fail", "ask"])
async def test_a_recovered_run_shows_its_tree(
    serve: Serve, db_url: str, gate_name: str, then: str
) -> None:
    """A run continued by the next server process shows the task tree rebuilt by replay, even
    when the continued step fails or asks a question without any task effect of its own."""
    options = {"secret": SECRET, "url": db_url, "start_input": Prepared, "settle": 0}
    first = serve(progress_app(prepared, **options))
    async with Visitor(first.url) as ada:
        path = await ada.start({"gate": gate_name, "then": then})
        async with ada.stream(path) as events:
            await events.until("output", "prepared")
        first.stop()

        hub = TasksHub()
        second = serve(progress_app(prepared, hub=hub, **options))
        ada.http.base_url = httpx.URL(second.url)
        async with ada.stream(path) as events:
            await events.next()
            gate(gate_name).set()
            await events.until("status", "Failed." if then == "fail" else "Waiting for")
            await events.until("tasks", "Prepare")
            await events.until("output", "prepared")
        tree = hub.latest(_run_id(path))
        assert tree is not None
        assert [(n.title, n.status) for n in tree.nodes[1:]] == [("Prepare", "completed")]
        assert tree.root.status == ("failed" if then == "fail" else "running")
        page = await ada.get(path)
        assert "Prepare" in region(page, "tasks")


async def test_a_finished_run_shows_its_tree_and_output_after_a_restart(
    serve: Serve, db_url: str
) -> None:
    """The page of a run that finished before the server restarted shows its task tree and
    output, read from the store (the new process never ran it)."""
    first = make(serve, db_url)
    async with Visitor(first.url) as ada:
        path = await ada.start({"items": "30"})
        async with ada.stream(path) as events:
            await events.until("status", "Finished.")
        first.stop()
        second = make(serve, db_url, hub=(hub := TasksHub()))
        ada.http.base_url = httpx.URL(second.url)
        page = await ada.get(path)
    assert hub.latest(_run_id(path)) is None  # not from this process's memory
    tasks, output = region(page, "tasks"), region(page, "output")
    assert "Crunch" in tasks
    assert 'data-status="completed"' in tasks
    assert 'aria-valuenow="30' in tasks
    assert "000000 " in output
    assert "000029 " in output


async def test_a_page_follows_a_run_executing_in_another_server(
    serve: Serve, pg_database_url: str, gate_name: str
) -> None:
    """Two servers on one PostgreSQL database: a run started (and executed) on server B is
    watched on server A, whose page shows its tree and output live — through the store and
    NOTIFY, as A's process never runs it — to the end."""
    a, b = make(serve, pg_database_url), make(serve, pg_database_url)
    async with Visitor(b.url) as ada, Visitor(a.url) as bob:
        path = await ada.start({"items": "40", "gate": gate_name})
        page = await bob.get(path)
        assert "Started by someone else" in page
        with anyio.fail_after(30):
            await follow_to_the_end(bob, path, gate_name)


async def follow_to_the_end(bob: Visitor, path: str, gate_name: str) -> None:
    """Watch the run page: the task at the gate and its output, then the run to the end."""
    async with bob.stream(path) as events:
        await events.until("tasks", "Waiting")
        await events.until("output", f"waiting at {gate_name}")
        gate(gate_name).set()
        await events.until("status", "Finished.")
        await events.until("output", "000039 ")
        await events.until("tasks", 'aria-valuenow="40')
        assert 'data-status="completed"' in events.html("tasks")
