"""Fixtures of the JSON API's tests: real uvicorn servers on 127.0.0.1 (the live bridge's test
server, from tests/live) and a SQLite file for durable runs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The live bridge's test helpers (its uvicorn-in-a-thread server, hostile-input helpers) are
# shared: tests/live is not a package, so it is put on the path like pytest puts it for its own.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "live"))
# The end-to-end tests' subprocess server (ExampleServer) runs tests/api/wizard_api.py too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from live_client import LiveServer


@pytest.fixture
def serve() -> Iterator[Callable[[Any], LiveServer]]:
    """`serve(app)` starts a server for `app`; every server is stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.thread.is_alive():
            server.stop()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite database file for the durable runs of one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
