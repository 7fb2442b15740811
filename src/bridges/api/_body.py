"""Request bodies: bounded before they are read, JSON only, parsed by a pydantic model.

A body is untrusted input: its declared length is checked first, and the bytes actually
received are counted as they arrive (a client may lie about the length, or send none and
stream). The JSON parser (pydantic-core's) bounds nesting itself; what fails to parse or
validate becomes a `BodyError`, answered with a 4xx and no effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

M = TypeVar("M", bound=BaseModel)

MAX_ERRORS = 20  # validation errors reported in one response


class BodyError(Exception):
    """A request body refused: `status` (400, 413, 415, 422), a `code`, a message and
    pydantic's errors."""

    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


def json_errors(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """pydantic errors as plain JSON: `loc`, `msg` and `type` only (the input, which may be
    large or secret, and the context, which may hold exception objects, are left out)."""
    return [
        {
            "loc": [*prefix, *(p if isinstance(p, int) else str(p) for p in e.get("loc", ()))],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in list(errors)[:MAX_ERRORS]
    ]


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, at most `limit` bytes (else `BodyError` 413, read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyError(400, "bad_request", "an invalid Content-Length")
        if int(declared) > limit:
            raise BodyError(413, "too_large", f"a request body may have at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "too_large", f"a request body may have at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, model: type[M], limit: int, *, empty_ok: bool = False) -> M:
    """The request's JSON body validated into `model`. An empty body is `{}` when
    `empty_ok`. Raises `BodyError`: 415 (not JSON), 413, 400 (malformed JSON), 422."""
    body = await read_body(request, limit)
    if not body.strip() and empty_ok:
        body = b"{}"
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (empty_ok and body == b"{}"):
        # Also what keeps a cross-site HTML form (which cannot send this type) out.
        raise BodyError(415, "unsupported_media_type", "send the body as application/json")
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        if any(e.get("type") == "json_invalid" for e in errors):
            raise BodyError(400, "malformed", "the body is not valid JSON") from None
        raise BodyError(
            422, "invalid", "the request does not fit its schema", json_errors(errors)
        ) from None
