"""A terminal front-end: the task tree, progress and output a page shows, as text.

`TerminalView` renders `TaskSnapshot`s (hand its `update` to `TaskTree(on_change=...)` or to a
durable runner's `on_tasks`): plain text line by line when the output is not a terminal, a live
tree with progress bars (rich, the `terminal` extra) when it is. `run_in_terminal` runs a whole
computation as a command-line program, asking its `Yield` questions on the terminal.
"""

from ._changes import Change, ChangeTracker
from ._prompt import arun_in_terminal, run_in_terminal
from ._view import Style, TerminalView

__all__ = (
    "TerminalView",
    "run_in_terminal",
    "arun_in_terminal",
    "Change",
    "ChangeTracker",
    "Style",
)
