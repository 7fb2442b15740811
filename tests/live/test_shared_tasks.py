"""Per-task sharing (aprot): a shared task of a private run has a page every session may
watch, showing that task and its sub-tasks and nothing else of the run."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from live_client import SECRET, LiveServer, Visitor, region
from live_flows import gate, wait_gate
from pydantic import BaseModel

from bridges.live import progress_app
from effects import Call, Print, computation, task

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]


class Build(BaseModel):
    """The start form."""

    gate: str = ""


@computation(name="live_tests.shared_sub", version=1)
def build(gate: str = "") -> Generator[Any, Any, str]:
    yield from task("Secret preparation", _secret())
    yield from task("Public build", _public(gate), shared=True)
    return "built with secret 1234"


def _secret() -> Generator[Any, Any, None]:
    yield Print("secret token 1234")


def _public(gate: str) -> Generator[Any, Any, None]:
    yield Print("compiling")
    yield from task("Link", _link())
    if gate:
        yield Call(wait_gate, gate)
    yield Print("build ok")


def _link() -> Generator[Any, Any, None]:
    yield Print("linking")


@pytest.fixture
def gate_name() -> Iterator[str]:
    name = uuid.uuid4().hex
    yield name
    gate(name).set()


async def test_a_shared_task_of_a_private_run_is_watched_live_by_others(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    server = serve(
        progress_app(build, secret=SECRET, url=db_url, shared=False, start_input=Build, settle=0)
    )
    async with Visitor(server.url) as ada, Visitor(server.url) as bob:
        path = await ada.start({"gate": gate_name})
        async with ada.stream(path) as events:
            await events.until("output", "linking")
        await bob.get(path, expect=404)  # the run is private
        shared = f"{path}/tasks/2"  # node 1: Secret preparation, 2: Public build, 3: Link
        page = await bob.get(shared)
        assert "<title>Public build" in page
        tasks, output = region(page, "tasks"), region(page, "output")
        assert "Public build" in tasks
        assert "Link" in tasks
        assert "compiling" in output
        assert "linking" in output
        for secret in ("Secret preparation", "secret token 1234", "built with"):
            assert secret not in page
        # Live: Bob's stream follows the shared task to its end.
        async with bob.stream(shared) as events:
            gate(gate_name).set()
            await events.until("output", "build ok")
            await events.until("status", "Finished.")
        final = await bob.get(shared)
        assert "secret" not in final.lower()
        # A sub-task of a shared task is shared with it; a private task is not.
        assert "Link" in region(await bob.get(f"{path}/tasks/3"), "tasks")
        await bob.get(f"{path}/tasks/1", expect=404)
        # The owner sees every task.
        assert "secret token 1234" in region(await ada.get(f"{path}/tasks/1"), "output")


async def test_task_pages_that_do_not_exist_are_404(serve: Serve, db_url: str) -> None:
    server = serve(
        progress_app(build, secret=SECRET, url=db_url, shared=False, start_input=Build, settle=0)
    )
    async with Visitor(server.url) as ada:
        path = await ada.start({})
        async with ada.stream(path) as events:
            await events.until("status", "Finished.")
        for task_id in ("0", "4", "-1", "x", "99999999999999", "2.0", "%00"):
            await ada.get(f"{path}/tasks/{task_id}", expect=404)
        await ada.get("/runs/no-such-run/tasks/2", expect=404)
