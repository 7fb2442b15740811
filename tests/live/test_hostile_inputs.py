"""Property-based tests (Hypothesis) of hostile input against a live app on a real uvicorn
server: random WebSocket frames, random HTTP requests (methods, paths, query strings, headers
such as Last-Event-ID, bodies) and random answers to a run's form.

The properties: every request gets a status below 500 and every frame an `error` or `reply`
envelope on a connection that stays open; no exception escapes the app (what uvicorn logs as
"Exception in ASGI application"); and the run is unchanged, its row and log as they were.

Hypothesis runs inside one test per property (the server is started once, not per example),
with sync clients in the test's thread; the examples are bounded and derandomized so the
module takes seconds and a failure reproduces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hostile import Guarded, run_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_client import SECRET, LiveServer, form_key, page_position, parse_id
from live_flows import signup
from websockets.sync.client import connect

from bridges.live import wizard_app
from bridges.live._messages import MAX_MESSAGE

Serve = Callable[[Any], LiveServer]

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EVENTS = ["answer", "cancel", "start", "", "refresh", "__init__"]
FIELDS = ["name", "age", "plan", "_csrf", "_event", "_key", "a.b", "name[]", "__proto__"]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
TEXT = st.text(max_size=40)
VALUES = TEXT | st.lists(TEXT, max_size=3)


class Run:
    """A wizard run waiting at its first step, and what a client of its session knows."""

    def __init__(self, server: LiveServer, db_url: str, app: Guarded) -> None:
        self.server = server
        self.db_url = db_url
        self.app = app
        self.http = httpx.Client(base_url=server.url, timeout=20)
        page = self.http.get("/").text
        csrf = re.search(r'<meta name="live-csrf" content="([^"]*)">', page)
        assert csrf is not None
        self.csrf = csrf.group(1)
        started = self.http.post(
            "/", data={"_csrf": self.csrf, "_event": "start", "_key": form_key(page, "start")}
        )
        assert started.status_code == 303, started.text
        self.path = started.headers["location"]
        self.id = self.path.rsplit("/", 1)[1]
        self.key = form_key(self._first_step(), "answer")
        self.cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        self.state = run_state(db_url, self.id)

    def _first_step(self) -> str:
        """The page once the run shows its first step: the start is not waited for (settle=0),
        so under load the first render may still be "working"; the stream says when the
        step's form is there."""
        page = self.http.get(self.path).text
        if 'value="answer">' in page:
            return page
        with self.http.stream("GET", f"{self.path}/_live/sse") as events:
            for line in events.iter_lines():
                if 'value=\\"answer\\">' in line or 'value="answer">' in line:
                    break
        return self.http.get(self.path).text

    def names_the_step(self, key: str) -> bool:
        """Whether an answer with `key` would be taken as an answer to the current step (the
        run page reads the revision after the last colon)."""
        try:
            return int(key.rpartition(":")[2]) == int(self.key.rpartition(":")[2])
        except ValueError:
            return False

    def harmless(self, event: str, key: str, fields: dict[str, Any], csrf: bool) -> dict[str, Any]:
        """`fields`, changed where the command would be a legitimate one: with the session's
        token, a cancel is a real cancel, and an answer to the current step a real answer if
        its fields are valid; its age is made invalid then."""
        if csrf and event == "answer" and self.names_the_step(key):
            return {**fields, "age": "x" + str(fields.get("age", ""))}
        return fields

    def check(self) -> None:
        """The properties that hold after any number of hostile inputs."""
        assert self.app.errors == []
        assert run_state(self.db_url, self.id) == self.state
        _, revision = parse_id(page_position(self.http.get(self.path).text))
        assert revision < 10_000  # no request moved the page's revision but by rendering

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def run(serve: Serve, db_url: str) -> Iterator[Run]:
    """A server with one run at its first step; checked again after the test."""
    app = Guarded(wizard_app(signup, secret=SECRET, url=db_url, title="Signup", settle=0))
    started = Run(serve(app), db_url, app)
    yield started
    started.close()


def test_random_websocket_frames(run: Run) -> None:
    """Any frame — a command with random fields, arbitrary JSON, text, bytes, deep or large —
    gets an `error` or `reply` envelope on the same open connection."""
    url = f"ws://127.0.0.1:{run.server.port}{run.path}/_live/ws"
    with connect(url, origin=run.server.url, additional_headers={"Cookie": run.cookie}) as ws:
        first = json.loads(ws.recv(timeout=20))
        assert first["type"] == "snapshot"

        commands = st.fixed_dictionaries(
            {},
            optional={
                "type": st.just("event") | JSON,
                "ref": TEXT | JSON,
                "csrf": st.just(run.csrf) | JSON,
                "event": st.sampled_from(EVENTS) | JSON,
                "key": st.sampled_from([run.key, "answer:0", "answer:-1", "answer:٣"])
                | TEXT
                | JSON,
                "params": st.dictionaries(st.sampled_from(FIELDS) | TEXT, VALUES) | JSON,
            },
        ).map(lambda c: json.dumps(legitimate_removed(run, c)))
        frames = (
            commands
            | JSON.map(json.dumps)
            | st.text(max_size=200)
            | st.binary(max_size=200)
            | st.integers(9, 5_000).map(lambda n: "[" * n + "]" * n)
            | st.integers(9, 20_000).map(lambda n: '{"type":"event","params":' + "{" * n)
            | st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + 64).map(lambda n: " " * n)
        )

        @SETTINGS
        @given(frames)
        def send(frame: str | bytes) -> None:
            ws.send(frame)
            while True:
                answer = json.loads(ws.recv(timeout=20))  # ConnectionClosed if it dropped
                if answer["type"] in ("error", "reply"):
                    break
            if answer["type"] == "error":
                assert answer["code"] in ("too_large", "too_deep", "invalid", "csrf")

        send()
    run.check()


def legitimate_removed(run: Run, command: dict[str, Any]) -> dict[str, Any]:
    """A random command, minus what would be a real command of the session (see `harmless`)."""
    csrf = command.get("csrf") == run.csrf
    event, key, params = command.get("event"), command.get("key"), command.get("params")
    if csrf and event == "cancel":
        return {**command, "csrf": "not the token"}
    if isinstance(event, str) and isinstance(key, str) and isinstance(params, dict):
        return {**command, "params": run.harmless(event, key, params, csrf)}
    return command


HEADER = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)


def test_random_http_requests(run: Run) -> None:
    """Any method, path, query, headers and body: a status below 500."""
    paths = st.sampled_from(
        [run.path, run.path + "/_live/sse", run.path + "/_live/ws", "/", "/_live/sse", "/runs/"]
    ) | st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["/", "/runs/", run.path + "/", "/_live/static/", "//"]),
        st.text(max_size=30),
    )
    queries = st.lists(
        st.tuples(st.sampled_from(["last_event_id", "run_id", ""]) | TEXT, TEXT | HEADER),
        max_size=3,
    )
    headers = st.fixed_dictionaries(
        {},
        optional={
            "Last-Event-ID": HEADER | st.integers(0, 10**40).map(str),
            "Origin": st.sampled_from([run.server.url, "http://evil.example", "null"]) | HEADER,
            "X-Live": st.sampled_from(["1", "0"]) | HEADER,
            "X-CSRF-Token": st.just(run.csrf) | HEADER,
            "Content-Type": st.sampled_from(
                [
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "multipart/form-data",
                    "application/json",
                ]
            )
            | HEADER,
            "Cookie": st.sampled_from([run.cookie, "live_session=forged", ""]) | HEADER,
        },
    )
    forms = st.dictionaries(st.sampled_from(FIELDS) | TEXT, TEXT).map(
        lambda d: urlencode(d).encode()
    )
    parts = st.lists(
        st.tuples(
            st.sampled_from([f.encode() for f in FIELDS]) | st.binary(max_size=12),
            st.binary(max_size=40),
            st.none() | st.binary(max_size=12),
        ),
        max_size=4,
    ).map(_multipart)
    bodies = st.binary(max_size=300) | forms | parts

    @SETTINGS
    @given(
        st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]), paths, queries, headers, bodies
    )
    def request(
        method: str, path: str, query: list[tuple[str, str]], head: dict[str, str], body: bytes
    ) -> None:
        if "X-CSRF-Token" in head or run.csrf.encode() in body:
            body = body.replace(b"cancel", b"cancer")  # a real cancel is not hostile
        url = httpx.URL(run.server.url).copy_with(raw_path=_raw(path, query))
        with (
            httpx.Client(timeout=20) as client,
            client.stream(
                method,
                url,
                headers={k: v.encode("latin-1") for k, v in head.items()},
                content=body if method != "GET" else None,
            ) as response,
        ):
            assert response.status_code < 500, (method, path, query, head, body)

    request()
    run.check()


def _multipart(parts: list[tuple[bytes, bytes, bytes | None]]) -> bytes:
    # Parts with any bytes as names, values and file names, for `boundary=x`.
    body = b""
    for name, value, filename in parts:
        extra = b"" if filename is None else b'; filename="' + filename + b'"'
        body += b'--x\r\nContent-Disposition: form-data; name="' + name + b'"' + extra
        body += b"\r\n\r\n" + value + b"\r\n"
    return body + b"--x--\r\n"


def _raw(path: str, query: list[tuple[str, str]]) -> bytes:
    # Any text as a path: percent-encoded where HTTP needs it, the rest sent as it is.
    raw = quote(path if path.startswith("/") else "/" + path, safe="/%:@!$&'()*+,;=~")
    return (raw + ("?" + urlencode(query) if query else "")).encode("ascii")


def test_random_answers_to_the_form(run: Run) -> None:
    """Random answers posted as the page's form (with the session's token and the step's key,
    with or without JavaScript): refused with 303/422 and the step kept, never a 500."""
    fields = st.dictionaries(st.sampled_from(FIELDS[:3]) | TEXT, VALUES, max_size=6)

    @SETTINGS
    @given(fields, st.booleans(), st.sampled_from([run.key, "answer:0", "answer:٣", "answer:"]))
    def answer(values: dict[str, Any], live: bool, key: str) -> None:
        values = run.harmless("answer", key, values, True)
        data = {**values, "_csrf": run.csrf, "_event": "answer", "_key": key}
        response = run.http.post(run.path, data=data, headers={"X-Live": "1"} if live else {})
        assert response.status_code in ((200, 422) if live else (303,)), response.text[:300]
        if live:
            assert response.json()["type"] == "reply"

    answer()
    run.check()
