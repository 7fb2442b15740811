"""Sessions, CSRF tokens and run ids bound to the session that started them.

A session is an unguessable random id in a signed cookie (itsdangerous). Everything else is
derived from it with HMACs under the app's secret, so nothing needs to be stored:

- the CSRF token is `HMAC(secret, "csrf", session)`: bound to the session, stateless, and the
  same in every tab;
- a run id is `<owner tag>.<128 random bits>`, the owner tag being `HMAC(secret, "owner",
  session)` cut short. Whether a session owns a run is a comparison, valid across restarts and
  processes; another session cannot forge the tag and gets 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

COOKIE = "live_session"
_TAG_LENGTH = 16  # characters of base64url: 96 bits of the owner HMAC


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _tag(text: str) -> str:
    # A run id is typed on command lines (`python -m effects runs show ID`), where a leading "-"
    # reads as an option: tags never start with one. Ids made before this rule began with "-"
    # where the tag now has "_", so both spellings name the same owner.
    return "_" + text[1:] if text.startswith("-") else text


@dataclass(frozen=True, slots=True)
class Session:
    """The browser session a request belongs to: `id` (secret, never rendered into pages),
    `csrf` (the token forms must send back) and `owner_tag` (the prefix of the run ids it owns).
    """

    id: str
    csrf: str
    owner_tag: str
    new: bool = False

    def owns(self, run_id: str) -> bool:
        """Whether `run_id` was created by this session (`new_run_id`)."""
        tag = _tag(run_id.split(".", 1)[0])
        return hmac.compare_digest(tag.encode(), self.owner_tag.encode())

    def run_id_prefixes(self) -> tuple[str, ...]:
        """The prefixes of the run ids this session owns (what `owns` accepts), to find them
        in the store by prefix: the owner tag and, for a tag starting with "_", its older
        spelling with "-"."""
        tag = self.owner_tag
        if tag.startswith("_"):
            return (f"{tag}.", f"-{tag[1:]}.")
        return (f"{tag}.",)

    def new_run_id(self) -> str:
        """A fresh, unguessable run id owned by this session."""
        return f"{self.owner_tag}.{secrets.token_urlsafe(16)}"

    def run_id_for(self, key: str) -> str:
        """The run id this session's command with idempotency key `key` starts: the same for
        the same key in every process (so a POST repeated on another server process starts
        no second run), unguessable without the session's secret id, owned by this session."""
        mac = hmac.new(self.id.encode(), f"run|{key}".encode(), hashlib.sha256).digest()
        return f"{self.owner_tag}.{_b64(mac[:16])}"


class Sessions:
    """Reads and writes the session cookie and derives the tokens of a session."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        cookie: str = COOKIE,
        https_only: bool = False,
        max_age: int | None = 14 * 24 * 3600,
    ) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < 16:
            raise ValueError("the live bridge's secret must be at least 16 bytes long")
        self._key = key
        self._signer = URLSafeSerializer(key, salt="bridges.live.session")
        self.cookie = cookie
        self.https_only = https_only
        self.max_age = max_age

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._key, f"{purpose}|{value}".encode(), hashlib.sha256).digest()

    def make(self, session_id: str, *, new: bool = False) -> Session:
        """The `Session` for a session id."""
        return Session(
            id=session_id,
            csrf=_b64(self._mac("csrf", session_id)),
            owner_tag=_tag(_b64(self._mac("owner", session_id))[:_TAG_LENGTH]),
            new=new,
        )

    def load(self, conn: HTTPConnection) -> Session | None:
        """The session of a request or WebSocket, or None without a valid cookie."""
        raw = conn.cookies.get(self.cookie)
        if not raw:
            return None
        try:
            session_id = self._signer.loads(raw)
        except BadSignature:
            return None
        if not isinstance(session_id, str):
            return None
        return self.make(session_id)

    def load_or_create(self, conn: HTTPConnection) -> Session:
        """The request's session, or a new one (`new=True`: `save` must set the cookie)."""
        return self.load(conn) or self.make(secrets.token_urlsafe(32), new=True)

    def save(self, response: Response, session: Session) -> None:
        """Set the cookie on `response` if the session is new."""
        if session.new:
            response.set_cookie(
                self.cookie,
                self._signer.dumps(session.id),
                max_age=self.max_age,
                httponly=True,
                samesite="lax",
                secure=self.https_only,
            )

    def check_csrf(self, session: Session, token: str | None) -> bool:
        """Whether `token` is the session's CSRF token (constant-time comparison)."""
        return token is not None and hmac.compare_digest(token.encode(), session.csrf.encode())


def same_origin(conn: HTTPConnection, allowed: frozenset[str]) -> bool:
    """Whether the request's `Origin` is the server's own origin or one of `allowed`.

    A missing Origin is accepted for plain HTTP (old browsers and non-browser clients send
    none; the CSRF token still protects them) but not for WebSockets, which browsers always
    send it on and which carry no CSRF token.
    """
    origin = conn.headers.get("origin")
    if origin is None:
        return bool(conn.scope["type"] == "http")
    if origin in allowed:
        return True
    host = conn.headers.get("host")
    if not host:
        return False
    scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
    return origin == f"{scheme}://{host}"


def persistent_secret(path: str | os.PathLike[str], *, env: str = "LIVE_SECRET") -> str:
    """The signing secret for sessions and CSRF tokens: `$LIVE_SECRET` if set, otherwise a
    random one generated on first use and kept in the file `path` (mode 0600), so that
    sessions — and the runs bound to them — survive a server restart."""
    if secret := os.environ.get(env):
        return secret
    file = Path(path)
    try:
        # O_EXCL: two processes starting at once agree on the first one's secret.
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    secret = file.read_text().strip()
    if not secret:
        raise ValueError(f"the secret file {file} is empty; delete it to generate a new one")
    return secret
