"""`python -m effects runs ...`: look at and act on durable runs from a shell.

    python -m effects runs list   [--status S]... [--name N] [--since WHEN] [--limit N] [--parked]
                                  [--oldest-first]
    python -m effects runs show   RUN_ID
    python -m effects runs unpark RUN_ID
    python -m effects runs resume RUN_ID VALUE [--revision N]
    python -m effects runs cancel RUN_ID [--reason TEXT]
    python -m effects runs replay (--all | RUN_ID...) [--status S]... --import MODULE
    python -m effects runs fork   RUN_ID --at N [--answer VALUE] [--new-id ID] --import MODULE
    python -m effects runs purge  --older-than DURATION [--status S]... [--dry-run] [--batch N]
    python -m effects worker --import MODULE --queue QUEUE[,concurrency=N][,worker_concurrency=N]
                             [,rate=N/SECONDS] [--concurrency N] [--handlers MODULE:NAME]
                             [--owner NAME] [--lease SECONDS] [--poll SECONDS]

Every command takes `--db URL` (default: `$EFFECTS_DB`, else `sqlite+aiosqlite:///runs.db`;
a plain path such as `runs.db` is a SQLite file) and `--json` (machine-readable output).
A RUN_ID may be given as any prefix of the id that matches one run only.
`worker` serves durable queues until it gets SIGTERM or SIGINT (Ctrl-C): it claims queued
runs and runs them (see the queues page).

`resume`, `cancel` and `fork` run a step of the computation, so they need its code:
`--import MODULE` (repeatable) imports the modules that define the computations,
`--handlers MODULE:NAME` names the handlers to run them with (a handler, a `Stack`, a list of
them, or a function returning one of those).

`replay` checks stored logs against the code imported now, writing nothing: it fails (status
1) naming the first run that diverges and where.

Exit status: 0 on success, 1 when the command failed (unknown run, conflict, invalid input, a
log that cannot be replayed, a store that cannot be opened...), 2 on a usage error (also an
ambiguous id prefix), 130 when interrupted (Ctrl-C). Every failure is one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import anyio
import sqlalchemy as sa

from .._computation import registered
from .._exceptions import ConfigurationError, DivergenceError, LogError, MissingHandlerError
from .._handler import Handler, Stack
from .._outcome import Done, Suspend, Throw
from ._codec import signature
from ._fork import NOT_GIVEN
from ._log import Log, LogEntry, make_log
from ._lookup import AmbiguousRunId, list_runs, load_many, resolve_id
from ._queues import Queue
from ._replay import replay
from ._retention import cutoff, purge_statuses
from ._run import Run, RunStatus
from ._runner import DEFAULT_URL, DurableRunner
from ._schema import SCHEMA_VERSION
from ._store import RunRow, Store

_WIDTH = 100


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _store_url(value: str) -> str:
    # A bare path is a SQLite file: `--db runs.db` is what people type.
    if "://" in value:
        return value
    return f"sqlite+aiosqlite:///{value}"


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m effects", description="Inspect and drive durable runs.")
    commands = parser.add_subparsers(dest="group", required=True, metavar="{runs,worker}")
    runs = commands.add_parser("runs", help="durable runs in a store")
    actions = runs.add_subparsers(dest="action", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help)
        p.add_argument(
            "--db",
            type=_store_url,
            default=os.environ.get("EFFECTS_DB", DEFAULT_URL),
            help="store URL, or the path of a SQLite file (default: $EFFECTS_DB or %(default)s)",
        )
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    def code(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE first (it registers the computation); repeatable",
        )
        p.add_argument(
            "--handlers", metavar="MODULE:NAME", help="the handlers to run the computation with"
        )

    def statuses(p: argparse.ArgumentParser, help: str) -> None:
        p.add_argument("--status", action="append", choices=[s.value for s in RunStatus], help=help)

    p = command("list", "list runs, newest first")
    statuses(p, "only runs with this status; repeatable")
    p.add_argument("--name", help="only runs of this computation")
    p.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only runs created since WHEN: a time (2026-11-22T10:00, UTC unless it says) "
        "or a duration ago (90s, 30m, 2h, 7d)",
    )
    p.add_argument("--limit", type=_count, help="at most this many runs")
    p.add_argument(
        "--parked", action="store_true", help="only runs that recovery gave up on (parked)"
    )
    p.add_argument("--oldest-first", action="store_true", help="list the oldest runs first")

    p = command("show", "show a run and its effect log")
    p.add_argument("run_id")

    p = command("unpark", "let recovery continue a parked run again")
    p.add_argument("run_id")

    p = command("resume", "answer a suspended run's pending prompt and run its next step")
    p.add_argument("run_id")
    p.add_argument("value", help="the answer, as JSON (a string is '\"text\"')")
    p.add_argument("--revision", type=int, help="fail unless the run is at this revision")
    code(p)

    p = command("cancel", "cancel a run (its cleanup runs)")
    p.add_argument("run_id")
    p.add_argument("--reason", help="recorded as the cancellation reason")
    code(p)

    about = "start a new run from step N of another run's log, with another answer"
    p = command("fork", about)
    p.add_argument("run_id")
    p.add_argument(
        "--at",
        type=_count,
        required=True,
        metavar="N",
        help="the step (seq, as `show` prints it) where the new run leaves the source's log",
    )
    p.add_argument(
        "--answer",
        metavar="VALUE",
        help="the answer (JSON) to the prompt at step N; without it the new run performs "
        "step N again",
    )
    p.add_argument("--new-id", help="the new run's id (default: a new uuid)")
    code(p)

    about = "remove old runs with their logs, task trees and output"
    p = command("purge", about)
    p.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="runs last changed more than DURATION ago (90s, 30m, 12h, 30d, 2w)",
    )
    statuses(
        p,
        "purge runs with this status (repeatable; default: done, failed and cancelled). "
        "Active runs (running, suspended, sleeping, queued) only when named here",
    )
    p.add_argument("--dry-run", action="store_true", help="count the runs, remove nothing")
    p.add_argument(
        "--batch", type=_positive, default=500, help="runs per transaction (default %(default)s)"
    )

    about = "check stored logs against the code imported now (writes nothing)"
    p = command("replay", about)
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="the runs to check")
    p.add_argument("--all", action="store_true", help="check every run in the store")
    statuses(p, "with --all: only runs with this status; repeatable")
    code(p)

    about = "serve durable queues: claim queued runs and run them (until SIGTERM or Ctrl-C)"
    p = commands.add_parser("worker", help=about, description=about)
    p.add_argument(
        "--db",
        type=_store_url,
        default=os.environ.get("EFFECTS_DB", DEFAULT_URL),
        help="store URL, or the path of a SQLite file (default: $EFFECTS_DB or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines")
    code(p)
    p.add_argument(
        "--queue",
        dest="queues",
        action="append",
        type=_queue,
        required=True,
        metavar="QUEUE[,concurrency=N][,worker_concurrency=N][,rate=N/SECONDS]",
        help="a queue to serve and its limits; repeatable",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=8,
        help="runs executing at once in this worker (default %(default)s)",
    )
    p.add_argument("--owner", help="this worker's lease owner (default host:pid)")
    p.add_argument(
        "--lease", type=_seconds, default=30.0, help="lease in seconds (default %(default)s)"
    )
    p.add_argument(
        "--poll",
        type=_seconds,
        default=1.0,
        help="seconds between looks at idle queues without a notification (default %(default)s)",
    )
    return parser


def _positive(value: str) -> int:
    n = _count(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < x < 1e9:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return x


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _ago(value: str) -> float | None:
    """`90s`, `30m`, `2h`, `7d`, `1w` as seconds (None if it is not a duration)."""
    number, unit = value[:-1], value[-1:].lower()
    if unit not in _UNITS:
        return None
    try:
        n = float(number)
    except ValueError:
        return None
    if not 0 <= n < 1e9:
        return None
    return n * _UNITS[unit]


def _duration(value: str) -> float:
    seconds = _ago(value.strip())
    if seconds is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration (a number and a unit: 90s, 30m, 12h, 30d, 2w)"
        )
    return seconds


def _since(value: str) -> float:
    """A time (ISO 8601, UTC unless it has an offset) or a duration ago, as epoch seconds."""
    seconds = _ago(value.strip())
    if seconds is not None:
        return time.time() - seconds
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a time (2026-11-22T10:00) nor a duration (30m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Times are shown to the microsecond (rounded): a time copied from `list --json` must keep
    # the run it was read from.
    return when.timestamp() - 1e-6


def _queue(spec: str) -> Queue:
    """`name[,concurrency=N][,worker_concurrency=N][,rate=N/SECONDS]` as a `Queue`."""
    name, *options = spec.split(",")
    limits: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        try:
            if not sep:
                raise ValueError
            if key in ("concurrency", "worker_concurrency"):
                limits[key] = int(value)
            elif key == "rate":
                count, _, period = value.partition("/")
                limits["rate_limit"] = (int(count), float(period))
            else:
                raise argparse.ArgumentTypeError(
                    f"unknown queue option {key!r} (concurrency, worker_concurrency, rate)"
                )
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"queue option {option!r}: expected concurrency=N, worker_concurrency=N or "
                "rate=N/SECONDS"
            ) from None
    try:
        return Queue(name, **limits)
    except ConfigurationError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _handlers(spec: str | None) -> tuple[Handler | Stack, ...]:
    if spec is None:
        return ()
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"--handlers {spec!r}: expected MODULE:NAME")
    module = importlib.import_module(module_name)
    try:
        value: Any = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(
            f"--handlers {spec!r}: module {module_name!r} has no {attr!r}"
        ) from None
    if callable(value) and not isinstance(value, Handler | Stack):
        value = value()
    if isinstance(value, Handler | Stack):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(h, Handler | Stack) for h in value):
        return tuple(value)
    raise ConfigurationError(f"--handlers {spec!r} is not a handler, a Stack or a list of them")


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)


def _short_effect(name: str) -> str:
    # The library's own effects by their class name; user effects by their full name.
    return name.rsplit(".", 1)[1] if name.startswith("effects.") else name


def _run_json(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "version": run.version,
        "status": run.status.value,
        "revision": run.revision,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
        "args": run.args,
        "lease_owner": run.lease_owner,
        "cancel_requested": run.cancel_requested,
        "parked": run.parked,
        "recovery_attempts": run.recovery_attempts,
        "wake_at": run.wake_at.isoformat() if run.wake_at is not None else None,
        "queue": run.queue,
        "priority": run.priority,
        "dedup_id": run.dedup_id,
    }
    outcome = run.outcome
    if type(outcome) is Suspend:
        out["prompt"], out["input"] = outcome.value, outcome.input
    elif type(outcome) is Done:
        out["result"] = json.loads(_compact(outcome.value)) if outcome.value is not None else None
    if run.error is not None:
        out["error"] = run.error
    elif type(outcome) is Throw:
        out["error"] = {"type": type(outcome.error).__name__, "message": str(outcome.error)}
    return out


def _time(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _status(run: Run) -> str:
    return f"{run.status.value} (parked)" if run.parked is not None else run.status.value


def _print_list(runs: Sequence[Run], out: TextIO) -> None:
    # Listed by creation (newest first, as --since filters): both times are shown.
    rows = [("ID", "NAME", "V", "STATUS", "REV", "CREATED (UTC)", "UPDATED (UTC)")]
    rows += [
        (
            r.id,
            r.name,
            str(r.version),
            _status(r),
            str(r.revision),
            _time(r.created_at),
            _time(r.updated_at),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    if not runs:
        print("(no runs)", file=out)


def _print_run(run: Run, out: TextIO) -> None:
    def line(label: str, text: str) -> None:
        print(f"{label:<9}{text}", file=out)

    line("run", run.id)
    line("name", f"{run.name} v{run.version}")
    status = f"{run.status.value} (revision {run.revision})"
    if run.lease_owner:
        status += f", leased by {run.lease_owner}"
    if run.cancel_requested:
        status += ", cancel requested"
    if run.recovery_attempts:
        status += f", {run.recovery_attempts} recovery attempt(s) without progress"
    if run.wake_at is not None:
        status += f", wakes at {run.wake_at.strftime('%Y-%m-%d %H:%M:%S UTC')}"
    line("status", status)
    if run.queue is not None:
        queue = f"{run.queue} (priority {run.priority})"
        if run.dedup_id is not None:
            queue += f", dedup id {run.dedup_id}"
        line("queue", queue)
    if run.parked is not None:
        line("parked", f"{run.parked} (python -m effects runs unpark {run.id})")
    line("created", run.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    line("updated", run.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    line("args", _clip(_compact(run.args), _WIDTH))
    outcome = run.outcome
    if type(outcome) is Suspend:
        line("prompt", _clip(_compact(outcome.value), _WIDTH))
        if outcome.input is not None:
            schema = outcome.input
            line("input", str(schema.get("title") or schema.get("type") or _compact(schema)))
    elif type(outcome) is Done:
        line("result", _clip(_compact(outcome.value), _WIDTH))
    elif run.status is RunStatus.CANCELLED and outcome is not None:
        line("reason", _clip(_compact(getattr(outcome, "reason", None)), _WIDTH))
    if run.error is not None:
        line("error", f"{run.error.get('type')}: {run.error.get('message')}")
        tb = run.error.get("traceback")
        if tb:
            print(file=out)
            print("".join(f"  {t}\n" for t in str(tb).rstrip().splitlines()), end="", file=out)


def _took(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _entry_times(e: LogEntry) -> tuple[str, str]:
    # When the effect started (UTC, to the millisecond) and how long it took; blank for
    # entries of logs written before entries carried times.
    if e.started_at is None:
        return "", ""
    started = datetime.fromtimestamp(e.started_at, UTC).strftime("%H:%M:%S.%f")[:-3]
    if e.ended_at is None:
        return started, "…" if e.status == "pending" else ""
    return started, _took(max(0.0, e.ended_at - e.started_at))


def _entry_line(e: LogEntry) -> str:
    args = ", ".join(f"{k}={_compact(v)}" for k, v in e.args.items())
    text = f"{_short_effect(e.effect)}({args})"
    if e.status == "done":
        text = f"{_clip(text, 60)} -> {_compact(e.result)}"
    elif e.status == "error" and e.error is not None:
        text = f"{_clip(text, 60)} !! {e.error['type']}: {e.error['message']}"
    started, took = _entry_times(e)
    return f"{e.seq:>5}  {e.status:<8} {started:<12}  {took:>6}  {_clip(text, _WIDTH)}"


def _print_log(log: Log, out: TextIO) -> None:
    n = len(log.entries)
    print(f"\nlog ({n} {'entry' if n == 1 else 'entries'})", file=out)
    if n:
        print(f"{'seq':>5}  {'status':<8} {'started':<12}  {'took':>6}  effect", file=out)
    for e in log.entries:
        print(_entry_line(e), file=out)


def _check_exists(url: str) -> None:
    # Opening a store creates it: a mistyped SQLite path would show an empty new store.
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigurationError(f"--db {url!r} is not a store URL or a path") from None
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        path = u.database
        if u.query.get("uri") in ("true", "1") and path.startswith("file:"):
            path = path.removeprefix("file:").partition("?")[0]  # sqlite's URI form
        if not os.path.exists(path):
            raise ConfigurationError(f"no store at {path!r} (from --db {url})")


async def _worker(args: argparse.Namespace, out: TextIO) -> None:
    for module in args.imports:
        importlib.import_module(module)
    handlers = _handlers(args.handlers)
    async with DurableRunner(
        args.db, handlers=handlers, owner=args.owner, lease=args.lease
    ) as runner:
        async with anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(
                    runner.work, args.queues, concurrency=args.concurrency, poll=args.poll
                )
            )
            # The handlers are installed before the line that says we serve: a SIGTERM sent
            # as soon as it is read stops the worker in order.
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                names = [q.name for q in args.queues]
                if args.json:
                    line = json.dumps({"worker": runner.owner, "serving": names})
                else:
                    line = f"worker {runner.owner} serving {', '.join(names)}"
                print(line, file=out, flush=True)
                async for _ in signals:
                    # An orderly stop: runs in flight stop as in a crash and their leases are
                    # released, so another worker takes them over at once.
                    tg.cancel_scope.cancel()
                    break
    stopped = json.dumps({"worker": runner.owner, "stopped": True}) if args.json else None
    print(stopped or "worker stopped", file=out, flush=True)


def _import_code(args: argparse.Namespace) -> tuple[Handler | Stack, ...]:
    for module in args.imports:
        importlib.import_module(module)
    return _handlers(args.handlers)


def _print_json(data: Any, out: TextIO) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False), file=out)


async def _show(runner: DurableRunner, run: Run, args: argparse.Namespace, out: TextIO) -> None:
    """A run with its log: `show`, and what `resume`, `cancel`, `unpark` print."""
    log = await runner.get_log(run.id)
    if args.json:
        _print_json({"run": _run_json(run), "log": log.model_dump(mode="json")}, out)
    else:
        _print_run(run, out)
        _print_log(log, out)


async def _main(args: argparse.Namespace, out: TextIO) -> None:
    if args.group == "worker":
        await _worker(args, out)
        return
    _check_exists(args.db)
    if args.action == "replay":
        await _replay_runs(args, out)
        return
    handlers: tuple[Handler | Stack, ...] = ()
    if args.action in ("resume", "cancel", "fork"):
        handlers = _import_code(args)
    async with DurableRunner(args.db, handlers=handlers, timers=False) as runner:
        if args.action == "list":
            rows = await list_runs(
                runner.store,
                status=args.status or (),
                name=args.name,
                since=args.since,
                limit=args.limit,
                newest_first=not args.oldest_first,
                parked=True if args.parked else None,
            )
            runs = [runner._to_run(r) for r in rows]
            if args.json:
                _print_json([_run_json(r) for r in runs], out)
            else:
                _print_list(runs, out)
            return
        if args.action == "purge":
            await _purge(runner, args, out)
            return
        run_id = await resolve_id(runner.store, args.run_id)
        if args.action == "show":
            run = await runner.get(run_id)
        elif args.action == "unpark":
            run = await runner.unpark(run_id)
        elif args.action == "resume":
            run = await runner.resume(run_id, _json_value(args.value), revision=args.revision)
        elif args.action == "fork":
            answer = NOT_GIVEN if args.answer is None else _json_value(args.answer)
            run = await runner.fork(run_id, at=args.at, answer=answer, new_id=args.new_id)
        else:
            run = await runner.cancel(run_id, args.reason)
        await _show(runner, run, args, out)


async def _purge(runner: DurableRunner, args: argparse.Namespace, out: TextIO) -> None:
    statuses = purge_statuses(args.status)
    n = await runner.purge(
        older_than=args.older_than, status=statuses, batch=args.batch, dry_run=args.dry_run
    )
    before = datetime.fromtimestamp(cutoff(args.older_than), UTC)
    if args.json:
        data = {
            "purged": 0 if args.dry_run else n,
            "matching": n,
            "dry_run": args.dry_run,
            "statuses": statuses,
            "before": before.isoformat(),
        }
        _print_json(data, out)
        return
    verb = "would purge" if args.dry_run else "purged"
    when = before.strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"{verb} {n} run(s) ({', '.join(statuses)}) last changed before {when}", file=out)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigurationError(
            f"VALUE must be JSON: {text!r} is not (a string is written '\"text\"')"
        ) from None


async def _replay_runs(args: argparse.Namespace, out: TextIO) -> None:
    """`runs replay`: each run's stored log replayed with the code imported now. Opens the
    store without a runner (no owner recorded, no migration): nothing is written."""
    if bool(args.all) == bool(args.run_ids):
        raise _UsageError("give the runs to check, or --all (not both)")
    if args.status and not args.all:
        raise _UsageError("--status selects among --all; it does not filter the runs named")
    handlers = _import_code(args)
    store = await Store.open(args.db, migrate=False)
    try:
        found = await store.schema_version()
        if found != SCHEMA_VERSION:
            raise ConfigurationError(
                f"the store's schema is at version {found}, this library's at {SCHEMA_VERSION}: "
                "open it with a runner of this version first (replay writes nothing, so it "
                "does not migrate)"
            )
        if args.all:
            ids = [
                r.id for r in await list_runs(store, status=args.status or (), newest_first=False)
            ]
        else:
            ids = [await resolve_id(store, i) for i in args.run_ids]
        results = [
            _check_run(row, entries, handlers) async for row, entries in load_many(store, ids)
        ]
    finally:
        await store.aclose()
    failed = [r for r in results if not r["ok"]]
    if args.json:
        _print_json(results, out)
    else:
        for r in results:
            print(_replay_line(r), file=out)
        print(f"{len(results) - len(failed)} of {len(results)} run(s) replay", file=out)
    if failed:
        first = failed[0]
        more = f" ({len(failed)} runs fail)" if len(failed) > 1 else ""
        raise _ReplayFailed(f"run {first['id']}: {_failure_text(first['error'])}{more}")


def _check_run(
    row: RunRow, entries: list[LogEntry], handlers: tuple[Handler | Stack, ...]
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "status": row.status,
        "entries": len(entries),
    }
    try:
        function = registered(row.name)
        comp = signature(function).load_args(row.id, row.args)
        replayed = replay(make_log(row.name, row.version, row.id, entries), comp, handlers)
    except (DivergenceError, LogError, MissingHandlerError, LookupError) as err:
        error: dict[str, Any] = {"type": type(err).__name__, "message": str(err)}
        if isinstance(err, DivergenceError):
            error.update(position=err.position, expected=err.expected, got=err.got)
        return {**result, "ok": False, "error": error}
    return {**result, "ok": True, "end": replayed.end, "next": replayed.next}


def _failure_text(error: dict[str, Any]) -> str:
    if error["type"] == "DivergenceError":
        return (
            f"diverges at step {error['position']}: expected {error['expected']}, "
            f"got {error['got']}"
        )
    return f"{error['type']}: {error['message']}"


def _replay_line(r: dict[str, Any]) -> str:
    head = f"{'ok' if r['ok'] else 'FAIL':<5}{r['id']}  {r['name']} v{r['version']}"
    if not r["ok"]:
        return f"{head}  {_clip(_failure_text(r['error']), _WIDTH)}"
    where = r["end"]
    if r["next"] is not None:
        where += f", next {_clip(r['next'], 60)}"
    return f"{head}  {r['entries']} entries, {where}"


class _UsageError(Exception):
    """A usage error found after parsing (exit status 2)."""


class _ReplayFailed(Exception):
    """Some run does not replay with the code now (exit status 1, reported as is)."""


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    stdout = out if out is not None else sys.stdout
    try:
        anyio.run(_main, args, stdout, backend="asyncio")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (_UsageError, AmbiguousRunId) as err:
        _fail(str(err))
        return 2
    except _ReplayFailed as err:
        _fail(str(err))
        return 1
    except Exception as err:  # a shell command reports, it does not dump a traceback
        _fail(f"{type(err).__name__}: {err}")
        return 1
    return 0


def _fail(message: str) -> None:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    print(f"error: {'; '.join(lines) or 'failed'}", file=sys.stderr)
