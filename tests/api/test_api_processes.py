"""The JSON API on two server processes sharing one PostgreSQL database: a run started on one
is followed on the other (its stream woken by LISTEN/NOTIFY) and answered through both."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from flows import Events, bearer, events
from servers import WizardApiServer

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture
def two(pg_database_url: str) -> Iterator[tuple[WizardApiServer, WizardApiServer]]:
    servers = [
        WizardApiServer("--url", pg_database_url, "--owner", name) for name in ("one", "two")
    ]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


async def step(stream: Events, title: str) -> dict[str, object]:
    """The run once the stream shows it suspended at the step titled `title`."""
    with anyio.fail_after(20):
        while True:
            event = await stream.next()
            run = event.data.get("run")
            if isinstance(run, dict) and run["status"] == "suspended":
                assert isinstance(run["prompt"], dict)
                if run["prompt"]["title"] == title:
                    return run


async def test_a_run_followed_and_answered_across_processes(
    two: tuple[WizardApiServer, WizardApiServer],
) -> None:
    one, other = two
    async with bearer(one.url, "ada") as on_one, bearer(other.url, "ada") as on_other:
        started = await on_one.post("/runs", json={"computation": "onboarding", "key": "k1"})
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        again = await on_other.post("/runs", json={"computation": "onboarding", "key": "k1"})
        assert (again.status_code, again.json()["id"]) == (200, run_id)

        async with events(on_other, run_id) as stream:
            run = await step(stream, "Welcome! What is your name?")
            assert run["prompt"]["input_name"] == "Name"  # type: ignore[index]
            answer = {"revision": run["revision"], "value": {"name": "Ada"}}
            assert (await on_one.post(f"/runs/{run_id}/answer", json=answer)).status_code == 202

            run = await step(stream, "Hello Ada! What is your email address?")
            bad = {"revision": run["revision"], "value": {"email": "nope"}}
            refused = await on_one.post(f"/runs/{run_id}/answer", json=bad)
            assert refused.status_code == 422
            assert refused.json()["errors"][0]["loc"] == ["email"]
            answer = {"revision": run["revision"], "value": {"email": "ada@example.com"}}
            assert (await on_other.post(f"/runs/{run_id}/answer", json=answer)).status_code == 202

            run = await step(stream, "Choose a plan")
            answer = {"revision": run["revision"], "value": {"plan": "pro"}}
            assert (await on_one.post(f"/runs/{run_id}/answer", json=answer)).status_code == 202
            with anyio.fail_after(20):
                end = await stream.until(lambda e: e.event == "end")
        result = end.data["run"]["result"]
        assert (result["name"], result["email"], result["plan"]) == (
            "Ada",
            "ada@example.com",
            "pro",
        )
        assert (await on_one.get(f"/runs/{run_id}")).json()["status"] == "done"
    async with bearer(other.url, "bob") as bob:
        assert (await bob.get(f"/runs/{run_id}")).status_code == 404
