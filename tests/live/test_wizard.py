"""A durable wizard over a real uvicorn server and a real SQLite file, driven over HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from live_client import (
    SECRET,
    LiveServer,
    Visitor,
    form_key,
    page_position,
    parse_id,
    region,
    region_rev,
)
from live_flows import names, signup
from markupsafe import escape

from bridges.live import wizard_app

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]


def make(serve: Serve, db_url: str, comp: Any = signup) -> LiveServer:
    return serve(wizard_app(comp, secret=SECRET, url=db_url, title="Signup"))


async def test_wizard_walks_through_its_steps(serve: Serve, db_url: str) -> None:
    """Without JavaScript: start, answer each step (POST, 303, GET), see the result."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        assert "Who are you?" in region(page, "main")
        assert 'name="age"' in page
        assert 'role="status" aria-live="polite"' in page
        page = await ada.answer(path, {"name": "Ada", "age": "36"})
        assert "Choose a plan" in region(page, "main")
        assert 'type="radio" name="plan" value="pro"' in page
        page = await ada.answer(path, {"plan": "pro", "newsletter": "true"})
        assert "Ada (36) on pro" in region(page, "main")
        tasks = region(page, "tasks")
        assert 'role="progressbar"' in tasks
        assert 'aria-valuenow="3.0"' in tasks or 'aria-valuenow="3"' in tasks
        assert "configured 3" in region(page, "output")
        assert "Cancel" not in region(page, "controls")
        index = await ada.get("/")
        assert path in index


async def test_blank_name_is_refused(serve: Serve, db_url: str) -> None:
    """A name made of spaces does not pass `min_length=1`: the step stays, with the error."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        key = form_key(page, "answer")
        response = await ada.post(path, "answer", key, {"name": "  \t ", "age": "36"}, live=True)
        assert response.status_code == 422
        assert [e["loc"] for e in response.json()["errors"]] == [["name"]]
        page = await ada.answer(path, {"name": "  Ada ", "age": "36"})
        assert "Choose a plan" in region(page, "main")
        page = await ada.answer(path, {"plan": "pro"})
        assert "Ada (36) on pro" in region(page, "main")


async def test_invalid_input_keeps_the_step(serve: Serve, db_url: str) -> None:
    """An invalid answer re-renders the same step with errors next to the fields and the
    values kept; the same key then takes the corrected answer."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        key = form_key(page, "answer")
        response = await ada.post(path, "answer", key, {"name": "Ada", "age": "-4"})
        assert response.status_code == 303
        page = await ada.get(path)
        main = region(page, "main")
        assert "Who are you?" in main
        assert form_key(page, "answer") == key
        assert 'id="f-age-err" role="alert"' in main
        assert "greater than or equal to 0" in main
        assert 'value="Ada"' in main
        assert 'aria-invalid="true"' in main

        response = await ada.post(path, "answer", key, {"name": "", "age": "x"}, live=True)
        assert response.status_code == 422
        reply = response.json()
        assert reply["ok"] is False
        assert {tuple(e["loc"]) for e in reply["errors"]} == {("name",), ("age",)}
        assert "f-name-err" in reply["regions"]["main"]["html"]

        async with ada.stream(path) as events:
            fields = {"name": "Ada", "age": "36"}
            response = await ada.post(path, "answer", key, fields, live=True)
            assert response.status_code == 200
            assert response.json()["ok"] is True
            # A live client is not kept waiting: the next step arrives over its stream.
            await events.until("main", "Choose a plan")


async def test_duplicate_post_is_a_no_op(serve: Serve, db_url: str) -> None:
    """The same answer posted twice, or twice at once, advances the run once."""
    server = make(serve, db_url, names)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        key = form_key(page, "answer")
        first = await ada.post(path, "answer", key, {"name": "a", "age": "1"})
        again = await ada.post(path, "answer", key, {"name": "a", "age": "1"})
        assert (first.status_code, again.status_code) == (303, 303)
        replay = await ada.post(path, "answer", key, {"name": "a", "age": "1"}, live=True)
        assert replay.json()["duplicate"] is True
        page = await ada.get(path)
        assert "Person 2" in region(page, "main")

        key = form_key(page, "answer")
        replies: list[httpx.Response] = []

        async def send() -> None:
            replies.append(
                await ada.post(path, "answer", key, {"name": "b", "age": "2"}, live=True)
            )

        async with ada.stream(path) as events:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                tg.start_soon(send)
            assert sorted(r.json()["duplicate"] for r in replies) == [False, True]
            await events.until("main", "Person 3")
        page = await ada.answer(path, {"name": "c", "age": "3"})
        assert str(escape("['a', 'b', 'c']")) in region(page, "main")


async def test_post_needs_the_sessions_csrf_token(serve: Serve, db_url: str) -> None:
    """A POST without the token, or with another session's, is refused and changes nothing."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada, Visitor(server.url) as eve:
        path = await ada.start()
        page = await ada.get(path)
        key = form_key(page, "answer")
        await eve.get("/")
        fields = {"name": "Ada", "age": "36"}
        assert (await ada.post(path, "answer", key, fields, csrf="")).status_code == 403
        assert (await ada.post(path, "answer", key, fields, csrf=eve.csrf)).status_code == 403
        foreign = await ada.http.post(
            path,
            data={"_csrf": ada.csrf, "_event": "answer", "_key": key, **fields},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        page = await ada.get(path)
        assert "Who are you?" in region(page, "main")


async def test_another_session_gets_404(serve: Serve, db_url: str) -> None:
    """A run is bound to the session that started it: others get 404 everywhere."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada, Visitor(server.url) as eve:
        path = await ada.start()
        page = await ada.get(path)
        key = form_key(page, "answer")
        await eve.get("/")
        await eve.get(path, expect=404)
        assert (await eve.http.get(path + "/_live/sse")).status_code == 404
        response = await eve.post(path, "answer", key, {"name": "Eve", "age": "1"})
        assert response.status_code == 404
        # A forged id with a made-up owner tag is not found either.
        forged = "/runs/AAAAAAAAAAAAAAAA." + path.rsplit(".", 1)[1]
        await ada.get(forged, expect=404)
        index = await eve.get("/")
        assert path not in index
        assert "Who are you?" in region(await ada.get(path), "main")


async def test_user_text_is_escaped(serve: Serve, db_url: str) -> None:
    """Text a user typed is escaped wherever it is shown (re-rendered form and result)."""
    server = make(serve, db_url)
    evil = '<script>alert("x")</script>'
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        key = form_key(page, "answer")
        await ada.post(path, "answer", key, {"name": evil, "age": "-1"})
        page = await ada.get(path)
        assert "<script>alert" not in page
        assert str(escape(evil)) in page
        await ada.answer(path, {"name": evil, "age": "5"})
        page = await ada.answer(path, {"plan": "free"})
        assert "<script>alert" not in page
        assert str(escape(evil)) in region(page, "main")


async def test_stream_sends_a_snapshot_then_patches(serve: Serve, db_url: str) -> None:
    """SSE: a full snapshot with `id:` = revision, then patches of the changed regions only."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        async with ada.stream(path) as events:
            event, data = await events.next()
            assert event.event == "snapshot"
            assert parse_id(event.id) == (data["epoch"], data["revision"])
            assert set(data["regions"]) == {"status", "main", "tasks", "output", "controls"}
            assert data["regions"]["main"]["rev"] == region_rev(page, "main")
            key = form_key(page, "answer")
            await ada.post(path, "answer", key, {"name": "Ada", "age": "36"}, live=True)
            await events.until("main", "Choose a plan")
            assert events.ids == sorted(events.ids)
            assert len(set(events.ids)) == len(events.ids)


async def test_reconnect_gets_a_snapshot_of_what_changed_since_its_id(
    serve: Serve, db_url: str
) -> None:
    """A reconnect naming a position this page issued gets the regions changed since (none
    when it is current); without an id it gets every region."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        async with ada.stream(path) as events:
            event, first = await events.next()
        last = event.id
        assert set(first["regions"]) == {"status", "main", "tasks", "output", "controls"}
        async with ada.stream(path, last_event_id=last) as events:
            event, again = await events.next()
            assert event.event == "snapshot"
            assert again["regions"] == {}
            assert event.id == last
        await ada.post(
            path, "answer", form_key(page, "answer"), {"name": "Ada", "age": "36"}, live=True
        )
        async with ada.stream(path, query=f"last_event_id={last}") as events:
            event, since = await events.next()
            assert "main" in since["regions"]
            assert all(r["rev"] > parse_id(last)[1] for r in since["regions"].values())
            await events.until("main", "Choose a plan")


@pytest.mark.parametrize(
    "forged",
    [
        "1" + "0" * 30,  # the hostile link of issue #8: once raised the revision past 2^53
        str(2**53 + 7),
        "{epoch}.{ahead}",  # this page's epoch, a revision it never reached
        "{epoch}." + "9" * 60,
        "0123456789abcdef.5",  # another epoch
        "{epoch}.-1",
        "{epoch}.1e3",
        "{epoch}.٣",  # a non-ASCII digit
        "x" * 5000,
    ],
)
async def test_a_forged_last_event_id_is_ignored(serve: Serve, db_url: str, forged: str) -> None:
    """An id the server never issued (header or query parameter, as a link from another site
    sends it with the session cookie) changes nothing: a full snapshot, the revision where it
    was, later changes still newer than what the client holds, every revision < 2^53."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        epoch, revision = parse_id(page_position(page))
        forged = forged.format(epoch=epoch, ahead=revision + 1)
        async with ada.stream(path, query=f"last_event_id={quote(forged)}") as events:
            event, data = await events.next()
            assert parse_id(event.id) == (epoch, revision)
            assert set(data["regions"]) == {"status", "main", "tasks", "output", "controls"}
        async with ada.stream(path, last_event_id=forged) as events:
            event, data = await events.next()
            assert parse_id(event.id) == (epoch, revision)
            assert len(data["regions"]) == 5
        again = await ada.get(path)
        assert page_position(again) == page_position(page)
        main_rev = region_rev(again, "main")
        async with ada.stream(path, last_event_id=page_position(again)) as events:
            await ada.post(
                path, "answer", form_key(page, "answer"), {"name": "Ada", "age": "36"}, live=True
            )
            await events.until("main", "Choose a plan")
            assert events.epochs == {epoch}
            assert main_rev < events.regions["main"][0] < 2**53


async def test_run_survives_a_server_restart(serve: Serve, db_url: str) -> None:
    """After a restart the run is at the same step (cold resume) and goes on; an answer to a
    step already taken is still a no-op (the store's revision, not memory, decides)."""
    first = make(serve, db_url, names)
    async with Visitor(first.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        old_key = form_key(page, "answer")
        await ada.answer(path, {"name": "a", "age": "1"})
        async with ada.stream(path) as events:
            event, _ = await events.next()
        before = event.id
        first.stop()

        second = make(serve, db_url, names)
        ada.http.base_url = httpx.URL(second.url)
        page = await ada.get(path)
        assert "Person 2" in region(page, "main")
        stale = await ada.post(path, "answer", old_key, {"name": "x", "age": "9"}, live=True)
        assert stale.json()["duplicate"] is True
        async with ada.stream(path, last_event_id=before) as events:
            event, data = await events.next()
            # A new process, a new epoch: the old id means nothing here, so every region.
            assert parse_id(event.id)[0] != parse_id(before)[0]
            assert len(data["regions"]) == 5
        await ada.answer(path, {"name": "b", "age": "2"})
        page = await ada.answer(path, {"name": "c", "age": "3"})
        assert str(escape("['a', 'b', 'c']")) in region(page, "main")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_websocket_checks_origin_and_carries_the_same_envelopes(
    serve: Serve, db_url: str
) -> None:
    """The WebSocket refuses foreign origins; on the page's own origin it sends the same
    snapshot/patch envelopes and takes commands (with the CSRF token) as POST does."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        path = await ada.start()
        page = await ada.get(path)
        cookie = "; ".join(f"{k}={v}" for k, v in ada.http.cookies.items())
        ws_url = f"ws://127.0.0.1:{server.port}{path}/_live/ws"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                ws_url, origin="http://evil.example", additional_headers={"Cookie": cookie}
            ):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            async with connect(ws_url, origin=server.url):  # type: ignore[arg-type]
                pass  # no session cookie
        async with connect(ws_url, origin=server.url, additional_headers={"Cookie": cookie}) as ws:  # type: ignore[arg-type]
            with anyio.fail_after(20):
                snapshot = json.loads(await ws.recv())
                assert snapshot["type"] == "snapshot"
                assert "Who are you?" in snapshot["regions"]["main"]["html"]
                command = {
                    "type": "event",
                    "ref": "r1",
                    "event": "answer",
                    "key": form_key(page, "answer"),
                    "params": {"name": "Ada", "age": "36"},
                }
                await ws.send(json.dumps({**command, "csrf": "wrong"}))
                assert json.loads(await ws.recv())["type"] == "error"
                await ws.send(json.dumps({**command, "csrf": ada.csrf}))
                seen_reply = False
                main = ""
                while not (seen_reply and "Choose a plan" in main):
                    message = json.loads(await ws.recv())
                    if message["type"] == "reply":
                        assert message["ref"] == "r1"
                        assert message["ok"] is True
                        seen_reply = True
                    fragment = message.get("regions", {}).get("main")
                    if fragment:
                        main = fragment["html"]


async def test_static_client_is_served(serve: Serve, db_url: str) -> None:
    """The page loads the bridge's own script from the app (no CDN)."""
    server = make(serve, db_url)
    async with Visitor(server.url) as ada:
        page = await ada.get("/")
        src = re.search(r'<script src="([^"]+)"', page)
        assert src is not None
        assert src.group(1) == "/_live/static/live.js"
        script = await ada.http.get(src.group(1))
        assert script.status_code == 200
        assert "EventSource" in script.text
        assert "visibilitychange" in script.text
