"""`TerminalView`: a run's task tree, progress and output in a terminal.

The same `TaskSnapshot`s a page renders (from `TaskTree(on_change=...)` or a durable runner's
`on_tasks`) are shown as text. Two renderers share one log of changes (`ChangeTracker`):

- plain text (not a TTY, or `style="plain"`): one line per change — a task started, its output
  lines, its progress at every tenth, its end — so the text reads well in a CI log or a pipe;
- rich (a TTY with `rich` installed, or `style="rich"`): output lines scroll above a live tree
  with a progress bar per task, redrawn a few times a second whatever the rate of changes.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal, TextIO

from effects.tasks import TaskNode, TaskSnapshot

from ._changes import Change, ChangeTracker

Style = Literal["auto", "rich", "plain"]

# Output, titles and errors are data: a control character in them (an escape sequence that
# clears the screen or moves the cursor, a carriage return that overwrites the line) is shown
# escaped, never sent to the terminal as is. Tabs stay.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c != 0x09}


def clean(text: str) -> str:
    """`text` with its control characters escaped (`\\x1b`), safe to print on a terminal."""
    return text.translate(_CONTROLS)


_ICONS = {"created": "·", "running": "▸", "completed": "✓", "failed": "✗", "cancelled": "⊘"}
_ASCII_ICONS = {"created": ".", "running": ">", "completed": "+", "failed": "x", "cancelled": "-"}


class TerminalView:
    """Shows task-tree snapshots in a terminal: `TaskTree(on_change=view.update)`.

    `file` defaults to standard output. `style="auto"` picks rich when `file` is a TTY and the
    `rich` package is installed (`pip install 'effects-live[terminal]'`), plain text otherwise.
    `refresh` is the rich tree's redraw interval in seconds. Use it as a context manager (or
    call `close()`) so the last state is drawn and the terminal is left tidy.

    `update` is cheap and may be called for every change of the tree, from the thread running
    the computation; it never blocks on the terminal's redraw.
    """

    def __init__(
        self,
        file: TextIO | None = None,
        *,
        style: Style = "auto",
        refresh: float = 0.1,
    ) -> None:
        self.file = file if file is not None else sys.stdout
        if style == "auto":
            style = "rich" if _isatty(self.file) and _have_rich() else "plain"
        if style not in ("rich", "plain"):
            raise ValueError(f"style must be 'auto', 'rich' or 'plain', not {style!r}")
        self.style: Literal["rich", "plain"] = style
        self._icons = _ICONS if _can_encode(self.file, "".join(_ICONS.values())) else _ASCII_ICONS
        self._tracker = ChangeTracker()
        self._lock = threading.Lock()
        self._snapshot: TaskSnapshot | None = None
        self._live: Any = None
        self._closed = False
        if style == "rich":
            self._live = _RichLive(self, refresh)

    def update(self, snapshot: TaskSnapshot) -> None:
        """Show `snapshot` (a newer tree than the last one shown; older ones are ignored)."""
        with self._lock:
            if self._closed:
                return
            if self._snapshot is not None and snapshot.version <= self._snapshot.version:
                return
            self._snapshot = snapshot
            changes = self._tracker.changes(snapshot)
            if self._live is not None:
                self._live.changed(changes)
            else:
                self._print_plain(changes)

    def write(self, text: str) -> None:
        """Print a line of text (a question, a message) outside the tree."""
        with self._lock:
            if self._live is not None:
                from rich.text import Text

                self._live.console.print(Text(clean(text)), soft_wrap=True)
            else:
                self.file.write(clean(text) + "\n")
                self.file.flush()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop redrawing while the terminal is used for something else (reading an answer):
        the live tree is drawn once and redrawn below what was written meanwhile."""
        with self._lock:
            live = self._live
            if live is not None:
                live.stop()
        try:
            yield
        finally:
            with self._lock:
                if live is not None and not self._closed:
                    self._live = _RichLive(self, live.refresh)

    def close(self) -> None:
        """Draw the last state and release the terminal (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._live is not None:
                self._live.stop()
            self.file.flush()

    def __enter__(self) -> TerminalView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plain text ---------------------------------------------------------------------

    def _print_plain(self, changes: list[Change]) -> None:
        if not changes:
            return
        write = self.file.write
        for change in changes:
            write(self.plain_line(change))
            write("\n")
        self.file.flush()

    def plain_line(self, change: Change) -> str:
        """The line plain-text mode prints for `change`."""
        node, indent = change.node, "  " * max(change.depth - 1, 0)
        text, title = clean(change.text), clean(node.title)
        if change.kind == "line" or change.kind == "dropped":
            if change.line is not None and change.line.kind != "text":
                text = _clean_lines(block_text(change.line.kind, change.text))
            # The root's output is the run's own: unindented, like a script's print.
            if change.depth == 0:
                return text
            return "\n".join(f"{indent}  | {part}" for part in text.split("\n"))
        if change.kind == "progress":
            return f"{indent}  {title}  {text}"
        if change.kind == "start":
            return f"{indent}{self._icons['running']} {title}"
        suffix = "" if node.status == "completed" else f"  ({text})"
        return f"{indent}{self._icons[node.status]} {title}{suffix}"

    def icon(self, node: TaskNode) -> str:
        """The status mark shown before a task's title."""
        return self._icons[node.status]


class _RichLive:
    """The rich renderer: output lines printed above a live tree of the tasks."""

    def __init__(self, view: TerminalView, refresh: float) -> None:
        from rich.console import Console
        from rich.live import Live

        self.view = view
        self.refresh = refresh
        self.console = Console(file=view.file, force_terminal=True, highlight=False)
        self.live = Live(
            get_renderable=self.render,
            console=self.console,
            refresh_per_second=max(1.0, 1.0 / refresh) if refresh > 0 else 10.0,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def changed(self, changes: list[Change]) -> None:
        from rich.text import Text

        for change in changes:
            if change.kind in ("line", "dropped"):
                # Text objects, never markup: a line of output is data, "[red]" included.
                prefix = "" if change.depth == 0 else "  " * change.depth + "│ "
                style = "dim" if change.kind == "dropped" else ""
                line = change.line
                if line is not None and line.kind in ("markdown", "table"):
                    self.console.print(rich_block(line.kind, line.text))
                    continue
                text = change.text if line is None else block_text(line.kind, change.text)
                self.console.print(Text(prefix + clean(text), style=style), soft_wrap=True)

    def stop(self) -> None:
        self.live.refresh()
        self.live.stop()

    def render(self) -> Any:
        from rich.text import Text
        from rich.tree import Tree

        snapshot = self.view._snapshot
        if snapshot is None:
            return Text("")
        root = snapshot.root
        tree = Tree(self.label(root))
        branches: dict[int, Any] = {root.id: tree}
        for node in snapshot.nodes[1:]:
            parent = branches.get(node.parent if node.parent is not None else root.id, tree)
            branches[node.id] = parent.add(self.label(node))
        return tree

    def label(self, node: TaskNode) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        colour = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(node.status)
        title = Text(f"{self.view.icon(node)} {clean(node.title) or 'run'}", style=colour or "")
        row = Table.grid(padding=(0, 1))
        row.add_column()
        row.add_column(width=24)
        row.add_column()
        if node.total:
            bar = ProgressBar(total=node.total, completed=min(node.current, node.total), width=24)
            row.add_row(title, bar, Text(f"{node.fraction or 0:.0%}"))
        elif node.status == "running" and node.current:
            row.add_row(title, ProgressBar(total=None, width=24), Text(f"{node.current:g}"))
        else:
            row.add_row(title, Text(""), Text(clean(node.error or ""), style="red"))
        if node.partial:
            grid = Table.grid()
            grid.add_row(row)
            grid.add_row(Text("  " + clean(node.partial), style="dim"))
            return grid
        return row


def _clean_lines(text: str) -> str:
    return "\n".join(clean(part) for part in text.split("\n"))


def block_text(kind: str, text: str) -> str:
    """An output block as plain text: Markdown as written, HTML without its tags, a table as
    aligned columns."""
    if kind == "html":
        return html.unescape(re.sub(r"<[^>]*>", "", text))
    if kind == "table":
        try:
            data = json.loads(text)
            rows = [[str(c) for c in data["columns"]]] + [
                [str(cell) for cell in row] for row in data["rows"]
            ]
        except (ValueError, KeyError, TypeError):
            return text
        widths = [
            max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))
        ]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
    return text


def rich_block(kind: str, text: str) -> Any:
    """An output block as a rich renderable (Markdown rendered, a table drawn); escape
    sequences in it are escaped like any output."""
    from rich.markdown import Markdown
    from rich.table import Table

    if kind == "markdown":
        return Markdown(_clean_lines(text))
    try:
        data = json.loads(text)
        table = Table(*[clean(str(c)) for c in data["columns"]])
        for row in data["rows"]:
            table.add_row(*[clean(str(cell)) for cell in row])
    except (ValueError, KeyError, TypeError):
        from rich.text import Text

        return Text(clean(text))
    return table


def _isatty(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def _have_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _can_encode(file: TextIO, text: str) -> bool:
    encoding = getattr(file, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
