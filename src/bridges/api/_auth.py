"""Who is calling the JSON API: the live bridge's session cookie, or a bearer token.

A caller is reduced to a `Session` of `bridges.live`: its owner tag prefixes the ids of the
runs it starts, and whether it may see a run is `session.owns(run_id)`, a comparison valid in
every process. So the API needs no table of users or runs either, and a browser's cookie gives
the same runs on the pages and in the API (same secret, same session).

- Cookie sessions (`cookies=True`) follow the pages' rules: a POST needs the session's CSRF
  token in the `X-CSRF-Token` header and an `Origin`, if any, of this server (or one of
  `allowed_origins`).
- Bearer tokens (`bearer=verify`): `Authorization: Bearer <token>`; `verify(token)` returns the
  user's id (or None: 401). A token is not sent by browsers on their own, so no CSRF token is
  asked for. Each user id is one owner, in every process and across restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from bridges.live import Session, Sessions, same_origin

Verify = Callable[[str], "str | Awaitable[str | None] | None"]
"""`verify(token)`: the id of the user a bearer token belongs to, or None to refuse it."""

MAX_TOKEN = 4096  # characters of a bearer token looked at (a longer one is refused unread)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the `Session` its runs belong to, and how it proved it
    (`"session"`: the cookie, whose POSTs need the CSRF token; `"bearer"`: a token)."""

    session: Session
    via: Literal["session", "bearer"]


class AuthError(Exception):
    """Authentication failed: `status` 401 (who are you?) or 403 (not from here, no CSRF)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Auth:
    """Authenticates API requests (see the module docstring for the rules)."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        https_only: bool = False,
        cookies: bool = True,
        bearer: Verify | None = None,
        allowed_origins: frozenset[str] = frozenset(),
    ) -> None:
        if not cookies and bearer is None:
            raise ValueError("the JSON API needs cookies=True or a bearer verify function")
        # The pages' own session rules: the same secret reads the same cookie.
        self.sessions = Sessions(secret, https_only=https_only)
        self.cookies = cookies
        self.bearer = bearer
        self.allowed_origins = allowed_origins
        key = secret.encode() if isinstance(secret, str) else secret
        self._user_key = hmac.new(key, b"bridges.api|bearer", hashlib.sha256).digest()

    async def caller(self, conn: HTTPConnection, *, unsafe: bool) -> Caller:
        """The caller of a request; `unsafe` (a POST) adds the session's CSRF checks.
        Raises `AuthError`."""
        header = conn.headers.get("authorization")
        if header is not None:
            # A request that names a token is judged by it alone: a bad token is not
            # rescued by a cookie the browser happened to send along.
            return await self._bearer(header)
        if not self.cookies:
            raise AuthError(401, "unauthenticated", "send Authorization: Bearer <token>")
        session = self.sessions.load(conn)
        if session is None:
            raise AuthError(401, "unauthenticated", "no session: GET /session first")
        if unsafe:
            if not same_origin(conn, self.allowed_origins):
                raise AuthError(403, "forbidden", "a request from a foreign origin")
            if not self.sessions.check_csrf(session, conn.headers.get("x-csrf-token")):
                raise AuthError(403, "csrf", "missing or invalid X-CSRF-Token header")
        return Caller(session, "session")

    async def _bearer(self, header: str) -> Caller:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if self.bearer is None or scheme.lower() != "bearer" or not token:
            raise AuthError(401, "unauthenticated", "this API takes no such Authorization")
        if len(token) > MAX_TOKEN:
            raise AuthError(401, "unauthenticated", "invalid token")
        verdict = self.bearer(token)
        user = await verdict if inspect.isawaitable(verdict) else verdict
        if not user:
            raise AuthError(401, "unauthenticated", "invalid token")
        return Caller(self.sessions.make(self.bearer_session_id(str(user))), "bearer")

    def bearer_session_id(self, user: str) -> str:
        """The session id standing for bearer user `user`: derived from the secret, so the
        same in every process, unguessable, and never equal to a cookie session's id (those
        are random)."""
        mac = hmac.new(self._user_key, user.encode(), hashlib.sha256).digest()
        return "u." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")
