"""Task trees, progress and output: `task(title, comp)`, `Progress`, `Output`, `Print`, `TaskTree`.

A computation reports what it is doing as effects; the `TaskTree` handler keeps the tree in
memory and hands an immutable snapshot to `on_change` after every change. Nothing here knows
about the web: the live bridge supplies `on_change`.

Durable runs: `TaskTree` is *replayable* (in memory and deterministic, like `State`). An effect
logger re-executes it on replay instead of recording it, so the tree of a cold-resumed run is
rebuilt from the log with the same node ids and line numbers — at no I/O cost. While the logger
replays it calls `TaskTree.replay` instead of the handler: the tree is rebuilt but `on_change`
stays quiet, because the progress being replayed was streamed when it first happened. The first
live change after the replay reports the whole rebuilt tree.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .._computation import Computation
from .._effect import Effect
from .._exceptions import Cancellation
from .._handler import Handler, handles
from .._threads import to_loop

T = TypeVar("T")

TaskStatus = Literal["created", "running", "completed", "failed", "cancelled"]
OutputKind = Literal["text", "markdown", "html", "table"]
"""What an output line holds: plain text (the default), Markdown source, HTML marked safe by
the computation, or a table (JSON: `{"columns": [...], "rows": [[...], ...]}`). Front-ends
render each kind (the page as HTML, a terminal as text); a front-end that knows only text shows
the `text` as it is."""
"""The life of a task node: created → running → completed | failed | cancelled."""

ROOT = 0
"""The id of the root node: the run itself. Progress and output outside any `task` land here."""


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line of a task's output. `seq` is unique and increasing within the tree, so a client
    that merges lines by `seq` can apply the same line twice without showing it twice."""

    seq: int
    text: str
    kind: OutputKind = "text"


@dataclass(frozen=True, slots=True)
class TaskNode:
    """One node of the task tree (immutable; a change replaces the node)."""

    id: int
    parent: int | None
    title: str
    status: TaskStatus
    current: float = 0
    total: float | None = None
    lines: tuple[OutputLine, ...] = ()
    partial: str = ""
    dropped: int = 0
    error: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    shared: bool = False

    @property
    def fraction(self) -> float | None:
        """Progress as a number in [0, 1], or None while the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.current / self.total))

    @property
    def finished(self) -> bool:
        """Whether the node reached a final status."""
        return self.status in ("completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """The whole tree at one moment: `nodes` in creation order, `nodes[0]` being the root.

    `version` grows with every change. Snapshots share unchanged nodes with their predecessors,
    so taking one costs a tuple of references. `to_dict()` gives plain JSON-ready data;
    `pydantic.TypeAdapter(TaskSnapshot)` serializes and validates it too.
    """

    version: int
    nodes: tuple[TaskNode, ...]

    @property
    def root(self) -> TaskNode:
        """The root node (the run itself)."""
        return self.nodes[ROOT]

    def node(self, node_id: int) -> TaskNode:
        """The node with id `node_id`."""
        return self.nodes[node_id]

    def children(self, node_id: int) -> list[TaskNode]:
        """The direct children of `node_id`, in creation order."""
        return [n for n in self.nodes if n.parent == node_id]

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain data (lists, dicts, str, numbers, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSnapshot:
        """Rebuild a snapshot from `to_dict()` output."""
        nodes = []
        for raw in data["nodes"]:
            fields = dict(raw)
            fields["lines"] = tuple(OutputLine(**line) for line in fields.get("lines", ()))
            fields["meta"] = dict(fields.get("meta") or {})
            nodes.append(TaskNode(**fields))
        return cls(version=data["version"], nodes=tuple(nodes))


# -- effects -------------------------------------------------------------------------------


class StartTask(Effect[int]):
    """Create a child of `parent` (default: the innermost open task); the result is the new
    node's id. `shared` marks it visible to everyone who may see a shared task (see `task`)."""

    title: str
    parent: int | None = None
    shared: bool = False


class SetTaskMeta(Effect[None]):
    """Set metadata of node `id`: `values` are merged into its `meta` (replacing it with
    `replace=True`). Values are JSON data (str, numbers, bool, None, lists, dicts)."""

    id: int
    values: Mapping[str, Any]
    replace: bool = False


class CurrentTask(Effect["TaskHandle"]):
    """The handle of the innermost open task (the root when none is open)."""


class SetTaskStatus(Effect[None]):
    """Move node `id` to `status` (a final status also closes it and flushes its `Print`
    buffer); `error` describes a failure."""

    id: int
    status: str
    error: str | None = None


class ProgressStep(Effect[None]):
    """Advance the innermost open task's progress by `n`."""

    n: float = 1


class Progress(Effect[None]):
    """Set the innermost open task's progress: `yield Progress(3, 10)`.

    `total=None` keeps the total already known (a task without one shows indeterminate
    progress). `yield Progress.step()` advances by one, `Progress.step(n)` by `n`.
    """

    current: float
    total: float | None = None

    @staticmethod
    def step(n: float = 1) -> ProgressStep:
        """The effect that advances the innermost open task's progress by `n`."""
        return ProgressStep(n)


class Output(Effect[None]):
    """Append `text` to the innermost open task's output, one line per line of `text`.

    `kind` other than "text" appends one block rendered by the front-end: build those with
    `Output.markdown(text)`, `Output.html(markup, safe=...)` and `Output.table(rows, ...)`.
    """

    text: str
    kind: str = "text"

    @staticmethod
    def markdown(text: str) -> Output:
        """A block of Markdown (CommonMark; raw HTML in it is shown as text, not rendered)."""
        return Output(text, "markdown")

    @staticmethod
    def html(markup: str, *, safe: bool = False) -> Output:
        """A block of HTML. Escaped (shown as the text it is) unless `safe=True` says the
        computation built it from trusted parts: then the page renders it as HTML."""
        return Output(markup, "html" if safe else "text")

    @staticmethod
    def table(
        rows: Iterable[Sequence[Any] | Mapping[str, Any]],
        columns: Sequence[str] | None = None,
    ) -> Output:
        """A table: `rows` are sequences (with `columns` as the header) or mappings (the
        header is `columns`, default the keys in first-seen order). Cells are shown as text."""
        rows = list(rows)
        if columns is None:
            seen: dict[str, None] = {}
            for row in rows:
                if isinstance(row, Mapping):
                    seen.update(dict.fromkeys(map(str, row)))
            columns = list(seen)
        header = [str(c) for c in columns]
        body = [
            [_cell(row.get(c)) for c in header]
            if isinstance(row, Mapping)
            else [_cell(v) for v in row]
            for row in rows
        ]
        return Output(json.dumps({"columns": header, "rows": body}), "table")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


class Print(Effect[None]):
    """`print` into the innermost open task's output: `yield Print("loaded", n, "rows")`.

    Like the built-in, arguments are joined with `sep` and followed by `end`; text is buffered
    until a newline completes a line (the unfinished part shows as the node's `partial`), and
    the buffer is flushed when the task ends.
    """

    args: tuple[Any, ...]
    sep: str
    end: str

    def __init__(self, *args: Any, sep: str = " ", end: str = "\n") -> None:
        self._args = args
        self._sep = sep
        self._end = end

    def __repr__(self) -> str:
        return f"Print({', '.join(map(repr, self._args))})"

    @property
    def text(self) -> str:
        """What `print` would have written."""
        return self._sep.join(map(str, self._args)) + self._end


def task(title: str, comp: Computation[T], /, *, shared: bool = False) -> Generator[Any, Any, T]:
    """Run `comp` as a node of the run's task tree: `x = yield from task("Import", load())`.

    The node is created under the innermost open task, runs, and ends `completed` when `comp`
    returns, `failed` (with the error's text) when it raises and `cancelled` when the run is
    cancelled; the exception propagates unchanged. Progress and output inside `comp` belong to
    this node.

    `shared=True` shares this task (and its sub-tasks) beyond the run: a front-end shows it to
    everyone who may see shared tasks even when the run itself is private (the live bridge at
    `/runs/{run_id}/tasks/{task_id}`).
    """
    node: int = yield StartTask(title, None, shared)
    yield SetTaskStatus(node, "running")
    try:
        result = yield from comp
    except GeneratorExit:
        # The run was abandoned: nobody is left to answer an effect.
        raise
    except Cancellation:
        yield SetTaskStatus(node, "cancelled")
        raise
    except BaseException as err:
        yield SetTaskStatus(node, "failed", f"{type(err).__name__}: {err}")
        raise
    yield SetTaskStatus(node, "completed")
    return result


def open_task(title: str, /, *, shared: bool = False) -> Generator[Any, Any, TaskHandle]:
    """Open a task under the innermost open one and return its handle, for code that ends it
    itself (`handle.close()`, `handle.fail(...)`) rather than with `task(title, comp)`.
    `shared` as for `task`."""
    node: int = yield StartTask(title, None, shared)
    yield SetTaskStatus(node, "running")
    return TaskHandle(node)


class OpenWriter(Effect["TaskWriter"]):
    """A file-like writer into node `id`'s output (see `TaskHandle.writer`)."""

    id: int
    total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """A task of the run's tree, by id: what `open_task`, `subtask` and `CurrentTask` return.

    Its methods build effects; yield them: `yield handle.update(rows=120)`,
    `yield handle.close()`, `child = yield from handle.subtask("Save")`,
    `w = yield from handle.writer()`. A handle is plain data (it can be logged and compared).
    """

    id: int

    def update(self, **values: Any) -> SetTaskMeta:
        """Merge `values` (JSON data) into the task's metadata."""
        return SetTaskMeta(self.id, values)

    def set_meta(self, values: Mapping[str, Any]) -> SetTaskMeta:
        """Replace the task's metadata with `values` (JSON data)."""
        return SetTaskMeta(self.id, dict(values), True)

    def close(self) -> SetTaskStatus:
        """End the task `completed` (its progress is set to its total)."""
        return SetTaskStatus(self.id, "completed")

    def fail(self, error: str) -> SetTaskStatus:
        """End the task `failed`, with `error` describing why."""
        return SetTaskStatus(self.id, "failed", error)

    def subtask(self, title: str, *, shared: bool = False) -> Generator[Any, Any, TaskHandle]:
        """Open a child of this task (whichever task is innermost) and return its handle."""
        node: int = yield StartTask(title, self.id, shared)
        yield SetTaskStatus(node, "running")
        return TaskHandle(node)

    def writer(self, *, total_bytes: int | None = None) -> Generator[Any, Any, TaskWriter]:
        """A file-like writer into this task's output (see `TaskWriter`). With `total_bytes`
        the task's progress counts the bytes written against it."""
        writer: TaskWriter = yield OpenWriter(self.id, total_bytes)
        return writer


class TaskWriter(io.TextIOBase):
    """A file-like object whose writes land in a task's output, line by line.

    `print(..., file=w)`, `shutil.copyfileobj(src, w)` (text or bytes: bytes are decoded as
    UTF-8, invalid sequences replaced) and `logging` through `w.log_handler()` all work. Lines
    appear as they are completed (the unfinished rest shows as the node's `partial`); the
    writer is closed when its task ends. Writes must come from the computation's thread or
    from a `Call` (the async runner's worker threads are handed back to the run's loop).

    Durable runs: what a writer writes is live output — shown, streamed and kept in the stored
    tree — but not an effect, so a replay does not re-create it: a run continued after a
    restart shows the lines its log implies (`Output`, `Print`) plus what it writes from then
    on. Use `Output`/`Print` for lines that must survive a replay.
    """

    def __init__(self, tree: TaskTree, node_id: int, *, count_bytes: bool = False) -> None:
        super().__init__()
        self._tree = tree
        self._node_id = node_id
        self._count_bytes = count_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()

    @property
    def task_id(self) -> int:
        """The id of the task this writer writes into."""
        return self._node_id

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return bool(self._tree._nodes[self._node_id].finished)

    def write(self, s: str | bytes | bytearray) -> int:
        """Append `s` to the task's output; returns how much was written (as given)."""
        if isinstance(s, (bytes, bytearray)):
            with self._lock:
                text = self._decoder.decode(bytes(s))
            nbytes = len(s)
        elif isinstance(s, str):
            text = s
            nbytes = len(s.encode("utf-8", "surrogatepass")) if self._count_bytes else 0
        else:
            raise TypeError(f"write() argument must be str or bytes, not {type(s).__name__}")
        if text or nbytes:
            self._tree._external_write(self._node_id, text, nbytes if self._count_bytes else 0)
        return len(s)

    def log_handler(self, level: int = logging.NOTSET, fmt: str | None = None) -> logging.Handler:
        """A `logging.Handler` writing each record (formatted with `fmt`) as a line here."""
        return _WriterHandler(self, level, fmt)


class _WriterHandler(logging.Handler):
    def __init__(self, writer: TaskWriter, level: int, fmt: str | None) -> None:
        super().__init__(level)
        self.writer = writer
        if fmt is not None:
            self.setFormatter(logging.Formatter(fmt))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_BLOCK_KINDS = frozenset({"markdown", "html", "table"})


def _json_object(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` as a dict of JSON data (checked: task trees are stored and sent as JSON)."""
    data = dict(values)
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"task metadata must be JSON data: {err}") from None
    if not all(isinstance(key, str) for key in data):
        raise ValueError("task metadata keys must be strings")
    return data


# -- handler -------------------------------------------------------------------------------


class TaskTree(Handler):
    """Keeps the run's task tree in memory and reports each change to `on_change(snapshot)`.

    `title` names the root node; `max_lines` bounds the lines kept per node (older lines are
    dropped and counted in `dropped`). `snapshot()` returns the current tree at any time and a
    suspension carries it in `Suspend.data[TaskTree]`.

    `on_change` is called synchronously after every change, with an immutable `TaskSnapshot`
    that is safe to hand to another task. It is meant to be cheap (store the snapshot, wake a
    publisher): throttling belongs to the consumer, which always has the newest snapshot and so
    never loses the final value.

    `report_rebuilt=True`: a tree rebuilt by a durable replay is reported once, whole, at the
    first of its first live change, the step's suspension and the step's end (by default only
    a live change reports it; a viewer that was not there when the replayed progress happened,
    such as another process after a recovery, needs the rebuilt tree even if the step then
    fails or waits for input at once).
    """

    pure = True
    replayable = True

    def __init__(
        self,
        on_change: Callable[[TaskSnapshot], None] | None = None,
        *,
        title: str = "",
        max_lines: int = 1000,
        report_rebuilt: bool = False,
    ) -> None:
        self.on_change = on_change
        self.title = title
        self.max_lines = max_lines
        self.report_rebuilt = report_rebuilt
        self._reset()

    def _reset(self) -> None:
        self._unreported = False  # replayed since the last report (with `report_rebuilt`)
        self._nodes: list[TaskNode] = [TaskNode(ROOT, None, self.title, "running")]
        self._open: list[int] = []
        self._seq = 0
        self._version = 0
        self._thread = threading.get_ident()

    def install(self) -> TaskTree:
        inst = super().install()
        inst._reset()  # each scope (each run) gets a tree of its own
        return inst

    def snapshot(self) -> TaskSnapshot:
        """The current tree."""
        return TaskSnapshot(self._version, tuple(self._nodes))

    # Effects are applied by `_apply`, shared by the live handler and by `replay`.

    def _apply(self, effect: Any) -> Any:
        etype = type(effect)
        if etype is ProgressStep:
            node = self._current()
            self._replace(node, current=node.current + effect.n)
            return None
        if etype is Progress:
            node = self._current()
            total = node.total if effect.total is None else effect.total
            self._replace(node, current=effect.current, total=total)
            return None
        if etype is Print:
            node = self._current()
            self._write(node, effect.text, buffered=True)
            return None
        if etype is Output:
            node = self._current()
            if effect.kind == "text":
                self._write(node, effect.text, buffered=False)
            elif effect.kind in _BLOCK_KINDS:
                self._block(node, effect.text, effect.kind)
            else:
                raise ValueError(f"unknown output kind {effect.kind!r}")
            return None
        if etype is StartTask:
            node_id = len(self._nodes)
            if effect.parent is None:
                parent = self._open[-1] if self._open else ROOT
            else:
                parent = self._node(effect.parent).id
            self._nodes.append(
                TaskNode(node_id, parent, effect.title, "created", shared=effect.shared)
            )
            self._open.append(node_id)
            self._version += 1
            return node_id
        if etype is SetTaskStatus:
            return self._set_status(effect.id, effect.status, effect.error)
        if etype is SetTaskMeta:
            node = self._node(effect.id)
            values = _json_object(effect.values)
            meta = values if effect.replace else {**node.meta, **values}
            self._replace(node, meta=meta)
            return None
        if etype is CurrentTask:
            return TaskHandle(self._current().id)
        if etype is OpenWriter:
            node = self._node(effect.id)
            if effect.total_bytes is not None:
                self._replace(node, current=0, total=effect.total_bytes)
            return TaskWriter(self, node.id, count_bytes=effect.total_bytes is not None)
        raise TypeError(f"TaskTree does not handle {effect!r}")

    def _node(self, node_id: int) -> TaskNode:
        if not 0 <= node_id < len(self._nodes):
            raise ValueError(f"no task {node_id} in this tree")
        return self._nodes[node_id]

    def _block(self, node: TaskNode, text: str, kind: str) -> None:
        # A rich block is one line of its own: a pending Print fragment is finished first.
        changes = self._append(node, [node.partial]) if node.partial else {}
        node = self._replace(node, partial="", **changes)
        self._replace(node, **self._append(node, [text], kind=kind))

    def _external_write(self, node_id: int, text: str, nbytes: int) -> None:
        """A `TaskWriter` wrote `text` (`nbytes` counted as progress): applied and reported in
        the thread that runs the computation."""
        if threading.get_ident() != self._thread:
            try:
                to_loop(self._external_write, node_id, text, nbytes)
            except RuntimeError:
                raise RuntimeError(
                    "a TaskWriter was written from a thread the run does not know: write "
                    "from the computation's thread or from a Call (a worker thread of the "
                    "async runner)"
                ) from None
            return
        node = self._nodes[node_id]
        if node.finished:
            raise ValueError(f"task {node.title!r} is {node.status}: its writer is closed")
        if nbytes:
            node = self._replace(node, current=node.current + nbytes)
        self._write(node, text, buffered=True)
        self._changed(None)

    def _current(self) -> TaskNode:
        return self._nodes[self._open[-1] if self._open else ROOT]

    def _replace(self, node: TaskNode, **changes: Any) -> TaskNode:
        new = dataclasses.replace(node, **changes)
        self._nodes[node.id] = new
        self._version += 1
        return new

    def _write(self, node: TaskNode, text: str, *, buffered: bool) -> None:
        if buffered:
            text = node.partial + text
            *complete, partial = text.split("\n")
        else:
            # Output is line-oriented: a pending Print fragment is finished first.
            complete = ([node.partial] if node.partial else []) + text.split("\n")
            partial = ""
        self._replace(node, partial=partial, **self._append(node, complete))

    def _append(self, node: TaskNode, texts: list[str], kind: str = "text") -> dict[str, Any]:
        if not texts:
            return {}
        new = []
        for text in texts:
            self._seq += 1
            new.append(OutputLine(self._seq, text, kind))  # type: ignore[arg-type]
        lines = node.lines + tuple(new)
        dropped = node.dropped
        if len(lines) > self.max_lines:
            dropped += len(lines) - self.max_lines
            lines = lines[-self.max_lines :]
        return {"lines": lines, "dropped": dropped}

    def _set_status(self, node_id: int, status: str, error: str | None) -> None:
        if status not in ("created", "running", "completed", "failed", "cancelled"):
            raise ValueError(f"unknown task status {status!r}")
        node = self._nodes[node_id]
        changes: dict[str, Any] = {"status": status, "error": error}
        if status in ("completed", "failed", "cancelled"):
            if node_id in self._open:
                self._open.remove(node_id)
            if node.partial:
                changes.update(self._append(node, [node.partial]), partial="")
            if status == "completed" and node.total:
                # A finished task is complete even if its last tick was throttled or skipped.
                changes["current"] = node.total
        self._replace(node, **changes)

    def _changed(self, result: Any) -> Any:
        self._unreported = False
        if self.on_change is not None:
            self.on_change(self.snapshot())
        return result

    @handles(
        StartTask,
        SetTaskStatus,
        Progress,
        ProgressStep,
        Output,
        Print,
        SetTaskMeta,
        CurrentTask,
        OpenWriter,
    )
    def _handle(self, effect: Any) -> Any:
        return self._changed(self._apply(effect))

    def replay(self, effect: Any) -> Any:
        """Used instead of the handler while a durable run replays: rebuild, don't report."""
        self._unreported = self.report_rebuilt
        return self._apply(effect)

    def _report_rebuilt(self) -> None:
        if self._unreported:
            self._changed(None)

    def output(self, value: Any) -> Any:
        root = self._nodes[ROOT]
        if not root.finished:
            self._set_status(ROOT, "completed", None)
            self._changed(None)
        return value

    def decorate(self, data: dict[Any, Any]) -> None:
        data[TaskTree] = self.snapshot()
        self._report_rebuilt()

    def cleanup(self) -> None:
        self._report_rebuilt()
