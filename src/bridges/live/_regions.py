"""Regions and revisions: the page as a set of `id`-keyed HTML fragments, each stamped with the
revision at which it last changed.

The projection holds the newest HTML of every region and nothing else: no history, no queue.
A client that missed any number of changes catches up by reading the current fragments, and a
client that gets a fragment twice or out of order keeps the one with the higher revision.
Revisions are compared only within one `epoch` (one incarnation of the page); a client that
meets a new epoch takes the full set of regions it comes with.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Region:
    """One region: its `id`, its `html` and the `rev` (page revision) it last changed at."""

    id: str
    html: str
    rev: int


MAX_REVISION = 2**53 - 1
"""The largest revision a page issues: every id stays an exact integer in JavaScript."""


def new_epoch() -> str:
    """A fresh page epoch: 64 random bits, hex (no `.`, so an event id splits unambiguously)."""
    return secrets.token_hex(8)


class Projection:
    """The regions of one page, its `epoch` and its monotonically increasing `revision`.

    The epoch names this incarnation of the page: a page mounted again (after a restart, an
    eviction, in another process) has a new epoch, and its revisions start again from 0. A
    revision is therefore only comparable with revisions of the same epoch, and the pair is
    what goes over the wire as an event id, `<epoch>.<revision>`. Revisions are bounded by
    `limit`: the update that would pass it starts a new epoch instead.
    """

    def __init__(self, *, limit: int = MAX_REVISION) -> None:
        self.epoch = new_epoch()
        self.revision = 0
        self.limit = limit
        self._regions: dict[str, Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    def __contains__(self, region_id: object) -> bool:
        return region_id in self._regions

    def __getitem__(self, region_id: str) -> Region:
        return self._regions[region_id]

    @property
    def ids(self) -> list[str]:
        """Region ids in page order."""
        return list(self._regions)

    @property
    def event_id(self) -> str:
        """The current position as a wire id: `<epoch>.<revision>`."""
        return f"{self.epoch}.{self.revision}"

    def update(self, rendered: Mapping[str, str]) -> list[str]:
        """Take a full render (every region's HTML, in page order); return the ids that changed.

        The revision moves once per update that changes anything, and every changed region is
        stamped with it. A region missing from `rendered` becomes empty (it keeps its place).
        At `limit` the projection starts a new epoch: every region is restamped and reported
        changed (the caller must resend everything, see `Page._publish`).
        """
        changed = [
            rid
            for rid, html in rendered.items()
            if (old := self._regions.get(rid)) is None or old.html != html
        ]
        gone = [rid for rid, r in self._regions.items() if rid not in rendered and r.html]
        if not changed and not gone:
            return []
        rotate = self.revision >= self.limit
        if rotate:
            self.epoch = new_epoch()
            self.revision = 0
        self.revision += 1
        rev = self.revision
        regions: dict[str, Region] = {}
        for rid, html in rendered.items():
            old = self._regions.get(rid)
            keep = old is not None and old.html == html and not rotate
            regions[rid] = old if keep and old is not None else Region(rid, html, rev)
        for rid, old in self._regions.items():
            if rid not in rendered:
                regions[rid] = Region(rid, "", rev) if old.html or rotate else old
        self._regions = regions
        return list(regions) if rotate else changed + gone

    def since(self, last_event_id: str | None) -> int | None:
        """The revision a client's `Last-Event-ID` names, if this projection issued it: the
        current epoch and a revision not above the current one. Anything else (absent,
        malformed, another epoch, a revision never reached) is None: the client gets
        everything. Only ids the server issued are trusted, so a forged id changes nothing."""
        if not last_event_id or len(last_event_id) > 64:
            return None
        epoch, dot, number = last_event_id.strip().partition(".")
        if not dot or epoch != self.epoch or not (number.isascii() and number.isdigit()):
            return None
        revision = int(number)  # at most 64 characters: cheap
        return revision if revision <= self.revision else None

    def envelope(self, kind: str, ids: Iterable[str] | None = None, **extra: Any) -> dict[str, Any]:
        """The wire form: `{"type": kind, "epoch": E, "revision": R, "regions": {id: {"rev",
        "html"}}}`.

        `ids=None` means every region (a snapshot).
        """
        chosen = self._regions.values() if ids is None else (self._regions[i] for i in ids)
        return {
            "type": kind,
            "epoch": self.epoch,
            "revision": self.revision,
            "regions": {r.id: {"rev": r.rev, "html": r.html} for r in chosen},
            **extra,
        }
