"""Regions and revisions, the per-connection outbox and the SSE wire format."""

from __future__ import annotations

import json

import anyio
import pytest

from bridges.live import Projection, Region
from bridges.live._stream import Connection, parse_last_event_id, sse


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


def test_revisions_start_above_an_earlier_process() -> None:
    """A projection made later starts at a higher revision (they start from the clock)."""
    older = Projection()
    older.update({"a": "x"})
    newer = Projection()
    assert newer.revision >= older.revision - 1


def test_raise_floor_restamps_everything_past_a_client_revision() -> None:
    """A Last-Event-ID ahead of the page moves the revision past it and restamps every
    region, so the client accepts the next snapshot."""
    p = Projection()
    p.update({"a": "1", "b": "2"})
    ahead = p.revision + 1000
    p.raise_floor(ahead)
    assert p.revision == ahead + 1
    assert {p["a"].rev, p["b"].rev} == {ahead + 1}
    before = p.revision
    p.raise_floor(5)  # a client behind the page changes nothing
    assert p.revision == before
    stamps = {p["a"].rev, p["b"].rev}
    p.raise_floor(before)  # a client that is up to date: nothing to restamp
    assert p.revision == before
    assert {p["a"].rev, p["b"].rev} == stamps


def test_envelope_carries_regions_with_their_revisions() -> None:
    """The wire form lists the chosen regions (all of them for a snapshot)."""
    p = Projection()
    p.update({"a": "1", "b": "2"})
    p.update({"a": "1", "b": "3"})
    snapshot = p.envelope("snapshot")
    assert snapshot["type"] == "snapshot"
    assert snapshot["revision"] == p.revision
    assert set(snapshot["regions"]) == {"a", "b"}
    patch = p.envelope("patch", ["b"], busy=True)
    assert patch["regions"] == {"b": {"rev": p.revision, "html": "3"}}
    assert patch["busy"] is True


def test_sse_event_format() -> None:
    """An event has an id line (the revision), an event line and one JSON data line."""
    raw = sse("patch", {"type": "patch", "html": "a\nb"}, 42).decode()
    lines = raw.split("\n")
    assert lines[0] == "id: 42"
    assert lines[1] == "event: patch"
    assert lines[2].startswith("data: ")
    assert json.loads(lines[2][6:]) == {"type": "patch", "html": "a\nb"}
    assert raw.endswith("\n\n")
    assert not sse("ping", {}).decode().startswith("id:")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("17", 17), (" 8 ", 8), ("x", None), ("-3", None)],
)
def test_parse_last_event_id(value: str | None, expected: int | None) -> None:
    """Last-Event-ID is a non-negative revision; anything else is ignored."""
    assert parse_last_event_id(value) == expected


@pytest.mark.anyio
async def test_connection_coalesces_changes() -> None:
    """Marks made while nobody reads collapse into one set of region ids."""
    conn = Connection()
    for _ in range(1000):
        conn.mark(["a"])
    conn.mark(["b"])
    with anyio.fail_after(5):
        assert await conn.changes(10) == {"a", "b"}


@pytest.mark.anyio
async def test_connection_wakes_a_waiting_sender() -> None:
    """A sender waiting for changes wakes when a region is marked."""
    conn = Connection()
    got: list[set[str] | None] = []

    async def sender() -> None:
        got.append(await conn.changes(30))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            conn.mark(["main"])
    assert got == [{"main"}]


@pytest.mark.anyio
async def test_connection_times_out_for_a_heartbeat() -> None:
    """Without changes, `changes` returns None after the idle time (a ping is due)."""
    conn = Connection()
    with anyio.fail_after(5):
        assert await conn.changes(0.01) is None


@pytest.mark.anyio
async def test_closed_connection_returns_at_once() -> None:
    """Closing wakes the sender, which sees `closed`."""
    conn = Connection()
    conn.close()
    with anyio.fail_after(5):
        assert await conn.changes(30) is None
    assert conn.closed
