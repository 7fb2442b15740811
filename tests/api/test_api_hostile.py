"""Property-based tests (Hypothesis) of hostile requests to the JSON API on a real uvicorn
server: random methods, paths, run ids, headers (Authorization, X-CSRF-Token, Content-Type,
Origin, Last-Event-ID) and bodies (random JSON, random bytes, deep nesting, huge or lying
sizes), plus a few hand-picked ones.

The properties: every request gets a status below 500 and an `ApiError` JSON body when it is
refused; no exception escapes the app; and a refused request changes nothing stored (the
run's row and log, the number of runs).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from flows import build
from hostile import Guarded, run_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_client import LiveServer

Serve = Callable[[Any], LiveServer]

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = ["computation", "input", "key", "revision", "value", "reason", "user", "plan", "seats"]
BODY_OBJECTS = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), JSON, max_size=4)


class Target:
    """A suspended run of user ada, and what is stored about it."""

    def __init__(self, server: LiveServer, db_url: str, app: Guarded) -> None:
        self.server = server
        self.db_url = db_url
        self.app = app
        self.http = httpx.Client(
            base_url=server.url + "/api",
            timeout=20,
            headers={"Authorization": "Bearer token-ada"},
        )
        started = self.http.post(
            "/runs", json={"computation": "api_signup", "input": {"user": "ada"}}
        )
        assert started.status_code == 201, started.text
        self.id: str = started.json()["id"]
        with self.http.stream("GET", f"/runs/{self.id}/events") as response:
            for line in response.iter_lines():
                if line.startswith("data:") and '"status":"suspended"' in line:
                    break
        run = self.http.get(f"/runs/{self.id}").json()
        assert run["status"] == "suspended"
        self.revision: int = run["revision"]
        self.session = self.http.get("/session").json()

    def stored(self) -> tuple[Any, ...]:
        path = self.db_url.split(":///", 1)[1]
        with sqlite3.connect(path) as db:
            (count,) = db.execute("SELECT count(*) FROM effects_runs").fetchone()
        return (count, run_state(self.db_url, self.id))

    def check(self, response: httpx.Response, before: tuple[Any, ...]) -> None:
        assert response.status_code < 500, (response.status_code, response.text[:300])
        assert self.app.errors == [], self.app.errors
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body["error"], str), body
            assert isinstance(body["message"], str), body
            assert self.stored() == before


@pytest.fixture
def target(serve: Serve, db_url: str) -> Iterator[Target]:
    app = Guarded(build(db_url))
    server = serve(app)
    t = Target(server, db_url, app)
    yield t
    t.http.close()


def _paths(run_id: str) -> st.SearchStrategy[str]:
    ids = st.sampled_from([run_id, run_id + "x", "x" + run_id, "nope", "a.b", "%2e%2e", "."])
    ids = ids | st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
        min_size=1,
        max_size=30,
    )
    return st.one_of(
        st.just("/runs"),
        st.just("/session"),
        st.just("/computations"),
        ids.map(lambda i: f"/runs/{i}"),
        ids.map(lambda i: f"/runs/{i}/answer"),
        ids.map(lambda i: f"/runs/{i}/cancel"),
    )


def _headers() -> st.SearchStrategy[dict[str, str]]:
    # Values as a client can send them (httpx refuses leading or trailing whitespace).
    header_text = st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40
    ).map(str.strip)
    return st.fixed_dictionaries(
        {},
        optional={
            "Authorization": st.sampled_from(
                ["Bearer token-ada", "Bearer token-bob", "Bearer", "Basic abc", "Bearer x" * 600]
            )
            | header_text,
            "Content-Type": st.sampled_from(
                ["application/json", "text/plain", "application/x-www-form-urlencoded"]
            )
            | header_text,
            "X-CSRF-Token": header_text,
            "Origin": st.sampled_from(["https://evil.example", "null"]) | header_text,
            "Last-Event-ID": header_text,
        },
    )


def _bodies(revision: int) -> st.SearchStrategy[bytes]:
    near = st.fixed_dictionaries(
        {"revision": st.sampled_from([revision, revision - 1, 0, -1, 2**70]), "value": JSON}
    )
    return st.one_of(
        st.just(b""),
        st.binary(max_size=200),
        BODY_OBJECTS.map(lambda o: json.dumps(o).encode()),
        near.map(lambda o: json.dumps(o).encode()),
        JSON.map(lambda o: json.dumps(o).encode()),
        st.integers(min_value=10, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    )


def test_random_requests(target: Target) -> None:
    """Random requests: no 5xx, no escaping exception, and a refused one changes nothing."""

    @SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
        path = data.draw(_paths(target.id))
        headers = data.draw(_headers())
        body = data.draw(_bodies(target.revision)) if method != "GET" else b""
        before = target.stored()
        # A fresh client per request: no cookie or default Authorization carried over.
        with httpx.Client(base_url=target.server.url + "/api", timeout=20) as client:
            response = client.request(method, path, headers=headers, content=body)
        target.check(response, before)

    check()


def test_random_answers(target: Target) -> None:
    """Random answer bodies from the run's owner: validated before anything is stored."""

    @SETTINGS
    @given(body=_bodies(target.revision), media=st.sampled_from(["application/json", "x/y"]))
    def check(body: bytes, media: str) -> None:
        before = target.stored()
        response = target.http.post(
            f"/runs/{target.id}/answer", content=body, headers={"Content-Type": media}
        )
        target.check(response, before)
        assert response.status_code != 202 or media == "application/json"

    check()


def test_random_starts(target: Target) -> None:
    """Random start bodies: a start that is refused stores no run."""

    @SETTINGS
    @given(
        body=BODY_OBJECTS.map(lambda o: {"computation": "api_signup", **o})
        | st.fixed_dictionaries({"computation": st.just("api_signup"), "input": BODY_OBJECTS})
    )
    def check(body: dict[str, Any]) -> None:
        before = target.stored()
        response = target.http.post("/runs", json=body)
        target.check(response, before)

    check()


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, {}, 413, id="huge-deep"),
        pytest.param(
            b'{"revision": 1, "value": ' + b"[" * 3000 + b"]" * 3000 + b"}", {}, 400, id="deep"
        ),
        pytest.param(b'{"revision": 1, "value": "\\ud800"}', {}, None, id="lone-surrogate"),
        pytest.param(b"\xff\xfe{}", {}, 400, id="not-utf8"),
        pytest.param(b'{"revision": 1}', {"Content-Type": "text/plain"}, 415, id="not-json"),
    ],
)
def test_hand_picked_answers(
    target: Target, body: bytes, headers: dict[str, str], status: int | None
) -> None:
    before = target.stored()
    sent = {"Content-Type": "application/json", **headers}
    response = target.http.post(f"/runs/{target.id}/answer", content=body, headers=sent)
    if status is not None:
        assert response.status_code == status, response.text[:300]
    else:
        assert 400 <= response.status_code < 500, response.text[:300]
    target.check(response, before)


def test_a_lone_surrogate_in_a_start_stores_nothing(target: Target) -> None:
    before = target.stored()
    body = b'{"computation": "api_signup", "input": {"user": "\\ud800"}}'
    response = target.http.post("/runs", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    target.check(response, before)


@pytest.mark.parametrize(
    ("length", "status"), [("99999999", 413), ("-1", 400), ("1e3", 400), ("abc", 400)]
)
def test_lying_content_lengths(target: Target, length: str, status: int) -> None:
    """A declared length over the limit is refused before the body is read; one that is not
    a number is refused (by uvicorn or by the API). Nothing is stored either way."""
    before = target.stored()
    request = (
        f"POST /api/runs/{target.id}/answer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Authorization: Bearer token-ada\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n{{}}"
    ).encode()
    with socket.create_connection(("127.0.0.1", target.server.port), timeout=20) as sock:
        sock.sendall(request)
        head = sock.recv(200).decode("latin-1")
    assert head.startswith(f"HTTP/1.1 {status} "), head
    assert target.app.errors == []
    assert target.stored() == before
