"""Single-model apps: one current run, started by a GET, *Run again* cancels and restarts;
`serve_model` exits with the run's status."""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from live_client import SECRET, LiveServer, Visitor, region
from live_flows import gate, wait_gate

from bridges.live import model_app
from effects import Call, Print, computation

pytestmark = pytest.mark.anyio

Serve = Callable[[Any], LiveServer]
GATE = {"name": ""}


async def _wait_current_gate() -> None:
    if GATE["name"]:
        await wait_gate(GATE["name"])


@computation(name="live_tests.model", version=1)
def fit() -> Generator[Any, Any, str]:
    yield Print("fitting")
    yield Call(_wait_current_gate)
    yield Print("fitted")
    return "y = 2x + 1"


@pytest.fixture
def gate_name() -> Iterator[str]:
    name = uuid.uuid4().hex
    GATE["name"] = name
    yield name
    gate(name).set()
    GATE["name"] = ""


def run_ids(db_url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(db_url.replace("+aiosqlite", ""))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select id, status from effects_runs order by id")).all()
    engine.dispose()
    return [(r[0], r[1]) for r in rows]


async def finished(ada: Visitor, path: str) -> str:
    await ada.get(path)  # the session and its page, which the stream follows
    async with ada.stream(path) as events:
        await events.until("status", "Finished.")
    return await ada.get(path)


async def test_a_get_starts_the_model_and_run_again_starts_the_next(
    serve: Serve, db_url: str
) -> None:
    server = serve(model_app(fit, secret=SECRET, url=db_url, title="Fit", settle=0))
    async with Visitor(server.url) as ada:
        response = await ada.http.get("/")
        assert response.status_code == 303
        assert response.headers["location"] == "/runs/live_tests.model.1"
        page = await finished(ada, "/runs/live_tests.model.1")
        assert "y = 2x + 1" in region(page, "main")
        assert "fitted" in region(page, "output")
        assert "Run again" in region(page, "main")
        # Visiting again shows the same (finished) run: a GET never starts a second one.
        again = await ada.http.get("/")
        assert again.headers["location"] == "/runs/live_tests.model.1"
        restarted = await ada.http.post("/restart", data={"_csrf": ada.csrf})
        assert restarted.status_code == 303
        assert restarted.headers["location"] == "/runs/live_tests.model.2"
        await finished(ada, "/runs/live_tests.model.2")
        assert (await ada.http.get("/")).headers["location"] == "/runs/live_tests.model.2"
    assert run_ids(db_url) == [("live_tests.model.1", "done"), ("live_tests.model.2", "done")]


async def test_concurrent_first_visits_start_one_run(serve: Serve, db_url: str) -> None:
    server = serve(model_app(fit, secret=SECRET, url=db_url, settle=0))
    locations: list[str] = []

    async def visit() -> None:
        async with Visitor(server.url) as someone:
            locations.append((await someone.http.get("/")).headers["location"])

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(visit)
    assert set(locations) == {"/runs/live_tests.model.1"}
    assert [run_id for run_id, _ in run_ids(db_url)] == ["live_tests.model.1"]


async def test_run_again_cancels_the_run_still_going(
    serve: Serve, db_url: str, gate_name: str
) -> None:
    server = serve(model_app(fit, secret=SECRET, url=db_url, settle=0))
    async with Visitor(server.url) as ada, Visitor(server.url) as bob:
        await ada.get((await ada.http.get("/")).headers["location"])
        async with ada.stream("/runs/live_tests.model.1") as events:
            await events.until("output", "fitting")
        # Anyone who reaches the page may restart the model (no authorize given).
        await bob.get("/runs/live_tests.model.1")
        response = await bob.http.post("/restart", data={"_csrf": bob.csrf})
        assert response.headers["location"] == "/runs/live_tests.model.2"
        page = await ada.get("/runs/live_tests.model.1")
        assert "Cancelled" in region(page, "main")
        assert "restarted" in region(page, "main")
        gate(gate_name).set()
        await finished(bob, "/runs/live_tests.model.2")
    assert run_ids(db_url) == [
        ("live_tests.model.1", "cancelled"),
        ("live_tests.model.2", "done"),
    ]


async def test_restart_needs_a_session_its_csrf_token_and_our_origin(
    serve: Serve, db_url: str
) -> None:
    server = serve(model_app(fit, secret=SECRET, url=db_url, settle=0))
    async with Visitor(server.url) as ada:
        await finished(ada, (await ada.http.get("/")).headers["location"])
        assert (await ada.http.post("/restart", data={})).status_code == 403
        assert (await ada.http.post("/restart", data={"_csrf": "forged"})).status_code == 403
        foreign = await ada.http.post(
            "/restart", data={"_csrf": ada.csrf}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
    async with Visitor(server.url) as stranger:  # no session cookie at all
        assert (await stranger.http.post("/restart", data={"_csrf": "x"})).status_code == 403
    assert [run_id for run_id, _ in run_ids(db_url)] == ["live_tests.model.1"]


SCRIPT = """
import sys
from effects import Print, computation
from bridges.live import serve_model

@computation(name="cli.model", version=1)
def model():
    yield Print("working")
    if {fail!r}:
        raise ValueError("diverged")
    return "ok"

sys.exit(serve_model(model, secret="s" * 32, url={url!r}, port={port}, hold={hold!r}))
"""


def script(tmp_path: Path, *, fail: bool = False, hold: bool = False) -> tuple[Path, int]:
    with socket.socket() as sock:  # a free port of 127.0.0.1
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sqlite+aiosqlite:///{tmp_path / 'model.db'}"
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(SCRIPT.format(fail=fail, url=url, port=port, hold=hold)))
    return path, port


def env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    return {
        **os.environ,
        "PYTHONPATH": str(root / "src"),
    }


@pytest.mark.parametrize(("fail", "status"), [(False, 0), (True, 1)])
def test_serve_model_exits_with_the_runs_status(tmp_path: Path, fail: bool, status: int) -> None:
    path, port = script(tmp_path, fail=fail)
    done = subprocess.run(
        [sys.executable, str(path)], env=env(), capture_output=True, text=True, timeout=45
    )
    assert done.returncode == status, done.stderr
    assert f"http://127.0.0.1:{port}/" in done.stdout
    # Run again from the command line: a finished model runs anew (a second run).
    again = subprocess.run(
        [sys.executable, str(path)], env=env(), capture_output=True, text=True, timeout=45
    )
    assert again.returncode == status, again.stderr
    ids = run_ids(f"sqlite:///{tmp_path / 'model.db'}")
    assert [run_id for run_id, _ in ids] == ["cli.model.1", "cli.model.2"]


def test_serve_model_with_hold_keeps_the_page_up(tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    path, port = script(tmp_path, hold=True)
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the URL line: serving
        deadline = time.monotonic() + 30
        page = ""
        while time.monotonic() < deadline:  # safety net; the run takes milliseconds
            page = httpx.get(f"http://127.0.0.1:{port}/runs/cli.model.1", timeout=5).text
            if "Run again" in page:
                break
        assert "Run again" in page
        assert proc.poll() is None  # still serving after the run ended
        assert re.search(r"working", html.unescape(page))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    # Ctrl-C ends it as interrupted, like any program (uvicorn re-raises the signal).
    assert proc.returncode == -signal.SIGINT
