"""What changed between two task-tree snapshots, as the lines a terminal prints.

Both renderers (plain text and rich) print the same log of changes: a task started, output
lines, progress crossing a tenth, a task finished. The tracker remembers what it already
printed, so it can be fed every snapshot (one per change of the tree) or only some of them
(a throttled feed, or the stored tree of a run in another process): whatever it skipped is
summarised by the next snapshot, never printed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from effects.tasks import ROOT, OutputLine, TaskNode, TaskSnapshot

Kind = Literal["start", "line", "dropped", "progress", "end"]


@dataclass(frozen=True, slots=True)
class Change:
    """One printable change of one node: `depth` is its nesting below the root."""

    kind: Kind
    node: TaskNode
    depth: int
    text: str = ""
    line: OutputLine | None = None  # for kind "line": the line (its `kind` says how to show it)


@dataclass(slots=True)
class _Seen:
    status: str = ""
    last_seq: int = 0
    count: int = 0
    tenth: int = -1


@dataclass(slots=True)
class ChangeTracker:
    """Turns successive snapshots into the `Change`s not yet reported."""

    _seen: dict[int, _Seen] = field(default_factory=dict)
    _version: int = -1

    def changes(self, snapshot: TaskSnapshot) -> list[Change]:
        """The changes from the last snapshot given to this one (none for an older one)."""
        if snapshot.version <= self._version:
            return []
        self._version = snapshot.version
        out: list[Change] = []
        depths: dict[int, int] = {}
        for node in snapshot.nodes:
            depth = 0 if node.parent is None else depths.get(node.parent, -1) + 1
            depths[node.id] = depth
            seen = self._seen.get(node.id)
            if seen is None:
                seen = self._seen[node.id] = _Seen()
                if node.id != ROOT:
                    out.append(Change("start", node, depth, node.title))
            self._lines(node, depth, seen, out)
            self._progress(node, depth, seen, out)
            if node.finished and seen.status != node.status and node.id != ROOT:
                out.append(Change("end", node, depth, _ending(node)))
            seen.status = node.status
        return out

    @staticmethod
    def _lines(node: TaskNode, depth: int, seen: _Seen, out: list[Change]) -> None:
        new = [line for line in node.lines if line.seq > seen.last_seq]
        # Lines written to the node but no longer held (beyond the tree's per-task bound)
        # and never printed: counted, since they cannot be shown.
        lost = node.dropped + len(node.lines) - seen.count - len(new)
        if lost > 0:
            out.append(Change("dropped", node, depth, f"... {lost} lines not shown"))
        for line in new:
            out.append(Change("line", node, depth, line.text, line))
        seen.count = node.dropped + len(node.lines)
        if new:
            seen.last_seq = new[-1].seq

    @staticmethod
    def _progress(node: TaskNode, depth: int, seen: _Seen, out: list[Change]) -> None:
        fraction = node.fraction
        if fraction is None or node.finished:
            return
        tenth = int(fraction * 10)
        if tenth > seen.tenth:
            seen.tenth = tenth
            if 0 < tenth < 10:  # 0% is the start, 100% the end: both printed anyway
                out.append(Change("progress", node, depth, _progress_text(node)))


def _progress_text(node: TaskNode) -> str:
    fraction = node.fraction or 0.0
    return f"{fraction:4.0%}  ({_number(node.current)}/{_number(node.total or 0)})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _ending(node: TaskNode) -> str:
    if node.status == "failed":
        return f"failed: {node.error}" if node.error else "failed"
    return node.status
