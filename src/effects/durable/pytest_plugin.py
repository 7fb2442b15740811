"""pytest fixtures for testing workflows written with `effects` (docs/guides/testing.md).

Installed with the package as the pytest plugin `effects` (entry point `pytest11`), so the
fixtures are there in every test session without a `conftest.py`:

- `effects_db_url`: a fresh SQLite file for one test's durable runs;
- `durable_runner`: a started `DurableRunner` on that file (async; handlers from the test's
  `@pytest.mark.effects_handlers(...)` marker), and `durable_runner_factory` to open others;
- `scripted`: makes `effects.testing.Scripted` handlers and checks, when the test passed,
  that each performed its whole script;
- `live_server` / `live_client`: a live app served by real uvicorn on 127.0.0.1, and a client
  that behaves like a browser without JavaScript (cookies, CSRF token, idempotency keys).

The plugin defines fixtures, one marker and a report hook that only records outcomes: it
changes nothing for tests that do not request its fixtures. Web and database modules are
imported by the fixtures that need them, not when pytest starts.
"""

from __future__ import annotations

import html
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

    from effects._effect import Effect
    from effects._handler import Handler, Stack
    from effects.durable import DurableRunner
    from effects.testing import Scripted

__all__ = ("LiveClient", "LiveServer")

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


def pytest_configure(config: pytest.Config) -> None:
    """Declare the plugin's marker (so that `--strict-markers` accepts it)."""
    config.addinivalue_line(
        "markers",
        "effects_handlers(*handlers): the handlers the `durable_runner` fixture installs",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember the outcome of the test's call, for fixtures that check more after a pass."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


def _passed(request: pytest.FixtureRequest) -> bool:
    report = request.node.stash.get(_CALL_REPORT, None)
    return report is not None and report.passed


# -- durable runs ----------------------------------------------------------------------------


@pytest.fixture
def effects_db_url(tmp_path: Path) -> str:
    """An SQLAlchemy URL of a fresh SQLite file, for the durable runs of one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'effects-runs.db'}"


@pytest.fixture
def durable_runner_factory(
    effects_db_url: str,
) -> Callable[..., AbstractAsyncContextManager[DurableRunner]]:
    """`durable_runner_factory(handlers=..., **options)`: a `DurableRunner` (enter it with
    `async with`) on the test's SQLite file, or on `url=` if given. Two runners made by it
    share the file, as two processes would (give them different `owner=`s)."""
    from effects.durable import DurableRunner

    def make(
        *,
        handlers: Handler | Stack | Iterable[Handler | Stack] = (),
        url: str | None = None,
        **options: Any,
    ) -> DurableRunner:
        return DurableRunner(url or effects_db_url, handlers=handlers, **options)

    return make


@pytest.fixture
async def durable_runner(
    request: pytest.FixtureRequest,
    durable_runner_factory: Callable[..., AbstractAsyncContextManager[DurableRunner]],
) -> AsyncIterator[DurableRunner]:
    """A started `DurableRunner` on the test's SQLite file, closed after the test. It installs
    the handlers of the test's `@pytest.mark.effects_handlers(...)` marker. The runner needs
    the asyncio backend (SQLAlchemy's async drivers): `@pytest.mark.anyio`, with a fixture
    `anyio_backend` returning "asyncio" where trio is installed too."""
    backend = request.getfixturevalue("anyio_backend")
    name = backend[0] if isinstance(backend, tuple) else backend
    if name != "asyncio":
        pytest.fail(
            f"durable_runner needs the asyncio backend, not {name!r} (SQLAlchemy's async "
            'drivers): define a fixture `anyio_backend` returning "asyncio"',
            pytrace=False,
        )
    marker = request.node.get_closest_marker("effects_handlers")
    handlers = list(marker.args) if marker is not None else []
    async with durable_runner_factory(handlers=handlers) as runner:
        yield runner


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[Callable[..., Scripted]]:
    """`scripted((effect, result), ...)`: a `Scripted` handler answering those effects in
    that order. After a test that passed, every script made by it must have been performed
    to its end (`Scripted.assert_done()`): a step the code skipped fails the test."""
    from effects.testing import Scripted

    made: list[Scripted] = []

    def make(*pairs: tuple[Effect[Any], Any]) -> Scripted:
        script = Scripted(*pairs)
        made.append(script)
        return script

    yield make
    if _passed(request):
        for script in made:
            script.assert_done()


# -- live apps -------------------------------------------------------------------------------


class LiveServer:
    """An ASGI app served by uvicorn on a free port of 127.0.0.1, in a thread with its own
    event loop; its lifespan runs as under a real deployment. `url` is its base URL."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        # Bound before the server starts: a client may connect at once, and waits in the
        # backlog until the app's lifespan has started.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="effects-live-server")
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as err:  # re-raised by stop()
            self.error = err

    def start(self) -> LiveServer:
        """Start serving; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the server (open streams are cut after 2 s) and re-raise what it raised."""
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("the live server did not stop within 20 s")
        if self.error is not None:
            raise self.error


class LiveClient:
    """A browser without JavaScript, for a live app: a cookie jar and the CSRF token of the
    last page it loaded. `http` is the underlying `httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.csrf = ""
        self.page = ""  # the text of the last page loaded with `get`

    async def get(self, path: str, *, expect: int = 200) -> str:
        """Load a page (asserting its status) and remember its CSRF token; returns its HTML."""
        response = await self.http.get(path)
        assert response.status_code == expect, (path, response.status_code, response.text[:300])
        if expect == 200:
            self.page = response.text
            token = re.search(r'<meta name="live-csrf" content="([^"]*)">', response.text)
            if token:
                self.csrf = html.unescape(token.group(1))
        return response.text

    def form_key(self, event: str, page: str | None = None) -> str:
        """The idempotency key of the form of `page` (default: the last one) that sends
        `event` ("start", "answer", "cancel"...)."""
        pattern = (
            rf'name="_event" value="{re.escape(event)}">'
            r'<input type="hidden" name="_key" value="([^"]*)"'
        )
        match = re.search(pattern, self.page if page is None else page)
        assert match is not None, f"no form sends {event!r} on this page"
        return html.unescape(match.group(1))

    async def command(
        self,
        path: str,
        event: str,
        fields: dict[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> httpx.Response:
        """Post `event` with `fields` to the page at `path`, as its form does: CSRF token and
        idempotency key included (default key: the form's on the last page loaded)."""
        data = {
            "_csrf": self.csrf,
            "_event": event,
            "_key": self.form_key(event) if key is None else key,
            **(fields or {}),
        }
        return await self.http.post(path, data=data)

    async def start(self, fields: dict[str, Any] | None = None, *, path: str = "/") -> str:
        """Start a run from the start page at `path`; returns the run page's path."""
        await self.get(path)
        response = await self.command(path, "start", fields)
        assert response.status_code == 303, (response.status_code, response.text[:300])
        location: str = response.headers["location"]
        return location

    async def answer(self, path: str, fields: dict[str, Any]) -> str:
        """Answer the step the run page at `path` shows; returns the page after the answer
        (the same step with its errors, if the answer was refused)."""
        await self.get(path)
        response = await self.command(path, "answer", fields)
        if response.status_code != 303:
            return response.text
        return await self.get(response.headers["location"])


@pytest.fixture
def live_server() -> Iterator[Callable[[Any], LiveServer]]:
    """`live_server(app)`: serve an ASGI app (a live app, or a FastAPI app it is mounted in)
    with uvicorn on 127.0.0.1; every server is stopped after the test."""
    servers: list[LiveServer] = []

    def serve(app: Any) -> LiveServer:
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def live_client(
    live_server: Callable[[Any], LiveServer],
) -> Callable[[Any], AbstractAsyncContextManager[LiveClient]]:
    """`async with live_client(app) as client`: serve `app` with `live_server` and browse it
    with a `LiveClient` (any anyio backend: the server has its own thread and loop)."""

    @asynccontextmanager
    async def browse(app: Any) -> AsyncIterator[LiveClient]:
        import httpx

        server = live_server(app)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            yield LiveClient(http)

    return browse
