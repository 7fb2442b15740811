"""The run page shows the statuses where work is pending without an answer: running, queued
(waiting for a worker) and sleeping (a durable timer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from live_client import SECRET, LiveServer, Visitor, region
from live_flows import nap

from bridges.live import progress_app
from effects import Clock

pytestmark = pytest.mark.anyio


async def test_a_sleeping_run_is_waiting_not_cancelled(
    serve: Callable[[Any], LiveServer], db_url: str
) -> None:
    """A run released to its durable timer shows that it waits (and is busy), where the page
    used to call it cancelled."""
    server = serve(progress_app(nap, secret=SECRET, url=db_url, handlers=Clock(), shared=False))
    async with Visitor(server.url) as visitor:
        path = await visitor.start()
        page = await visitor.get(path)
        assert "Waiting for its timer…" in region(page, "status")
        assert "Cancelled" not in page
        assert 'aria-busy="true"' in page
