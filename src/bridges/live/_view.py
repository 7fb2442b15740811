"""The page API, LiveView style: `mount`, `handle_event`, `handle_info`, `render`.

A view holds the state of one page and renders it as regions. The bridge calls it one message
at a time (a page is a small actor), re-renders after every message and sends the regions that
changed to every connection of the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

if TYPE_CHECKING:
    from ._page import Page


class NotFound(Exception):
    """Raised by `LiveView.mount` (or anything it calls) when the page does not exist, or must
    not be shown to this session: the bridge answers 404."""


@dataclass(frozen=True, slots=True)
class Event:
    """A command sent by the page: a form POST or a WebSocket `event` envelope.

    `name` is the form's `_event` field, `params` every other field with all its values (a
    checkbox group sends several), `key` the idempotency key the form carried.
    """

    name: str
    params: Mapping[str, Sequence[str]]
    key: str = ""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of field `name`, or `default`."""
        values = self.params.get(name)
        return values[0] if values else default


@dataclass(slots=True)
class Reply:
    """What `handle_event` answers (None means `Reply()`: accepted).

    - `ok=False`: the command was refused (invalid input); its idempotency key is *not*
      consumed, so the corrected form can be sent again with the same key.
    - `errors`: pydantic-style errors (`{"loc": ..., "msg": ...}`) for the client.
    - `redirect`: where the browser goes next (a 303 without JavaScript).
    - `settle`: an event the bridge waits for (bounded by the app's `settle` time) before it
      answers a browser without JavaScript, so the page it loads next already shows the
      command's effect when it is quick.
    - `duplicate`: set by the bridge when the key was already used (nothing was done).
    - `retry_after`: with `ok=False`, the command was refused for now (a rate limit): the
      bridge answers `429 Too Many Requests` with a `Retry-After` of this many seconds.
    """

    ok: bool = True
    errors: list[dict[str, Any]] = field(default_factory=list)
    redirect: str | None = None
    settle: anyio.Event | None = None
    duplicate: bool = False
    retry_after: float | None = None


class LiveView:
    """Base class of a live page. Subclass it and override what you need.

    The bridge creates one view per session and URL (every tab of a session shows the same
    page state), calls `mount` once, then `handle_event` for each command and `handle_info` for
    each message sent with `page.send_info`, one at a time, and `render` after each of them.
    `render` must be a pure function of the view's state: it returns the HTML of every region,
    in page order (`{"main": ..., "status": ...}`); unchanged regions are not sent again.
    """

    layout: ClassVar[str] = "live/page.html"
    """The Jinja template of the whole document (it places the regions)."""

    region_attrs: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    """Attributes of a region's wrapper element, which stays in place while its content is
    replaced: `{"status": {"role": "status", "aria-live": "polite"}}` makes a live region
    that screen readers announce."""

    async def mount(self, page: Page) -> None:
        """Load the page's state (path parameters are in `page.params`); raise `NotFound` to
        answer 404."""

    async def refresh(self, page: Page) -> None:
        """Called before each full-page GET after the first (a reload, a `<noscript>`
        refresh): re-read state that may have changed without a message."""

    async def handle_event(self, event: Event, page: Page) -> Reply | None:
        """Handle a command sent by the page. The default refuses every event."""
        return Reply(ok=False, errors=[{"loc": (), "msg": f"unknown event {event.name!r}"}])

    async def handle_info(self, message: Any, page: Page) -> None:
        """Handle a message sent with `page.send_info` (from a background task, a run...)."""

    def render(self, page: Page) -> Mapping[str, str]:
        """The HTML of every region, in page order."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement render()")

    def title(self, page: Page) -> str:
        """The document title."""
        return page.app.title

    def busy(self, page: Page) -> bool:
        """Whether work is running that the page is waiting for. A busy page refreshes itself
        every few seconds when JavaScript is off (a `<noscript>` meta refresh)."""
        return False
