"""A computation that sleeps durably, shared by the timer tests and their worker processes (both
import it by this name, so the logged effects match).

    python -c "import sys, timer_flows; timer_flows.cli(sys.argv[1:])" DB RUN_ID SECONDS MEM

starts the run (imported, not run as `__main__`, so the functions it logs have this module's
name) and prints one JSON line with its status once `start` returns. A run whose sleep is held
in memory (`MEM` = `sleep_in_memory`) sleeps inside `start`: a test may kill the process then.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import anyio

from effects import Call, Clock, Yield, computation

CLEANUPS: list[str] = []


def stamp(label: str) -> str:
    """An external effect before and after the sleep (a Call is checkpointed)."""
    return label


@computation(name="timer_flow", version=1)
def nap(seconds: float) -> Generator[Any, Any, str]:
    """Call, sleep `seconds`, Call, return."""
    try:
        yield Call(stamp, "before")
        yield Clock.sleep(seconds)
        yield Call(stamp, "after")
        return "woke"
    finally:
        CLEANUPS.append("finally")


@computation(name="timer_then_ask", version=1)
def nap_then_ask(seconds: float) -> Generator[Any, Any, str]:
    """Sleep, then wait for an answer."""
    yield Clock.sleep(seconds)
    answer = yield Yield("after the nap?")
    return f"{answer}"


async def main(argv: list[str]) -> dict[str, Any]:
    from effects.durable import DurableRunner

    db, run_id, seconds, in_memory = argv
    async with DurableRunner(
        db, handlers=Clock(), owner="timer-worker", sleep_in_memory=float(in_memory)
    ) as runner:
        run = await runner.start(nap(float(seconds)), run_id=run_id)
        return {"status": run.status.value}


def cli(argv: list[str]) -> None:
    """Start the run described by `argv`; print its status as JSON."""
    print(json.dumps(anyio.run(main, argv, backend="asyncio")), flush=True)
