"""The commands a client sends over the WebSocket, bounded and validated before any use.

A frame is untrusted input from the network: it is measured before it is parsed, its nesting
is measured without recursion before the JSON parser sees it, and it is then validated into a
`WsCommand` (strict types, bounded strings). Whatever fails becomes a `BadMessage`, which the
bridge answers with an `error` envelope; the connection stays open and nothing reaches the view.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_MESSAGE = 64 * 1024
"""The largest frame taken, in characters (a text frame) or bytes (a binary one)."""

MAX_DEPTH = 8
"""The deepest nesting of arrays and objects taken (a command needs 3: `{"params": {"a": []}}`)."""

MAX_ERRORS = 20  # validation errors reported in one envelope

# A JSON string, escapes included; what is left outside strings is the message's structure.
# The alternatives cannot overlap, so a hostile string cannot make the regex backtrack.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIR = re.compile(r"\[\]|\{\}")


def json_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic errors as plain JSON: `loc`, `msg` and `type` only (the error context may hold
    exception objects, and the input may be large)."""
    return [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


class WsCommand(BaseModel):
    """A command sent over the WebSocket (the same as a command form; see
    docs/live/protocol.md): `type` "event", the client's `ref` echoed in the answer, the
    session's `csrf` token, the `event` name, its idempotency `key` and its `params` (a string
    or a list of strings per field)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    type: Literal["event"]
    ref: str | None = Field(default=None, max_length=64)
    csrf: str = Field(max_length=256)
    event: str = Field(default="", max_length=256)
    key: str = Field(default="", max_length=256)
    params: dict[str, str | list[str]] = Field(default_factory=dict)

    def fields(self) -> dict[str, list[str]]:
        """The parameters with every value as a list, as a form posts them."""
        return {k: [v] if isinstance(v, str) else list(v) for k, v in self.params.items()}


class BadMessage(Exception):
    """A frame that is not a valid command: `code` (`too_large`, `too_deep`, `invalid`,
    `csrf`), a message for people, the frame's `ref` when one could be read, and the
    validation `errors`."""

    def __init__(
        self,
        code: str,
        msg: str,
        ref: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.ref = ref
        self.errors = errors or []

    def envelope(self) -> dict[str, Any]:
        """The `error` envelope that answers the frame."""
        return {
            "type": "error",
            "ref": self.ref,
            "code": self.code,
            "msg": self.msg,
            "errors": self.errors,
        }


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` deep in `text` (JSON or not),
    brackets inside strings not counted. Linear and without recursion, so safe on any input."""
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text))
    # Fast path, at C speed: each pass removes the innermost pairs, one level of nesting.
    reduced = skeleton
    for _ in range(limit):
        reduced, removed = _PAIR.subn("", reduced)
        if not reduced:
            return False
        if not removed:
            break
    # Something is left: deeper than `limit`, or unbalanced. Count, stopping past the limit.
    depth = 0
    for char in skeleton:
        depth += 1 if char in "[{" else -1
        if depth > limit:
            return True
    return False


def _ref(text: str) -> str | None:
    # The ref of a frame refused after its depth check: parsing it again is bounded.
    try:
        value = pydantic_core.from_json(text)
    except ValueError:
        return None
    ref = value.get("ref") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= 64 else None


def parse_command(frame: str | bytes | None) -> WsCommand:
    """Validate one frame into a `WsCommand`, or raise `BadMessage`."""
    if frame is None:
        raise BadMessage("invalid", "an empty frame")
    if len(frame) > MAX_MESSAGE:
        raise BadMessage("too_large", f"a message may have at most {MAX_MESSAGE} bytes")
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("invalid", "a binary frame must be UTF-8 JSON") from None
    if too_deep(frame):
        raise BadMessage("too_deep", f"a message may nest at most {MAX_DEPTH} levels")
    try:
        return WsCommand.model_validate_json(frame)
    except ValidationError as err:
        errors = json_errors(err.errors(include_url=False, include_input=False))
        raise BadMessage(
            "invalid", "expected an event envelope", _ref(frame), errors[:MAX_ERRORS]
        ) from None
