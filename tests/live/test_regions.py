"""Regions and revisions, the per-connection outbox and the SSE wire format."""

from __future__ import annotations

import json

import anyio
import pytest

from bridges.live import Projection, Region
from bridges.live._stream import CLOSED, PING, Connection, Wake, sse


def test_first_update_stamps_every_region() -> None:
    """A first render creates every region at one new revision, in page order."""
    p = Projection()
    start = p.revision
    assert p.update({"a": "<p>1</p>", "b": "<p>2</p>"}) == ["a", "b"]
    assert p.revision == start + 1
    assert p.ids == ["a", "b"]
    assert p["a"] == Region("a", "<p>1</p>", start + 1)


def test_only_changed_regions_move() -> None:
    """An unchanged region keeps its revision; a changed one gets the new revision."""
    p = Projection()
    p.update({"a": "1", "b": "2"})
    first = p.revision
    assert p.update({"a": "1", "b": "3"}) == ["b"]
    assert p["a"].rev == first
    assert p["b"].rev == first + 1


def test_identical_render_changes_nothing() -> None:
    """A render equal to the last one neither moves the revision nor reports changes."""
    p = Projection()
    p.update({"a": "1"})
    rev = p.revision
    assert p.update({"a": "1"}) == []
    assert p.revision == rev


def test_revisions_increase_monotonically() -> None:
    """Every changing update moves the revision up by one."""
    p = Projection()
    revs = []
    for i in range(5):
        p.update({"a": str(i)})
        revs.append(p.revision)
    assert revs == sorted(revs)
    assert len(set(revs)) == 5


def test_missing_region_is_emptied_in_place() -> None:
    """A region left out of a render becomes empty but keeps its place."""
    p = Projection()
    p.update({"a": "1", "b": "2"})
    assert p.update({"b": "2"}) == ["a"]
    assert p["a"].html == ""
    assert "a" in p


def test_each_projection_has_its_own_epoch_and_counts_from_zero() -> None:
    """A page mounted again (restart, eviction, another process) is a new epoch: its
    revisions start from 0 and are not comparable with the old ones."""
    older = Projection()
    older.update({"a": "x"})
    newer = Projection()
    assert newer.epoch != older.epoch
    assert newer.revision == 0
    assert older.event_id == f"{older.epoch}.1"


def test_since_accepts_only_ids_this_projection_issued() -> None:
    """`since` trusts an id only if it names this epoch and a revision already reached."""
    p = Projection()
    p.update({"a": "1"})
    p.update({"a": "2"})
    e = p.epoch
    assert p.since(f"{e}.2") == 2
    assert p.since(f"{e}.0") == 0
    assert p.since(f" {e}.1 ") == 1
    for forged in (
        None,
        "",
        "2",
        "1" + "0" * 30,
        f"{e}.3",
        f"{e}.-1",
        f"{e}.+1",
        f"{e}.1.5",
        f"{e}.1e3",
        f"{e}.",
        f"{e}.\u0663",  # an Arabic-Indic digit: isdigit() but not ASCII
        f"{e}x.1",
        "0123456789abcdef.1",
        f"{e}." + "9" * 100,
    ):
        assert p.since(forged) is None, forged


def test_revisions_are_bounded_by_a_new_epoch() -> None:
    """At its limit the projection starts a new epoch, restamps and reports every region."""
    p = Projection(limit=3)
    p.update({"a": "1", "b": "x"})
    p.update({"a": "2", "b": "x"})
    p.update({"a": "3", "b": "x"})
    first = p.epoch
    assert p.revision == 3
    assert p.update({"a": "4", "b": "x"}) == ["a", "b"]
    assert p.epoch != first
    assert (p.revision, p["a"].rev, p["b"].rev) == (1, 1, 1)
    assert p.since(f"{first}.3") is None
    assert p.update({"a": "5", "b": "x"}) == ["a"]


def test_envelope_carries_regions_with_their_revisions() -> None:
    """The wire form lists the chosen regions (all of them for a snapshot)."""
    p = Projection()
    p.update({"a": "1", "b": "2"})
    p.update({"a": "1", "b": "3"})
    snapshot = p.envelope("snapshot")
    assert snapshot["type"] == "snapshot"
    assert snapshot["revision"] == p.revision
    assert snapshot["epoch"] == p.epoch
    assert set(snapshot["regions"]) == {"a", "b"}
    patch = p.envelope("patch", ["b"], busy=True)
    assert patch["regions"] == {"b": {"rev": p.revision, "html": "3"}}
    assert patch["busy"] is True


def test_sse_event_format() -> None:
    """An event has an id line (the revision), an event line and one JSON data line."""
    raw = sse("patch", {"type": "patch", "html": "a\nb"}, "e1.42").decode()
    lines = raw.split("\n")
    assert lines[0] == "id: e1.42"
    assert lines[1] == "event: patch"
    assert lines[2].startswith("data: ")
    assert json.loads(lines[2][6:]) == {"type": "patch", "html": "a\nb"}
    assert raw.endswith("\n\n")
    assert not sse("ping", {}).decode().startswith("id:")


async def never() -> dict[str, str]:
    """A client that says nothing: `receive()` waits forever."""
    await anyio.sleep_forever()
    raise AssertionError


@pytest.mark.anyio
async def test_connection_coalesces_changes() -> None:
    """Marks made while nobody reads collapse into one set of region ids."""
    conn = Connection()
    for _ in range(1000):
        conn.mark(["a"])
    conn.mark(["b"])
    with anyio.fail_after(5):
        got = await conn.next(never, 10)
    assert isinstance(got, Wake)
    assert got.ids == {"a", "b"}


@pytest.mark.anyio
async def test_connection_wakes_a_waiting_sender() -> None:
    """A sender waiting for the client wakes when a region is marked."""
    conn = Connection()
    got: list[object] = []

    async def sender() -> None:
        got.append(await conn.next(never, 30))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            conn.mark(["main"])
    assert len(got) == 1
    assert isinstance(got[0], Wake)
    assert got[0].ids == {"main"}


@pytest.mark.anyio
async def test_connection_returns_what_the_client_sent() -> None:
    """A message from the client (a frame, a disconnect) is returned as is, and one that is
    ready as the connection is woken is not lost: the next wait returns it."""
    conn = Connection()
    inbox: list[dict[str, str]] = [{"type": "http.disconnect"}]
    ready = anyio.Event()

    async def receive() -> dict[str, str]:
        await ready.wait()
        return inbox.pop(0)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            results: list[object] = []

            async def sender() -> None:
                results.append(await conn.next(receive, 30))
                results.append(await conn.next(receive, 30))

            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            ready.set()  # the message is ready...
            conn.mark(["main"])  # ...and a change wakes the sender at the same moment
    assert {"type": "http.disconnect"} in results
    assert any(isinstance(r, Wake) and r.ids == {"main"} for r in results)
    assert inbox == []


@pytest.mark.anyio
async def test_connection_times_out_for_a_heartbeat() -> None:
    """Without changes, `next` returns PING after the idle time (a heartbeat is due)."""
    conn = Connection()
    with anyio.fail_after(5):
        assert await conn.next(never, 0.01) is PING


@pytest.mark.anyio
async def test_closed_connection_returns_at_once() -> None:
    """Closing wakes the sender, which gets CLOSED."""
    conn = Connection()
    conn.close()
    with anyio.fail_after(5):
        assert await conn.next(never, 30) is CLOSED
    assert conn.closed
