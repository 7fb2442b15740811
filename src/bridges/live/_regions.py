"""Regions and revisions: the page as a set of `id`-keyed HTML fragments, each stamped with the
revision at which it last changed.

The projection holds the newest HTML of every region and nothing else: no history, no queue.
A client that missed any number of changes catches up by reading the current fragments, and a
client that gets a fragment twice or out of order keeps the one with the higher revision.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Region:
    """One region: its `id`, its `html` and the `rev` (page revision) it last changed at."""

    id: str
    html: str
    rev: int


def _clock_floor() -> int:
    # Revisions start from the wall clock in milliseconds, so a page mounted again after a
    # restart starts above the revisions its clients already hold (and Last-Event-ID covers
    # clock skew between processes).
    return time.time_ns() // 1_000_000


class Projection:
    """The regions of one page and the page's monotonically increasing `revision`."""

    def __init__(self) -> None:
        self.revision = _clock_floor()
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

    def update(self, rendered: Mapping[str, str]) -> list[str]:
        """Take a full render (every region's HTML, in page order); return the ids that changed.

        The revision moves once per update that changes anything, and every changed region is
        stamped with it. A region missing from `rendered` becomes empty (it keeps its place).
        """
        changed = [
            rid
            for rid, html in rendered.items()
            if (old := self._regions.get(rid)) is None or old.html != html
        ]
        gone = [rid for rid, r in self._regions.items() if rid not in rendered and r.html]
        if not changed and not gone:
            return []
        self.revision += 1
        rev = self.revision
        regions: dict[str, Region] = {}
        for rid, html in rendered.items():
            old = self._regions.get(rid)
            regions[rid] = old if old is not None and old.html == html else Region(rid, html, rev)
        for rid, old in self._regions.items():
            if rid not in rendered:
                regions[rid] = Region(rid, "", rev) if old.html else old
        self._regions = regions
        return changed + gone

    def raise_floor(self, revision: int) -> None:
        """Make sure the next revisions exceed `revision` (a client's Last-Event-ID that is
        ahead of this page, which happens after a restart); every region is restamped so that
        such a client accepts the next snapshot."""
        # Equal means the client already shows this page's state: restamping would make it
        # replace every region (and lose what the user typed) for nothing.
        if revision > self.revision:
            self.revision = revision + 1
            rev = self.revision
            self._regions = {rid: Region(rid, r.html, rev) for rid, r in self._regions.items()}

    def envelope(self, kind: str, ids: Iterable[str] | None = None, **extra: Any) -> dict[str, Any]:
        """The wire form: `{"type": kind, "revision": R, "regions": {id: {"rev", "html"}}}`.

        `ids=None` means every region (a snapshot).
        """
        chosen = self._regions.values() if ids is None else (self._regions[i] for i in ids)
        return {
            "type": kind,
            "revision": self.revision,
            "regions": {r.id: {"rev": r.rev, "html": r.html} for r in chosen},
            **extra,
        }
