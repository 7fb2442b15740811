"""The LiveView page API (mount / handle_event / handle_info / render) on a real server."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from live_client import (
    SECRET,
    EventReader,
    LiveServer,
    Visitor,
    form_key,
    page_position,
    parse_id,
    region,
)
from markupsafe import Markup

from bridges.live import Event, LiveApp, LiveView, NotFound, Page, Reply

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]

COUNTER = """\
<p>{{ name }}: <output>{{ count }}</output></p>
<form method="post" action="{{ page.action }}" data-live-form>
{{ page.hidden("inc", "inc:" ~ count) }}
<button type="submit">+1</button>
</form>
"""

NOTE = "<p>{{ note }}</p>"


class Counter(LiveView):
    """A counter per session and name, with a note that background tasks may update."""

    region_attrs: ClassVar[Mapping[str, Mapping[str, str]]] = {
        "note": {"role": "status", "aria-live": "polite"}
    }

    def __init__(self) -> None:
        self.count = 0
        self.note = ""
        self.name = ""

    async def mount(self, page: Page) -> None:
        self.name = str(page.params["name"])
        if self.name == "missing":
            raise NotFound(self.name)

    async def handle_event(self, event: Event, page: Page) -> Reply | None:
        if event.name == "inc":
            self.count += 1
            return None
        if event.name == "note":
            text = event.get("text", "") or ""
            if not text:
                return Reply(ok=False, errors=[{"loc": ("text",), "msg": "say something"}])
            self.note = text
            return None
        if event.name == "burst":
            page.spawn(self._burst, page, int(event.get("n", "0") or 0))
            return None
        return await super().handle_event(event, page)

    async def _burst(self, page: Page, n: int) -> None:
        for i in range(n):
            page.send_info(f"tick {i + 1}", key="tick")

    async def handle_info(self, message: Any, page: Page) -> None:
        self.note = str(message)

    def render(self, page: Page) -> Mapping[str, str]:
        return {
            "counter": page.render_template("counter.html", count=self.count, name=self.name),
            "note": page.render_template("note.html", note=self.note),
        }

    def title(self, page: Page) -> str:
        return f"Counter {self.name}"


class Bounded(Counter):
    """A counter whose page runs out of revisions after 3 renders."""

    async def mount(self, page: Page) -> None:
        await super().mount(page)
        page.projection.limit = 3


@pytest.fixture
def server(serve: Serve, tmp_path: Path) -> LiveServer:
    (tmp_path / "counter.html").write_text(COUNTER)
    (tmp_path / "note.html").write_text(NOTE)
    live = LiveApp(secret=SECRET, template_dirs=[tmp_path], title="Counters")
    live.page("/count/{name}", Counter)
    live.page("/bounded/{name}", Bounded)
    return serve(live.build())


async def test_page_is_server_rendered(server: LiveServer) -> None:
    """GET mounts the view and renders every region, with the region attributes."""
    async with Visitor(server.url) as ada:
        page = await ada.get("/count/a")
        assert "<title>Counter a</title>" in page
        assert "<output>0</output>" in region(page, "counter")
        assert 'data-live-region="note" data-live-rev="' in page
        assert 'role="status" aria-live="polite"' in page


async def test_mount_can_refuse_with_404(server: LiveServer) -> None:
    """`NotFound` raised by mount answers 404."""
    async with Visitor(server.url) as ada:
        await ada.get("/count/missing", expect=404)


async def test_event_changes_state_and_duplicate_key_is_a_no_op(server: LiveServer) -> None:
    """A command runs once per idempotency key: the repeated POST changes nothing."""
    async with Visitor(server.url) as ada:
        page = await ada.get("/count/a")
        key = form_key(page, "inc")
        assert (await ada.post("/count/a", "inc", key)).status_code == 303
        assert (await ada.post("/count/a", "inc", key)).status_code == 303
        page = await ada.get("/count/a")
        assert "<output>1</output>" in page
        reply = await ada.post("/count/a", "inc", form_key(page, "inc"), live=True)
        assert reply.json()["ok"] is True
        assert "<output>2</output>" in reply.json()["regions"]["counter"]["html"]


async def test_pages_are_per_session_and_url(server: LiveServer) -> None:
    """Each session (and each URL) has its own page state; tabs of one session share it."""
    async with Visitor(server.url) as ada, Visitor(server.url) as bob:
        page = await ada.get("/count/a")
        await ada.post("/count/a", "inc", form_key(page, "inc"))
        assert "<output>1</output>" in await ada.get("/count/a")
        assert "<output>0</output>" in await ada.get("/count/b")
        assert "<output>0</output>" in await bob.get("/count/a")


async def test_refused_event_keeps_its_key(server: LiveServer) -> None:
    """A refused command answers 422 with errors and does not use up its key."""
    async with Visitor(server.url) as ada:
        await ada.get("/count/a")
        reply = await ada.post("/count/a", "note", "n1", {"text": ""}, live=True)
        assert reply.status_code == 422
        assert reply.json()["errors"] == [{"loc": ["text"], "msg": "say something", "type": ""}]
        reply = await ada.post("/count/a", "note", "n1", {"text": "hi"}, live=True)
        assert reply.json()["ok"] is True
        unknown = await ada.post("/count/a", "dance", "d1", live=True)
        assert unknown.status_code == 422


async def test_user_text_is_escaped_by_templates(server: LiveServer) -> None:
    """Templates autoescape: markup a user sent is shown as text."""
    async with Visitor(server.url) as ada:
        await ada.get("/count/a")
        await ada.post("/count/a", "note", "n1", {"text": "<img src=x onerror=alert(1)>"})
        page = await ada.get("/count/a")
        assert "<img" not in region(page, "note")
        assert "&lt;img src=x onerror=alert(1)&gt;" in region(page, "note")


async def test_messages_reach_the_stream_and_the_final_one_is_never_lost(
    server: LiveServer,
) -> None:
    """`send_info` from a background task drives `handle_info`; a burst is coalesced (the
    page renders at most once per throttle interval) but always ends on the last message."""
    async with Visitor(server.url) as ada:
        await ada.get("/count/a")
        async with ada.stream("/count/a") as events:
            _, snapshot = await events.next()
            assert set(snapshot["regions"]) == {"counter", "note"}
            await ada.post("/count/a", "burst", "b1", {"n": "5000"}, live=True)
            await events.until("note", "tick 5000")
            assert len(events.ids) < 5000


async def read_to_the_end(events: EventReader) -> None:
    with anyio.fail_after(10):  # pings would keep a stream that never ends alive
        while True:
            await events.next()


async def test_a_page_out_of_revisions_starts_a_new_epoch(server: LiveServer) -> None:
    """When a page's revision reaches its bound, it starts a new epoch and ends its streams;
    the client's reconnection, with its old id, gets the new epoch's full snapshot."""
    async with Visitor(server.url) as ada:
        page = await ada.get("/bounded/a")
        old = page_position(page)
        epoch, revision = parse_id(old)
        assert revision == 1
        async with ada.stream("/bounded/a", last_event_id=old) as events:
            event, data = await events.next()
            assert (event.event, data["regions"]) == ("snapshot", {})
            for _ in range(3):
                page = await ada.get("/bounded/a")
                await ada.post("/bounded/a", "inc", form_key(page, "inc"), live=True)
            with pytest.raises(EOFError):
                await read_to_the_end(events)
            assert events.epochs == {epoch}
            assert max(events.ids) == 3
        async with ada.stream("/bounded/a", last_event_id=f"{epoch}.3") as events:
            event, data = await events.next()
            new_epoch, revision = parse_id(event.id)
            assert new_epoch != epoch
            assert revision == 1
            assert set(data["regions"]) == {"counter", "note"}
            assert "<output>3</output>" in data["regions"]["counter"]["html"]


async def drain(ws: Any) -> None:
    with anyio.fail_after(10):
        while True:
            await ws.recv()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the websockets client
async def test_a_new_epoch_closes_the_websocket_too(server: LiveServer) -> None:
    """Over the WebSocket the server closes with 1012 (service restart): the client
    reconnects and takes the new epoch's snapshot."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with Visitor(server.url) as ada:
        page = await ada.get("/bounded/b")
        url = f"ws://127.0.0.1:{server.port}/bounded/b/_live/ws"
        headers = {"Cookie": ada.cookie}
        async with connect(url, origin=server.url, additional_headers=headers) as ws:  # type: ignore[arg-type]
            with anyio.fail_after(20):
                assert json.loads(await ws.recv())["type"] == "snapshot"
                for _ in range(3):
                    page = await ada.get("/bounded/b")
                    await ada.post("/bounded/b", "inc", form_key(page, "inc"), live=True)
                with pytest.raises(ConnectionClosed) as closed:
                    await drain(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012


def test_render_must_be_implemented() -> None:
    """A view without `render` fails clearly."""
    with pytest.raises(NotImplementedError, match="render"):
        LiveView().render(None)  # type: ignore[arg-type]


def test_hidden_fields_are_escaped() -> None:
    """`page.hidden` escapes the event name and key it puts into the form."""

    class Fake:
        csrf = "t"

    markup = Page.hidden(Fake(), 'x"><b>', "k")  # type: ignore[arg-type]
    assert isinstance(markup, Markup)
    assert "<b>" not in markup
