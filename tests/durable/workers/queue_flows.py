"""Computations for the queue tests, run by `python -m effects worker --import queue_flows`
(this directory on PYTHONPATH) and in the test process alike.

Each run writes what it does to a file through its own `Call`s: one line per effect,
`key kind pid time_ns`, appended with O_APPEND (one write per line, so lines of several
processes do not mix). The tests read when runs started and ended from it, and how often a
side effect happened.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

import anyio

from effects import Call, computation


def record(path: str, key: str, kind: str) -> None:
    """Append one line to `path` (an effect the test counts)."""
    line = f"{key} {kind} {os.getpid()} {time.time_ns()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def block_if(path: str, key: str) -> None:
    """Block for good in a process started with QUEUE_FLOWS_BLOCK=1 (the one the test kills),
    after saying so in the file; return at once elsewhere."""
    if os.environ.get("QUEUE_FLOWS_BLOCK") == "1":
        record(path, key, "blocked")
        await anyio.sleep_forever()


@computation(name="tests.queues.job")
def job(path: str, key: str) -> Generator[Any, Any, str]:
    """Record its start and its end (the two are the interval the run was executing)."""
    yield Call(record, path, key, "start")
    yield Call(record, path, key, "end")
    return key


@computation(name="tests.queues.side_effect")
def side_effect(path: str, key: str) -> Generator[Any, Any, str]:
    """A side effect counted by the test, then a call that blocks in the doomed worker."""
    yield Call(record, path, key, "effect")
    yield Call(block_if, path, key)
    yield Call(record, path, key, "end")
    return key


@computation(name="tests.queues.steps")
def steps(n: int) -> Generator[Any, Any, int]:
    """`n` trivial calls (the benchmark's workload)."""
    total = 0
    for i in range(n):
        total += yield Call(int, i)
    return total
