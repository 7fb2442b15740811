"""`run_in_terminal`: run a computation as a command-line program.

Its task tree, progress and output are shown by a `TerminalView`; each `Yield` is a question
asked on the terminal, validated like a page's form (`Yield(input=...)`), asked again after an
invalid answer. The end of the input (Ctrl-D, or a closed pipe) cancels the run, so its
cleanup runs as it would when a page's user presses Cancel.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO, TypeVar

import anyio
import anyio.to_thread
import pydantic

from effects import (
    Cancellation,
    Cancelled,
    Computation,
    Done,
    Handler,
    InvalidInput,
    Outcome,
    Stack,
    Suspend,
    Throw,
    astart,
)
from effects.tasks import TaskTree

from ._view import Style, TerminalView

T = TypeVar("T")


async def arun_in_terminal(
    comp: Computation[T],
    *handlers: Handler | Stack,
    title: str = "",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    style: Style = "auto",
) -> T:
    """Run `comp` with `handlers` in a terminal and return its value.

    The task tree is shown on `stdout` (a `TerminalView` in `style`); each `Yield` prints its
    prompt and reads one line of `stdin`. An answer is given to the step as typed, or, if that
    fails the step's input validation and the line is JSON (a number, `true`, an object for a
    model), as that JSON value. A failed run raises its error; a cancelled one (end of input)
    raises `Cancellation`.
    """
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    view = TerminalView(stdout, style=style)
    try:
        outcome: Outcome = await astart(comp, *handlers, TaskTree(view.update, title=title))
        while type(outcome) is Suspend:
            outcome = await _ask(outcome, view, stdin)
    finally:
        view.close()
    if type(outcome) is Done:
        return outcome.value  # type: ignore[no-any-return]
    if type(outcome) is Throw:
        raise outcome.error
    assert type(outcome) is Cancelled
    raise Cancellation(outcome.reason)


def run_in_terminal(
    comp: Computation[T],
    *handlers: Handler | Stack,
    title: str = "",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    style: Style = "auto",
) -> T:
    """`arun_in_terminal` as a plain function: starts an event loop (asyncio) for the run."""

    async def main() -> T:
        return await arun_in_terminal(
            comp, *handlers, title=title, stdin=stdin, stdout=stdout, style=style
        )

    return anyio.run(main)


async def _ask(suspend: Suspend, view: TerminalView, stdin: TextIO) -> Outcome:
    """Ask the question of `suspend` until an answer passes; returns the next outcome."""
    while True:
        with view.paused():
            view.write(f"{suspend.value}{_hint(suspend.input)}")
            line = await anyio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
            if not line:
                view.write("(end of input: cancelling)")
        if not line:
            return await suspend.acancel("end of input")
        try:
            # Validation happens before the one-shot suspension is consumed: a bad answer
            # leaves it as it was, and the question is asked again.
            return await suspend.aresume(_answer(suspend.input, line.rstrip("\r\n")))
        except InvalidInput as err:
            view.write(f"  {_problem(err)}")


def _answer(input_type: Any, text: str) -> Any:
    """What to answer for `text`: as typed if it passes `input_type`, else its JSON value if it
    is JSON and passes, else as typed (so that the error shown is about what was typed)."""
    if input_type is None:
        return text
    adapter = _adapter(input_type)
    try:
        adapter.validate_python(text)
        return text
    except pydantic.ValidationError:
        pass
    try:
        value = json.loads(text)
        adapter.validate_python(value)
    except (ValueError, pydantic.ValidationError):
        return text
    return value


def _adapter(input_type: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(input_type)


def _hint(input_type: Any) -> str:
    schema: dict[str, Any] = {}
    if input_type is not None:
        try:
            schema = _adapter(input_type).json_schema()
        except Exception:  # a type pydantic cannot describe: no hint, the prompt is enough
            schema = {}
    if "enum" in schema:
        return " [" + " / ".join(str(v) for v in schema["enum"]) + "]"
    if schema.get("type") == "boolean":
        return " [yes / no]"
    if schema.get("type") == "object" and "properties" in schema:
        return " (JSON with " + ", ".join(schema["properties"]) + ")"
    return ""


def _problem(err: InvalidInput) -> str:
    messages = [str(e.get("msg", "invalid")) for e in err.errors] or [str(err)]
    return "Invalid answer: " + "; ".join(dict.fromkeys(messages))
