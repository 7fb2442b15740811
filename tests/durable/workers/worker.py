"""A worker process for the durable tests: one action on one run, then a JSON line on stdout.

    python worker.py --db URL --action ACTION [--kill-at POINT] ...

ACTION is start, resume, recover, cancel (at the first prompt), cancel-running (while the
step waits in a slow effect), enqueue (a `queued_flow` run on `--queue`, with `--dedup-id`) or
work (serve `--queue`, limited to `--queue-concurrency` runs at once, until killed) or group
(`--runs` runs of `group_flow` at once, ids `RUN_ID-0`..., their checkpoints committed in groups)
or send (the JSON `--answer` as a message on `--topic` to `--run-id`).

`--kill-at` makes the process SIGKILL itself at that point (see crash_flows), so a test can
stop it at an exact place without any timing. `run(argv)` is the same as a function, for
workers forked from a fork server that has this module imported already.
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import sys
import threading
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import anyio
import crash_flows

from effects import ConflictError, EffectsError
from effects.durable import DurableRunner, Queue, Worker
from effects.durable._store import RunRow, Store


class KillableWorker(Worker):
    """A worker with the kill point `claimed`: a run claimed, its first step not begun."""

    async def _begin(self, q: Queue, row: RunRow) -> None:
        crash_flows.hook("claimed")
        await super()._begin(q, row)


def group_kill_points(store: Store, counter: str) -> None:
    """The kill points of group commits (groups of two or more checkpoints only):
    `group-written:N` inside the N-th group's transaction, its statements written, before its
    COMMIT (SQLite: on the connection's thread); `group-committed:N` after its commit, before
    any of its runs is woken. Before dying, the group's (run id, revision read) pairs are
    recorded in the counter file's `groups` table, for the test to check all or none."""
    group = store._group
    assert group is not None
    flush = group._flush
    groups = 0

    def record(items: Sequence[Any]) -> None:
        with closing(sqlite3.connect(counter, timeout=20)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS groups (run TEXT, revision INTEGER)")
            db.executemany(
                "INSERT INTO groups VALUES (?, ?)",
                [(c.run_id, c.revision) for c in items if hasattr(c, "revision")],
            )

    async def killing_flush(items: Sequence[Any]) -> Sequence[Any]:
        nonlocal groups
        n = 0
        # Groups of two or more checkpoints (not the runs' creations, which group too).
        if sum(hasattr(c, "revision") for c in items) > 1:
            groups += 1
            n = groups
            if crash_flows.KILL_AT in (f"group-written:{n}", f"group-committed:{n}"):
                record(items)
            if crash_flows.KILL_AT == f"group-written:{n}" and store._fast is None:
                crash_flows.hook(f"group-written:{n}")  # one statement: nothing written yet
        results = await flush(items)
        if n:
            crash_flows.hook(f"group-committed:{n}")
        return results

    group._flush = killing_flush
    if store._fast is not None:
        write = store._fast._write

        def killing_write(db: Any, items: Sequence[Any]) -> Any:
            results = write(db, items)
            if sum(hasattr(c, "revision") for c in items) > 1:
                crash_flows.hook(f"group-written:{groups}")
            return results

        store._fast._write = killing_write  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with DurableRunner(
        args.db, handlers=crash_flows.HANDLERS, owner=args.owner, lease=args.lease
    ) as runner:
        try:
            if args.action == "group":
                group_kill_points(runner.store, args.counter)
                crash_flows.GROUP_BARRIER = threading.Barrier(args.runs)
                async with anyio.create_task_group() as tg:
                    for k in range(args.runs):
                        comp = crash_flows.group_flow(args.steps, args.counter)
                        tg.start_soon(
                            functools.partial(runner.start, comp, run_id=f"{args.run_id}-{k}")
                        )
                return {"status": "done"}
            if args.action == "enqueue":
                comp = crash_flows.queued_flow(args.counter, args.dedup_id)
                run = await runner.enqueue(
                    comp, queue=args.queue, dedup_id=args.dedup_id, run_id=args.run_id
                )
                crash_flows.hook("enqueued")
            elif args.action == "work":
                queue = Queue(args.queue, concurrency=args.queue_concurrency)
                await KillableWorker(runner, [queue], concurrency=8, poll=0.2).run()
                raise AssertionError("unreachable: a worker serves until it is killed")
            elif args.action in ("start", "cancel", "cancel-running"):
                if args.flow == "charge":
                    comp = crash_flows.charge_flow(args.counter)
                elif args.flow == "cleanup":
                    comp = crash_flows.cleanup_flow(args.counter)
                elif args.flow == "blocking":
                    comp = crash_flows.blocking_flow(args.counter)
                elif args.flow == "timer":
                    comp = crash_flows.timer_flow(args.counter)
                elif args.flow == "parallel":
                    comp = crash_flows.parallel_flow(args.counter)
                elif args.flow == "messages":
                    comp = crash_flows.messages_flow(args.counter)
                elif args.flow == "transaction":
                    comp = crash_flows.transaction_flow(args.counter)
                else:
                    comp = crash_flows.flow(args.steps, args.counter)
                if args.action == "cancel-running":
                    # Cancel the step while it waits in `block`, in this process.
                    crash_flows.BLOCKED = blocked = anyio.Event()
                    run = await runner.start(comp, run_id=args.run_id, wait=False)
                    await blocked.wait()
                    run = await runner.cancel(run.id, "stop")
                else:
                    run = await runner.start(comp, run_id=args.run_id)
                if args.action == "cancel":
                    run = await runner.cancel(run.id, "stop")
                elif args.answer is not None and run.status == "suspended":
                    run = await runner.resume(run.id, json.loads(args.answer))
            elif args.action == "send":
                run = await runner.send(args.run_id, args.topic, json.loads(args.answer))
            elif args.action == "resume":
                if args.ready:
                    # Tell the parent we are up, then wait for its go: both workers then
                    # race for the same revision.
                    print("ready", flush=True)
                    sys.stdin.readline()
                run = await runner.resume(
                    args.run_id, json.loads(args.answer), revision=args.revision
                )
            else:
                runs = await runner.recover()
                return {"recovered": [r.id for r in runs]}
        except ConflictError as err:
            return {"conflict": str(err)}
        except EffectsError as err:
            return {"error": type(err).__name__, "message": str(err)}
        return {"status": run.status.value, "revision": run.revision, "id": run.id}


def run(argv: list[str]) -> dict[str, Any]:
    """Parse `argv`, do the action, return the report (also the target of forked workers)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument(
        "--action",
        choices=[
            "start",
            "resume",
            "recover",
            "cancel",
            "cancel-running",
            "enqueue",
            "work",
            "group",
            "send",
        ],
        required=True,
    )
    parser.add_argument(
        "--flow",
        choices=[
            "flow",
            "charge",
            "cleanup",
            "blocking",
            "timer",
            "parallel",
            "messages",
            "transaction",
        ],
        default="flow",
    )
    parser.add_argument("--counter", default="")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--run-id")
    parser.add_argument("--answer")
    parser.add_argument("--revision", type=int)
    parser.add_argument("--owner", default="worker")
    parser.add_argument("--kill-at")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--queue", default="crash")
    parser.add_argument("--queue-concurrency", type=int)
    parser.add_argument("--dedup-id")
    parser.add_argument("--ready", action="store_true")
    parser.add_argument("--topic", default="t")
    options = parser.parse_args(argv)
    crash_flows.KILL_AT = options.kill_at
    report: dict[str, Any] = anyio.run(main, options, backend="asyncio")
    return report


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])), flush=True)
