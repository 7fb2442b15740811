"""A worker process for the kill-point tests of operations on stored runs (fork, purge).

    python ops_worker.py --db URL --action fork|purge [--kill-sql PREFIX [--kill-nth N]]
                         [--kill-at POINT] ...

`--kill-sql PREFIX` makes the process SIGKILL itself right after the Nth SQL statement that
starts with PREFIX was executed (inside its transaction, before the commit): a crash in the
middle of the operation's transaction, at an exact place, without timing. `--kill-at` is a
kill point of `crash_flows` (in the effects of the run a fork continues). `run(argv)` is the
same as a function, for the `forked` fixture's fork server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import anyio
import crash_flows
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from effects.durable import DurableRunner
from effects.durable._fork import NOT_GIVEN


def kill_after(engine: AsyncEngine, prefix: str, nth: int) -> None:
    """SIGKILL this process after the `nth` statement starting with `prefix` ran."""
    seen = 0

    def executed(*args: Any) -> None:
        nonlocal seen
        statement: str = args[2]
        if statement.lstrip().upper().startswith(prefix.upper()):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    event.listen(engine.sync_engine, "after_cursor_execute", executed)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with DurableRunner(args.db, handlers=crash_flows.HANDLERS, owner=args.owner) as runner:
        if args.kill_sql:
            kill_after(runner.store.engine, args.kill_sql, args.kill_nth)
        if args.action == "fork":
            answer = NOT_GIVEN if args.answer is None else json.loads(args.answer)
            run = await runner.fork(args.run_id, at=args.at, answer=answer, new_id=args.new_id)
            return {"id": run.id, "status": run.status.value}
        purged = await runner.purge(
            older_than=args.older_than, status=args.status, batch=args.batch
        )
        return {"purged": purged}


def run(argv: list[str]) -> dict[str, Any]:
    """Parse `argv`, do the action, return the report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--action", choices=["fork", "purge"], required=True)
    parser.add_argument("--owner", default="ops-worker")
    parser.add_argument("--run-id")
    parser.add_argument("--new-id")
    parser.add_argument("--at", type=int, default=0)
    parser.add_argument("--answer")
    parser.add_argument("--older-than", type=float, default=0.0)
    parser.add_argument("--status", action="append")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--kill-sql")
    parser.add_argument("--kill-nth", type=int, default=1)
    parser.add_argument("--kill-at")
    options = parser.parse_args(argv)
    crash_flows.KILL_AT = options.kill_at
    report: dict[str, Any] = anyio.run(main, options, backend="asyncio")
    return report


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])), flush=True)
