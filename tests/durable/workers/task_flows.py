"""A computation with a task tree, for the task-tree tests: run in the test process and in worker
processes (both import this module by the same name, so the logged effects match).

    python -c "import sys, task_flows; task_flows.cli(sys.argv[1:])" --db URL --run-id ID ...

`numbered(lines, hold)` prints `line 0` .. `line {lines-1}` in a task "Count", each after a
logged `Call`; before line `hold` it calls `gate`, which in a worker process prints `held` on
stdout and waits for a line on stdin (the parent kills it there, or lets it go on). In the test
process `GATE` decides (an `anyio.Event`, or nothing: go on at once).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator
from typing import Any

import anyio
import anyio.to_thread

from effects import Call, Output, Progress, computation, task
from effects.durable import DurableRunner

GATE: anyio.Event | None = None
WORKER = False


def count(i: int) -> int:
    """The external effect before each line (logged, so recovery does not repeat it)."""
    return i


async def gate(i: int) -> int:
    """Wait before line `i` until the test lets the run go on."""
    if WORKER:
        print("held", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
    elif GATE is not None:
        await GATE.wait()
    return i


@computation(name="tests.task_flows.numbered", version=1)
def numbered(lines: int = 10, hold: int = -1) -> Generator[Any, Any, int]:
    """Print `lines` numbered lines in task "Count", holding at line `hold`."""

    def body() -> Generator[Any, Any, int]:
        yield Progress(0, lines)
        for i in range(lines):
            if i == hold:
                yield Call(gate, i)
            yield Call(count, i)
            yield Output(f"line {i}")
            yield Progress(i + 1)
        return lines

    return (yield from task("Count", body()))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with DurableRunner(
        args.db, owner=args.owner, task_interval=args.interval, task_lines=args.task_lines
    ) as runner:
        run = await runner.start(numbered(args.lines, args.hold), run_id=args.run_id)
        return {"status": run.status.value, "id": run.id}


def cli(argv: list[str]) -> None:
    """Start a run of `numbered` in this (worker) process; print its report as JSON."""
    global WORKER
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--hold", type=int, default=-1)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--task-lines", type=int, default=200)
    WORKER = True
    report = anyio.run(main, parser.parse_args(argv), backend="asyncio")
    print(json.dumps(report), flush=True)
