"""Sessions, CSRF tokens, run ids bound to a session, and the Origin check."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import HTTPConnection
from starlette.responses import Response

from bridges.live._session import COOKIE, Sessions, _b64, same_origin

SECRET = "a-secret-that-is-long-enough"


def conn(
    headers: dict[str, str] | None = None, kind: str = "http", scheme: str = "http"
) -> HTTPConnection:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": kind, "headers": raw, "scheme": scheme, "path": "/", "query_string": b""}
    scope["server"] = ("127.0.0.1", 8000)
    return HTTPConnection(scope)


def test_new_session_sets_a_signed_cookie_that_loads_back() -> None:
    """A new session is saved as a signed cookie; the cookie loads the same session."""
    sessions = Sessions(SECRET)
    session = sessions.load_or_create(conn())
    assert session.new
    response = Response()
    sessions.save(response, session)
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower()
    assert "samesite=lax" in cookie.lower()
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    loaded = sessions.load(conn({"cookie": f"{COOKIE}={value}"}))
    assert loaded is not None
    assert (loaded.id, loaded.csrf, loaded.owner_tag) == (
        session.id,
        session.csrf,
        session.owner_tag,
    )
    assert not loaded.new


def test_tampered_or_foreign_cookie_is_no_session() -> None:
    """A cookie not signed with this secret gives no session."""
    other = Sessions("another-secret-long-enough")
    response = Response()
    other.save(response, other.load_or_create(conn()))
    value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    assert Sessions(SECRET).load(conn({"cookie": f"{COOKIE}={value}"})) is None
    assert Sessions(SECRET).load(conn({"cookie": f"{COOKIE}=garbage"})) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    """Each session has its own CSRF token; none other passes."""
    sessions = Sessions(SECRET)
    a, b = sessions.make("a"), sessions.make("b")
    assert sessions.check_csrf(a, a.csrf)
    assert not sessions.check_csrf(a, b.csrf)
    assert not sessions.check_csrf(a, None)
    assert not sessions.check_csrf(a, "")


def test_run_ids_are_owned_by_their_session_only() -> None:
    """A run id made by a session is recognised by it and by no other session."""
    sessions = Sessions(SECRET)
    a, b = sessions.make("a"), sessions.make("b")
    run_id = a.new_run_id()
    assert a.owns(run_id)
    assert not b.owns(run_id)
    assert run_id != a.new_run_id()
    assert len(run_id.split(".", 1)[1]) >= 21  # 128 random bits


def test_short_secret_is_refused() -> None:
    """A secret too short to sign with is a configuration mistake."""
    with pytest.raises(ValueError, match="16 bytes"):
        Sessions("short")


@pytest.mark.parametrize(
    ("headers", "kind", "expected"),
    [
        ({"host": "example.org", "origin": "http://example.org"}, "http", True),
        ({"host": "example.org", "origin": "http://evil.example"}, "http", False),
        ({"host": "example.org"}, "http", True),
        ({"host": "example.org"}, "websocket", False),
        ({"host": "example.org", "origin": "http://example.org"}, "websocket", True),
        ({"host": "example.org", "origin": "https://trusted.example"}, "websocket", True),
        ({"host": "example.org", "origin": "null"}, "websocket", False),
    ],
)
def test_origin_check(headers: dict[str, str], kind: str, expected: bool) -> None:
    """Same origin passes, foreign origins fail, and a WebSocket must send an Origin."""
    allowed = frozenset({"https://trusted.example"})
    assert same_origin(conn(headers, kind), allowed) is expected


def test_persistent_secret_is_generated_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret file is created once (mode 0600) and read back; $LIVE_SECRET wins."""
    from bridges.live import persistent_secret

    monkeypatch.delenv("LIVE_SECRET", raising=False)
    path = tmp_path / "app.secret"
    first = persistent_secret(path)
    assert len(first) >= 32
    assert persistent_secret(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("LIVE_SECRET", "from-env")
    assert persistent_secret(path) == "from-env"


def test_run_ids_never_start_with_a_dash() -> None:
    """Run ids are typed on command lines, where a leading "-" reads as an option; ids made
    before that rule (tag starting with "-") still belong to their session."""
    sessions = Sessions(SECRET)
    dashed = [
        s
        for s in (sessions.make(str(i)) for i in range(2000))
        if _b64(sessions._mac("owner", s.id)).startswith("-")
    ]
    assert dashed  # about 1 session in 64
    for session in dashed:
        run_id = session.new_run_id()
        assert not run_id.startswith("-")
        assert session.owns(run_id)
        assert session.owns("-" + run_id[1:])  # an id made before the rule
    assert all(not sessions.make(str(i)).new_run_id().startswith("-") for i in range(2000))


def test_the_owned_prefixes_are_what_owns_accepts() -> None:
    """`run_id_prefixes` (how the JSON API finds a caller's runs in the store) names exactly
    the ids `owns` accepts: the tag, and its older "-" spelling for a tag starting with "_"."""
    sessions = Sessions(SECRET)
    for i in range(300):
        session = sessions.make(str(i))
        prefixes = session.run_id_prefixes()
        run_id = session.new_run_id()
        assert run_id.startswith(prefixes[0])
        for prefix in prefixes:
            assert session.owns(prefix + "x")
        if session.owner_tag.startswith("_"):
            assert prefixes == (run_id.split(".")[0] + ".", "-" + run_id[1:].split(".")[0] + ".")
        else:
            assert len(prefixes) == 1
