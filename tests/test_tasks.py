"""Task trees, progress and output: `task`, `Progress`, `Output`, `Print` and `TaskTree`."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pydantic
import pytest

from effects import (
    Cancelled,
    Output,
    OutputLine,
    Print,
    Progress,
    Suspend,
    TaskSnapshot,
    TaskTree,
    Yield,
    computation,
    run,
    start,
    task,
    with_handler,
)
from effects.durable import EffectLogger


def ticks(n: int, total: int | None = None) -> Generator[Any, Any, int]:
    if total is not None:
        yield Progress(0, total)
    for _ in range(n):
        yield Progress.step()
    return n


def test_task_runs_its_computation_as_a_node() -> None:
    """A task node is created, runs, completes, and the task returns the computation's value."""
    seen: list[TaskSnapshot] = []
    assert run(task("Count", ticks(3)), TaskTree(seen.append)) == 3
    statuses = [s.nodes[1].status for s in seen if len(s.nodes) > 1]
    assert statuses[0] == "created"
    assert statuses[1] == "running"
    assert statuses[-1] == "completed"
    node = seen[-1].node(1)
    assert (node.parent, node.title, node.current) == (0, "Count", 3)


def test_failed_task_records_the_error_and_reraises() -> None:
    """An exception fails the node with its text and propagates unchanged."""
    tree = TaskTree()

    def boom() -> Generator[Any, Any, None]:
        yield Progress.step()
        raise KeyError("missing")

    def main() -> Generator[Any, Any, TaskSnapshot]:
        try:
            yield from task("Boom", boom())
        except KeyError:
            pass
        return (yield Yield("look"))

    outcome = start(main(), tree)
    assert type(outcome) is Suspend
    snapshot = outcome.data[TaskTree]
    assert snapshot.node(1).status == "failed"
    assert snapshot.node(1).error == "KeyError: 'missing'"


def test_cancelled_run_cancels_its_open_tasks() -> None:
    """Cancelling a run suspended inside nested tasks marks them cancelled, innermost first."""
    seen: list[TaskSnapshot] = []

    def inner() -> Generator[Any, Any, None]:
        yield Yield("wait")

    outcome = start(task("Outer", task("Inner", inner())), TaskTree(seen.append))
    assert type(outcome) is Suspend
    assert type(outcome.cancel("stop")) is Cancelled
    last = seen[-1]
    assert [last.node(2).status, last.node(1).status] == ["cancelled", "cancelled"]
    order = [s.nodes[2].status for s in seen if len(s.nodes) > 2 and s.nodes[2].finished]
    assert order[0] == "cancelled"


def test_progress_goes_to_the_innermost_open_task() -> None:
    """Progress and output land on the innermost open task; outside any task, on the root."""

    def main() -> Generator[Any, Any, TaskSnapshot]:
        yield Progress(1, 4)
        yield from task("A", task("B", ticks(2, total=5)))
        yield Output("after")
        return (yield Yield("end"))

    outcome = start(main(), TaskTree())
    assert type(outcome) is Suspend
    snap = outcome.data[TaskTree]
    assert (snap.root.current, snap.root.total) == (1, 4)
    assert snap.node(2).parent == 1
    # A completed task with a total shows it full, even if its last ticks were skipped.
    assert (snap.node(2).current, snap.node(2).total) == (5, 5)
    assert snap.node(1).total is None
    assert [line.text for line in snap.root.lines] == ["after"]


def test_progress_total_is_kept_and_fraction_is_bounded() -> None:
    """`Progress(current)` keeps the known total; `fraction` stays within [0, 1]."""

    def main() -> Generator[Any, Any, None]:
        yield Progress(2, 10)
        yield Progress(4)
        yield Progress.step(20)
        yield Yield("end")

    outcome = start(main(), TaskTree())
    assert type(outcome) is Suspend
    root = outcome.data[TaskTree].root
    assert (root.current, root.total, root.fraction) == (24, 10, 1.0)


def test_output_lines_have_increasing_sequence_numbers_across_tasks() -> None:
    """Every line gets the next `seq` of the tree, whichever task it belongs to."""

    def main() -> Generator[Any, Any, None]:
        yield Output("a\nb")
        yield from task("T", _say("c"))
        yield Output("d")
        yield Yield("end")

    outcome = start(main(), TaskTree())
    assert type(outcome) is Suspend
    snap = outcome.data[TaskTree]
    assert snap.root.lines == (OutputLine(1, "a"), OutputLine(2, "b"), OutputLine(4, "d"))
    assert snap.node(1).lines == (OutputLine(3, "c"),)


def _say(text: str) -> Generator[Any, Any, None]:
    yield Output(text)


def test_print_buffers_until_a_newline_and_flushes_at_task_end() -> None:
    """`Print` works like print: sep and end, partial lines held until complete or the end."""

    def body() -> Generator[Any, Any, None]:
        yield Print("loaded", 3, "rows", sep="-", end="")
        yield Print(" ok")
        yield Print("half", end="")

    seen: list[TaskSnapshot] = []
    run(task("P", body()), TaskTree(seen.append))
    during = [s.node(1).partial for s in seen if len(s.nodes) > 1]
    assert "loaded-3-rows" in during
    assert [line.text for line in seen[-1].node(1).lines] == ["loaded-3-rows ok", "half"]
    assert seen[-1].node(1).partial == ""


def test_output_keeps_the_newest_lines_and_counts_dropped_ones() -> None:
    """Beyond `max_lines` the oldest lines go, and `dropped` says how many."""

    def main() -> Generator[Any, Any, None]:
        for i in range(7):
            yield Output(str(i))
        yield Yield("end")

    outcome = start(main(), TaskTree(max_lines=3))
    assert type(outcome) is Suspend
    root = outcome.data[TaskTree].root
    assert [line.text for line in root.lines] == ["4", "5", "6"]
    assert root.dropped == 4


def test_snapshots_are_immutable_and_serializable() -> None:
    """A snapshot does not change afterwards and round-trips through dicts and JSON."""
    seen: list[TaskSnapshot] = []
    run(task("S", ticks(2, total=2)), TaskTree(seen.append, title="run"))
    early, last = seen[2], seen[-1]
    assert early.node(1).current == 0
    assert last.node(1).current == 2
    assert last.version > early.version
    assert TaskSnapshot.from_dict(last.to_dict()) == last
    adapter = pydantic.TypeAdapter(TaskSnapshot)
    assert adapter.validate_json(adapter.dump_json(last)) == last
    assert last.root.title == "run"
    assert last.root.status == "completed"


def test_each_installation_has_a_tree_of_its_own() -> None:
    """One handler object used for two runs gives each run its own tree."""
    tree = TaskTree()
    first = start(_task_then_yield("one"), tree)
    second = start(_task_then_yield("two"), tree)
    assert type(first) is Suspend
    assert type(second) is Suspend
    assert [n.title for n in first.data[TaskTree].nodes[1:]] == ["one"]
    assert [n.title for n in second.data[TaskTree].nodes[1:]] == ["two"]


def _task_then_yield(title: str) -> Generator[Any, Any, None]:
    yield from task(title, ticks(1))
    yield Yield("end")


def test_task_tree_is_replayable() -> None:
    """The tree is in-memory, deterministic state: replayable, and pure."""
    assert TaskTree.replayable
    assert TaskTree.pure


@computation(name="tests.tasks.two_steps", version=1)
def two_steps() -> Generator[Any, Any, str]:
    def first() -> Generator[Any, Any, None]:
        yield Progress(1, 2)
        yield Print("one")

    yield from task("first", first())
    answer: str = yield Yield("go?")

    def second() -> Generator[Any, Any, None]:
        yield Progress.step()
        yield Output("two")

    yield from task("second", second())
    return answer


def test_replay_rebuilds_the_tree_without_reporting_it() -> None:
    """Cold resume: the replay rebuilds the tree quietly (it was reported the first time); the
    first live change reports the whole tree, with the same ids and line numbers."""
    first_run: list[TaskSnapshot] = []
    outcome = start(with_handler(two_steps(), EffectLogger()), TaskTree(first_run.append))
    assert type(outcome) is Suspend
    log = outcome.data[EffectLogger]
    # Task effects are replayed, not recorded: the log holds the Yield only.
    assert [e.effect.rsplit(".", 1)[-1] for e in log.entries] == ["Yield"]

    resumed: list[TaskSnapshot] = []
    cold = start(with_handler(two_steps(), EffectLogger(log)), TaskTree(resumed.append))
    assert type(cold) is Suspend
    assert resumed == []
    assert cold.data[TaskTree].nodes == first_run[-1].nodes

    done = cold.resume("yes")
    assert done.value == "yes"  # type: ignore[union-attr]
    after = resumed[0]
    assert after.node(1).title == "first"
    assert after.node(1).lines == (OutputLine(1, "one"),)
    assert after.node(2).title == "second"
    assert resumed[-1].node(2).lines == (OutputLine(2, "two"),)


def test_unknown_status_is_an_error() -> None:
    """A status outside the life cycle is refused."""
    from effects._std.tasks import SetTaskStatus, StartTask

    def main() -> Generator[Any, Any, None]:
        node = yield StartTask("x")
        yield SetTaskStatus(node, "paused")

    with pytest.raises(ValueError, match="unknown task status"):
        run(main(), TaskTree())
