"""Helpers of the end-to-end tests: the examples as real server processes, and a browser
without JavaScript made of httpx.

`ExampleServer` runs `python examples/<name>/app.py --port P ...` exactly as a user starts it
(one command, its own process) on a free port of 127.0.0.1. Its output is read by a thread:
the server is ready when uvicorn says it is running, and tests wait for other lines (a domain
event) the same way.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from playwright.async_api import Page

NewPage = Callable[..., Awaitable[Page]]
"""The `new_page` fixture: `await new_page(**context_options)`."""

ROOT = Path(__file__).resolve().parents[2]
READY = "Uvicorn running on"
RUNNING: list[ExampleServer] = []
"""The servers started and not yet stopped (their output goes into failure reports)."""


def load_example(example: str) -> ModuleType:
    """Import `examples/<example>/app.py` (as module `<example>_app`), once per process."""
    name = f"{example}_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / example / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ExampleServer:
    """`examples/<example>/app.py` running in a subprocess on `port`."""

    def __init__(
        self,
        example: str,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.script = ROOT / "examples" / example / "app.py"
        self.args = list(args)
        self.env = dict(env or {})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader: threading.Thread | None = None

    ready = READY
    """The line the process prints once it serves."""

    def command(self) -> list[str]:
        """The command line that starts the process."""
        return [sys.executable, str(self.script), "--port", str(self.port), *self.args]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20) -> ExampleServer:
        """Start the server (from another directory: the examples work from any cwd) and wait
        until it accepts connections."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("LIVE_SECRET", None)
        env.update(self.env)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT / "tests",
            env=env,
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        RUNNING.append(self)
        self.wait_for(self.ready, timeout)
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                with self._seen:
                    self.lines.append(line.rstrip("\n"))
                    self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def output(self) -> str:
        """Everything the server printed so far."""
        with self._seen:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 10) -> str:
        """Wait until the server prints a line containing `needle`; returns that line."""
        assert self.process is not None
        process = self.process

        def found() -> str | None:
            return next((line for line in self.lines if needle in line), None)

        with self._seen:
            ok = self._seen.wait_for(
                lambda: found() is not None or process.poll() is not None, timeout
            )
            line = found()
        if line is None:
            state = "exited" if process.poll() is not None else "still running"
            raise AssertionError(
                f"{self.script.parent.name} ({state}) never printed {needle!r} "
                f"(waited {timeout} s{'' if ok else ', timed out'}):\n{self.output()}"
            )
        return line

    def children(self) -> list[int]:
        """The server's child processes (Linux)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self._ended()

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; SIGKILL if it does not stop in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
        self._ended()

    def _ended(self) -> None:
        assert self.process is not None
        assert self._reader is not None
        self.process.wait(10)
        self._reader.join(10)  # it closes the pipe at the end of the output
        if self in RUNNING:
            RUNNING.remove(self)


class NoScript:
    """A browser without JavaScript: a cookie jar, GET pages, POST their forms (with the CSRF
    token and the form's idempotency key), and the 303 answers."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=10)
        self.page = ""
        self.path = ""

    async def __aenter__(self) -> NoScript:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def get(self, path: str, expect: int = 200) -> str:
        """GET a page; it becomes the page whose forms `post` sends."""
        response = await self.http.get(path)
        assert response.status_code == expect, (response.status_code, response.text[:300])
        if expect == 200:
            self.page, self.path = response.text, path
        return response.text

    @property
    def csrf(self) -> str:
        """The CSRF token of the current page."""
        match = re.search(r'<meta name="live-csrf" content="([^"]*)">', self.page)
        assert match is not None, "no CSRF token in the page"
        return html.unescape(match.group(1))

    def key(self, event: str) -> str:
        """The idempotency key of the current page's form that sends `event`."""
        match = re.search(
            rf'name="_event" value="{re.escape(event)}">'
            r'<input type="hidden" name="_key" value="([^"]*)"',
            self.page,
        )
        assert match is not None, f"no {event!r} form in the page"
        return html.unescape(match.group(1))

    async def post(
        self,
        path: str,
        event: str,
        fields: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST the current page's `event` form with `fields`, as the browser would."""
        data = {
            "_csrf": self.csrf,
            "_event": event,
            "_key": self.key(event) if key is None else key,
            **(fields or {}),
        }
        return await self.http.post(path, data=data, headers=headers)

    async def submit(self, path: str, event: str, fields: dict[str, Any] | None = None) -> str:
        """POST a form, expect `303 See Other`, follow it; returns the new page."""
        response = await self.post(path, event, fields)
        assert response.status_code == 303, (response.status_code, response.text[:300])
        return await self.get(response.headers["location"])


StartServer = Callable[..., ExampleServer]
"""The `start_server` fixture: `start_server(example, *args, port=None)`."""
