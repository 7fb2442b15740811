"""bridges.terminal: the task tree, progress and output as text, and questions on a terminal."""

from __future__ import annotations

import io
from collections.abc import Generator
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bridges.terminal import ChangeTracker, TerminalView, arun_in_terminal, run_in_terminal
from effects import (
    Cancellation,
    Output,
    Print,
    Progress,
    TaskSnapshot,
    TaskTree,
    Yield,
    bracket,
    run,
    task,
)


def rows(n: int) -> Generator[Any, Any, int]:
    yield Progress(0, n)
    for i in range(n):
        yield Print("row", i)
        yield Progress.step()
    return n


def job() -> Generator[Any, Any, int]:
    n = yield from task("Load", rows(4))
    yield from task("Check", check())
    yield Output("all done")
    return n


def check() -> Generator[Any, Any, None]:
    yield from task("Inner", failing_then_caught())


def failing_then_caught() -> Generator[Any, Any, None]:
    yield Print("checking")


def test_plain_text_is_a_log_of_changes() -> None:
    out = io.StringIO()
    with TerminalView(out, style="plain") as view:
        assert run(job(), TaskTree(view.update)) == 4
    assert out.getvalue().splitlines() == [
        "▸ Load",
        "  | row 0",
        "  Load   25%  (1/4)",
        "  | row 1",
        "  Load   50%  (2/4)",
        "  | row 2",
        "  Load   75%  (3/4)",
        "  | row 3",
        "✓ Load",
        "▸ Check",
        "  ▸ Inner",
        "    | checking",
        "  ✓ Inner",
        "✓ Check",
        "all done",
    ]


def test_failed_and_cancelled_tasks_say_so() -> None:
    def boom() -> Generator[Any, Any, None]:
        yield Print("about to fail")
        raise ValueError("bad row 3")

    out = io.StringIO()
    with TerminalView(out, style="plain") as view, pytest.raises(ValueError, match="bad row"):
        run(task("Import", boom()), TaskTree(view.update))
    assert out.getvalue().splitlines()[-1] == "✗ Import  (failed: ValueError: bad row 3)"


def test_output_is_data_not_terminal_control() -> None:
    """Escape sequences and carriage returns in titles, output and errors are shown escaped,
    and rich markup is printed as text, in both styles."""

    def hostile() -> Generator[Any, Any, None]:
        yield Print("\x1b[2J\x1b[Hcleared?\rover\tTab [red]markup[/red]")

    for style in ("plain", "rich"):
        out = io.StringIO()
        with TerminalView(out, style=style) as view:  # type: ignore[arg-type]
            run(task("evil\x1b]0;title\x07", hostile()), TaskTree(view.update))
        text = out.getvalue().expandtabs()  # rich expands tabs itself
        assert "\\x1b[2J\\x1b[Hcleared?\\x0dover".expandtabs() in text, style
        assert "Tab [red]markup[/red]" in text, style
        assert "evil\\x1b]0;title\\x07" in text, style
        # (rich moves its own cursor with \r and CSI codes; never with ours)
        for control in ("\x1b[2J", "\x1b[H", "\x07"):
            assert control not in text, style
        if style == "plain":
            assert "\r" not in text
            assert "\x1b" not in text


def test_rich_draws_the_final_tree_with_bars() -> None:
    out = io.StringIO()
    with TerminalView(out, style="rich") as view:
        run(job(), TaskTree(view.update, title="import"))
    text = out.getvalue()
    last_frame = text[text.rindex("import") :]
    assert "✓ Load" in last_frame
    assert "✓ Check" in last_frame
    assert "✓ Inner" in last_frame
    assert "100%" in last_frame
    # Output lines scroll above the tree, each once.
    for i in range(4):
        assert text.count(f"row {i}") == 1
    assert text.count("all done") == 1


def test_auto_style_is_plain_when_not_a_terminal() -> None:
    assert TerminalView(io.StringIO()).style == "plain"
    with pytest.raises(ValueError, match="style"):
        TerminalView(io.StringIO(), style="fancy")  # type: ignore[arg-type]


def test_ascii_marks_when_the_terminal_cannot_encode_them() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    with TerminalView(out, style="plain") as view:
        run(task("Load", rows(1)), TaskTree(view.update))
    assert raw.getvalue().decode().splitlines() == ["> Load", "  | row 0", "+ Load"]


def test_a_skipping_feed_prints_each_line_once_and_counts_lost_ones() -> None:
    """Fed only some snapshots (a throttled feed, a stored tree read from another process), the
    view prints what it has not printed yet, and counts the lines the tree no longer holds."""
    snapshots: list[TaskSnapshot] = []
    run(task("Load", rows(10)), TaskTree(snapshots.append, max_lines=3))
    out = io.StringIO()
    view = TerminalView(out, style="plain")
    for snapshot in (snapshots[5], snapshots[5], snapshots[2], snapshots[-1]):
        view.update(snapshot)
    view.close()
    lines = out.getvalue().splitlines()
    body = [line for line in lines if "|" in line]
    printed = [line.split("| ")[1] for line in body if "row" in line]
    assert len(printed) == len(set(printed))
    assert printed[-3:] == ["row 7", "row 8", "row 9"]
    lost = [line for line in body if "lines not shown" in line]
    assert sum(int(line.split("... ")[1].split()[0]) for line in lost) + len(printed) == 10


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12), st.integers(1, 5))
def test_any_feed_order_never_repeats_a_line(picks: list[int], max_lines: int) -> None:
    snapshots: list[TaskSnapshot] = []
    run(task("Load", rows(15)), TaskTree(snapshots.append, max_lines=max_lines))
    tracker = ChangeTracker()
    seen: list[str] = []
    accounted = 0
    for i in [*picks, len(snapshots) - 1]:
        for change in tracker.changes(snapshots[min(i, len(snapshots) - 1)]):
            if change.kind == "line":
                seen.append(change.text)
                accounted += 1
            elif change.kind == "dropped":
                accounted += int(change.text.split()[1])
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, key=lambda t: int(t.split()[1]))
    assert accounted == 15


class Address(BaseModel):
    street: str
    number: int


def questions(released: list[str]) -> Generator[Any, Any, str]:
    def use(_: None) -> Generator[Any, Any, str]:
        name = yield Yield("Your name?", input=str)
        plan = yield Yield("Plan?", input=Literal["free", "pro"])
        seats = yield Yield("Seats?", input=int)
        address = yield Yield("Address?", input=Address)
        yield Print(f"{name} {plan} {seats} {address.street} {address.number}")
        return f"{name}:{plan}:{seats}"

    def release(_: None) -> Generator[Any, Any, None]:
        released.append("released")
        yield Print("released")

    def acquire() -> Generator[Any, Any, None]:
        yield Print("acquired")

    return (yield from bracket(acquire(), use, release))


def test_questions_are_asked_validated_and_asked_again() -> None:
    released: list[str] = []
    answers = "Ann\nenterprise\npro\nmany\n3\n" + '{"street": "Main", "number": 7}\n'
    out = io.StringIO()
    value = run_in_terminal(
        questions(released), stdin=io.StringIO(answers), stdout=out, style="plain"
    )
    assert value == "Ann:pro:3"
    text = out.getvalue().splitlines()
    assert text[:4] == ["acquired", "Your name?", "Plan? [free / pro]", text[3]]
    assert text[3].startswith("  Invalid answer: Input should be 'free' or 'pro'")
    assert text.count("Seats?") == 2
    assert "Address? (JSON with street, number)" in text
    assert "Ann pro 3 Main 7" in text
    assert released == ["released"]


@pytest.mark.anyio
async def test_end_of_input_cancels_and_cleans_up() -> None:
    released: list[str] = []
    out = io.StringIO()
    with pytest.raises(Cancellation):
        await arun_in_terminal(
            questions(released), stdin=io.StringIO("Ann\n"), stdout=out, style="plain"
        )
    assert released == ["released"]
    assert "(end of input: cancelling)" in out.getvalue()


def test_output_blocks_as_text() -> None:
    def report() -> Generator[Any, Any, None]:
        yield Output.markdown("# Title\n\nsome *text*")
        yield Output.table([{"name": "Ann", "n": 1}, {"name": "Bobby", "n": 22}])
        yield Output.html("<b>x</b> &amp; y\x1b[2J", safe=True)

    out = io.StringIO()
    with TerminalView(out, style="plain") as view:
        run(task("Report", report()), TaskTree(view.update))
    assert out.getvalue().splitlines() == [
        "▸ Report",
        "  | # Title",
        "  | ",
        "  | some *text*",
        "  | name   n",
        "  | -----  --",
        "  | Ann    1",
        "  | Bobby  22",
        "  | x & y\\x1b[2J",
        "✓ Report",
    ]
    out = io.StringIO()
    with TerminalView(out, style="rich") as view:
        run(task("Report", report()), TaskTree(view.update))
    text = out.getvalue()
    assert "│ Bobby │ 22 │" in text  # a drawn table
    assert "Title" in text
    assert "# Title" not in text  # Markdown rendered, not shown as source
    assert "\x1b[2J" not in text
