"""The JSON API on a real uvicorn server: start, list, get, answer, cancel and the event stream,
for bearer-token callers and for the pages' session cookie (with its CSRF rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flows import SECRET, bearer, build, events
from live_client import LiveServer

# The server runs on its own asyncio loop in a thread; the client side needs no trio run (and
# httpx's nested stream generators are only finalized promptly by asyncio's hooks).
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

Serve = Callable[[Any], LiveServer]


async def started(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/runs", json={"computation": "api_signup", "input": {"user": "ada"}, **body}
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


async def suspended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run once its first step is over (read from its event stream)."""
    async with events(client, run_id) as stream:
        # Run-carrying events only: a `tasks` event may come first.
        event = await stream.until(
            lambda e: "run" in e.data and e.data["run"]["status"] != "running"
        )
    run: dict[str, Any] = event.data["run"]
    return run


async def test_a_run_through_the_api(serve: Serve, db_url: str) -> None:
    """Start, follow (snapshot, tree with progress and output, prompt with its schema), answer
    badly (422 with pydantic's errors, nothing changes), answer, and the stream ends done."""
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as api:
        listed = (await api.get("/computations")).json()["computations"]
        assert [c["name"] for c in listed] == ["api_signup"]
        assert listed[0]["input"]["required"] == ["user"]
        assert listed[0]["prompts"]["Plan"]["title"] == "Plan"

        run = await started(api)
        assert run["computation"] == "api_signup"
        assert run["args"] == {"user": "ada", "items": 3}
        async with events(api, run["id"]) as stream:
            first = await stream.next()
            assert first.event == "snapshot"
            assert first.data["run"]["id"] == run["id"]
            waiting = first
            while waiting.data["run"]["status"] == "running":
                waiting = await stream.until(lambda e: e.event == "run")
            prompt = waiting.data["run"]["prompt"]
            assert prompt["title"] == "Plan for ada?"
            assert prompt["submit"] == "Sign up"
            assert prompt["input_name"] == "Plan"
            assert prompt["input"]["properties"]["plan"]["enum"] == ["free", "pro"]

            revision = waiting.data["run"]["revision"]
            bad = await api.post(
                f"/runs/{run['id']}/answer",
                json={"revision": revision, "value": {"plan": "gold", "seats": 0}},
            )
            assert bad.status_code == 422, bad.text
            locs = sorted(tuple(e["loc"]) for e in bad.json()["errors"])
            assert locs == [("plan",), ("seats",)]
            same = (await api.get(f"/runs/{run['id']}")).json()
            assert (same["status"], same["revision"]) == ("suspended", revision)

            good = await api.post(
                f"/runs/{run['id']}/answer",
                json={"revision": revision, "value": {"plan": "pro", "seats": 3}},
            )
            assert good.status_code == 202, good.text
            end = await stream.until(lambda e: e.event == "end")
        done = end.data["run"]
        assert done["status"] == "done"
        assert done["result"] == {"user": "ada", "plan": "pro", "seats": 3}

        async with events(api, run["id"]) as again:
            snapshot = await again.next()
            tree = snapshot.data["tasks"]
            load = next(n for n in tree["nodes"] if n["title"] == "Load")
            assert (load["current"], load["total"], load["status"]) == (3, 3, "completed")
            assert [line["text"] for line in load["lines"]] == ["loaded 3 items"]
            assert (await again.next()).event == "end"


async def test_a_stale_answer_is_a_409_and_changes_nothing(serve: Serve, db_url: str) -> None:
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as api:
        run = await suspended(api, (await started(api))["id"])
        revision = run["revision"]
        stale = await api.post(
            f"/runs/{run['id']}/answer", json={"revision": revision - 1, "value": {"plan": "pro"}}
        )
        assert stale.status_code == 409
        assert stale.json()["error"] == "stale"
        assert stale.json()["run"]["revision"] == revision
        ok = await api.post(
            f"/runs/{run['id']}/answer", json={"revision": revision, "value": {"plan": "free"}}
        )
        assert ok.status_code == 202
        twice = await api.post(
            f"/runs/{run['id']}/answer", json={"revision": revision, "value": {"plan": "pro"}}
        )
        assert twice.status_code == 409
        final = await suspended(api, run["id"])
        assert final["result"]["plan"] == "free"


async def test_other_users_runs_are_404(serve: Serve, db_url: str) -> None:
    """Bob cannot read, follow, answer or cancel Ada's run, nor see it listed; to him it does
    not exist. Unknown ids are 404 too, and nobody gets in without credentials."""
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as ada, bearer(server.url, "bob") as bob:
        run = await suspended(ada, (await started(ada))["id"])
        rid = run["id"]
        assert (await bob.get(f"/runs/{rid}")).status_code == 404
        assert (await bob.get(f"/runs/{rid}/events")).status_code == 404
        answer = {"revision": run["revision"], "value": {"plan": "pro"}}
        assert (await bob.post(f"/runs/{rid}/answer", json=answer)).status_code == 404
        assert (await bob.post(f"/runs/{rid}/cancel")).status_code == 404
        assert (await bob.get("/runs")).json() == {"runs": []}
        assert (await ada.get("/runs/nope.nope")).status_code == 404
        assert [r["id"] for r in (await ada.get("/runs")).json()["runs"]] == [rid]
        assert (await ada.get(f"/runs/{rid}")).json()["status"] == "suspended"

        async with httpx.AsyncClient(base_url=server.url + "/api") as anonymous:
            assert (await anonymous.get("/runs")).status_code == 401
            assert (await anonymous.get(f"/runs/{rid}")).status_code == 401
        forged = {"Authorization": "Bearer nope"}
        assert (await ada.get("/runs", headers=forged)).status_code == 401


async def test_the_list_reads_the_callers_runs_newest_first(serve: Serve, db_url: str) -> None:
    """`GET /runs` reads only the caller's runs (by their id prefix, in the store), newest
    first, `limit` of them, whatever other callers started since."""
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as ada, bearer(server.url, "bob") as bob:
        mine = [(await started(ada))["id"] for _ in range(3)]
        theirs = [(await started(bob))["id"] for _ in range(4)]
        listed = (await ada.get("/runs?limit=2")).json()["runs"]
        assert [r["id"] for r in listed] == mine[::-1][:2]
        listed = (await bob.get("/runs?computation=api_signup")).json()["runs"]
        assert [r["id"] for r in listed] == theirs[::-1]
        assert (await bob.get("/runs?computation=nope")).json() == {"runs": []}


async def test_a_repeated_key_starts_one_run(serve: Serve, db_url: str) -> None:
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as api:
        first = await started(api, key="signup-1")
        again = await api.post(
            "/runs",
            json={"computation": "api_signup", "input": {"user": "ada"}, "key": "signup-1"},
        )
        assert again.status_code == 200
        assert again.json()["id"] == first["id"]
        other = await started(api, key="signup-2")
        assert other["id"] != first["id"]
        assert len((await api.get("/runs")).json()["runs"]) == 2


async def test_cancel(serve: Serve, db_url: str) -> None:
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as api:
        run = await suspended(api, (await started(api))["id"])
        async with events(api, run["id"]) as stream:
            await stream.next()
            response = await api.post(f"/runs/{run['id']}/cancel", json={"reason": "changed mind"})
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"
            end = await stream.until(lambda e: e.event == "end")
        assert end.data["run"]["status"] == "cancelled"
        again = await api.post(f"/runs/{run['id']}/cancel")
        assert again.json()["status"] == "cancelled"


async def test_start_input_is_validated(serve: Serve, db_url: str) -> None:
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as api:
        wrong = await api.post(
            "/runs", json={"computation": "api_signup", "input": {"user": 3, "extra": 1}}
        )
        assert wrong.status_code == 422
        locs = sorted(tuple(e["loc"]) for e in wrong.json()["errors"])
        assert locs == [("input", "extra"), ("input", "user")]
        unknown = await api.post("/runs", json={"computation": "nope"})
        assert unknown.status_code == 422
        assert (await api.get("/runs")).json() == {"runs": []}


async def test_last_event_id_skips_the_tree_the_client_has(serve: Serve, db_url: str) -> None:
    """A reconnect naming the current tree gets the snapshot without it; one naming another
    tree (or a made-up id) gets the whole tree."""
    server = serve(build(db_url))
    async with bearer(server.url, "ada") as api:
        run = await suspended(api, (await started(api))["id"])
        async with events(api, run["id"]) as stream:
            snapshot = await stream.next()
        assert snapshot.data["tasks"] is not None
        assert snapshot.id is not None
        async with events(api, run["id"], snapshot.id) as stream:
            resumed = await stream.next()
        assert resumed.data["tasks_unchanged"] is True
        assert resumed.data["tasks"] is None
        assert resumed.data["run"]["revision"] == run["revision"]
        for other in ("1.abc", "garbage", "9" * 80):
            async with events(api, run["id"], other) as stream:
                full = await stream.next()
            assert full.data["tasks_unchanged"] is False
            assert full.data["tasks"] == snapshot.data["tasks"]


async def test_session_cookie_follows_the_pages_rules(serve: Serve, db_url: str) -> None:
    """A browser session: GET /session sets the cookie and gives the CSRF token; POSTs need it
    and a same-origin Origin; the run started through the API is the session's run on the
    pages too (same secret, same owner)."""
    server = serve(build(db_url))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as browser:
        session = await browser.get("/api/session")
        assert session.status_code == 200
        token = session.json()["csrf"]
        assert session.json()["auth"] == "session"
        assert "live_session" in browser.cookies
        body = {"computation": "api_signup", "input": {"user": "ada"}}
        assert (await browser.post("/api/runs", json=body)).status_code == 403
        wrong = {"X-CSRF-Token": token + "x"}
        assert (await browser.post("/api/runs", json=body, headers=wrong)).status_code == 403
        foreign = {"X-CSRF-Token": token, "Origin": "https://evil.example"}
        assert (await browser.post("/api/runs", json=body, headers=foreign)).status_code == 403
        listed = await browser.get("/api/runs")
        assert listed.json() == {"runs": []}
        own = {"X-CSRF-Token": token, "Origin": server.url}
        response = await browser.post("/api/runs", json=body, headers=own)
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        page = await browser.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert "Plan for ada?" in page.text or "Load" in page.text
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as stranger:
        await stranger.get("/api/session")
        assert (await stranger.get(f"/api/runs/{run_id}")).status_code == 404
        assert (await stranger.get(f"/runs/{run_id}")).status_code == 404
    assert SECRET


async def test_too_many_streams_are_refused(serve: Serve, db_url: str) -> None:
    from bridges.api import ApiLimits

    server = serve(build(db_url, limits=ApiLimits(streams_per_caller=2)))
    async with bearer(server.url, "ada") as api:
        run = await started(api)
        async with events(api, run["id"]) as one, events(api, run["id"]) as two:
            await one.next()
            await two.next()
            refused = await api.get(f"/runs/{run['id']}/events")
            assert refused.status_code == 429
        async with events(api, run["id"]) as three:
            assert (await three.next()).event == "snapshot"


async def test_starts_are_rate_limited(serve: Serve, db_url: str) -> None:
    from bridges.api import ApiLimits

    server = serve(build(db_url, limits=ApiLimits(starts_per_minute=2)))
    async with bearer(server.url, "ada") as api, bearer(server.url, "bob") as bob:
        await started(api)
        await started(api)
        refused = await api.post(
            "/runs", json={"computation": "api_signup", "input": {"user": "ada"}}
        )
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert len((await api.get("/runs")).json()["runs"]) == 2
        await started(bob)


async def test_a_queued_computation_is_enqueued(serve: Serve, db_url: str) -> None:
    """`ApiComputation(queue=...)`: the start enqueues the run for workers (nothing runs in
    the web process); cancelling it ends it without running."""
    server = serve(build(db_url, queue="signups"))
    async with bearer(server.url, "ada") as api:
        run = await started(api)
        assert run["status"] == "queued"
        assert (await api.get(f"/runs/{run['id']}")).json()["status"] == "queued"
        cancelled = await api.post(f"/runs/{run['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"
