"""Task trees, progress and output: the public names of what a computation reports as it runs.

`task(title, comp)` runs `comp` as a node of the run's task tree; `Progress`, `Output` and
`Print` report into the innermost open task; the `TaskTree` handler keeps the tree and hands an
immutable `TaskSnapshot` to its `on_change` callback after every change. UI bridges (such as
`bridges.live`) render those snapshots. The computation-facing names are also exported by
`effects` itself.
"""

from ._std.tasks import (
    ROOT,
    CurrentTask,
    Output,
    OutputKind,
    OutputLine,
    Print,
    Progress,
    TaskHandle,
    TaskNode,
    TaskSnapshot,
    TaskStatus,
    TaskTree,
    TaskWriter,
    open_task,
    task,
)

__all__ = (
    "task",
    "open_task",
    "TaskHandle",
    "CurrentTask",
    "TaskWriter",
    "Progress",
    "Output",
    "Print",
    "TaskTree",
    "TaskSnapshot",
    "TaskNode",
    "TaskStatus",
    "OutputLine",
    "OutputKind",
    "ROOT",
)
