"""Concurrent durable runs: 100 runs x 100 external Calls at once, on SQLite and on PostgreSQL,
steps per second side by side with 100 concurrent DBOS workflows of 100 steps; and a single
run's checkpoint against a raw commit of the same statements in the same durability mode.

    python bench/concurrent_runs.py                 # private PostgreSQL, 3 rounds, ~2-3 min
    python bench/concurrent_runs.py --quick         # 1 round, 30 runs
    python bench/concurrent_runs.py --runs 100 --steps 100 --repeat 5 --json out.json

Workloads (every row: `--runs` workflows started at once, each `--steps` trivial steps; steps/s
= runs x steps / wall time from the first start to the last end):

- ours: `DurableRunner.start` of `calls(steps)` (100 `Call(trivial, i)`, each checkpointed
  before the next) in `--runs` concurrent tasks of one process. Concurrent checkpoints are
  committed in groups (docs/durable/store.md).
- DBOS: `DBOS.start_workflow` of a `@DBOS.workflow` calling a `@DBOS.step` `--steps` times,
  `--runs` at once, in a process of its own (this file with `--dbos URL`), the handles'
  results awaited; DBOS's system database on the same engine (a SQLite file, or the same
  PostgreSQL server).

Durability: SQLite rows say their mode: ours WAL `synchronous=NORMAL` (the default: survives a
process crash, may lose the last commits on power loss), ours WAL `synchronous=FULL` (fsync per
commit), DBOS's own SQLite settings. PostgreSQL: a private server with `fsync=on` and
`synchronous_commit=on` (every commit waits for its WAL flush) for both systems.

Single-run checkpoint: `Store.checkpoint` appending one log entry to a run (200 in a row, one
run alone: no group to join) against the raw commit of the same statements in the same mode:
SQLite: `BEGIN IMMEDIATE`, the guarded `UPDATE ... RETURNING`, the log `INSERT`, `COMMIT` on a
plain sqlite3 connection in the calling thread; PostgreSQL: the same UPDATE and INSERT as one
statement (an implicit transaction, one round trip) on a plain asyncpg connection.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa

from effects import Call, computation
from effects.durable import DurableRunner
from effects.durable._log import make_entry
from effects.durable._store import LogRows, RunRow

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import _database, private_postgres  # noqa: E402


def trivial(i: int) -> int:
    """One step's work: nothing (a plain function: it runs in a worker thread, as DBOS's)."""
    return i


@computation(name="bench.concurrent.calls", version=1)
def calls(n: int) -> Generator[Any, Any, int]:
    """`n` trivial external calls, a checkpoint after each."""
    total = 0
    for i in range(n):
        total += yield Call(trivial, i)
    return total


# -- ours ----------------------------------------------------------------------------------------


async def ours_round(runner: DurableRunner, runs: int, steps: int) -> float:
    """Steps per second of `runs` concurrent runs of `steps` Calls."""
    done: list[Any] = []

    async def one() -> None:
        done.append(await runner.start(calls(steps)))

    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(runs):
            tg.start_soon(one)
    elapsed = time.perf_counter() - t
    assert all(r.status == "done" for r in done), [r.outcome for r in done][:3]
    return runs * steps / elapsed


def _row(run_id: str, owner: str) -> RunRow:
    now = time.time()
    return RunRow(run_id, "bench.x", 1, "{}", "running", None, None, None, None, None, 1, owner,
                  now + 600, False, now, now)  # fmt: skip


async def single_checkpoint(runner: DurableRunner, tag: str, n: int = 200) -> float:
    """Microseconds per `Store.checkpoint` of one entry, one run alone."""
    store = runner.store
    run_id = f"single-{tag}"
    await store.insert(_row(run_id, runner.owner), lease=600)
    rows, revision = LogRows(run_id), 1
    entries = [make_entry(i, "bench.Step", "0" * 16, {"i": i}, "done", i) for i in range(n)]
    t = time.perf_counter()
    for i in range(n):
        revision, _ = await store.checkpoint(
            run_id, revision=revision, owner=runner.owner, changes={},
            log=rows.diff(entries[: i + 1]), lease=runner.lease,
        )  # fmt: skip
    return (time.perf_counter() - t) / n * 1e6


def wal_checkpoint(path: str) -> None:
    """Empty the WAL (both measurements start from the same state)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def raw_sqlite(path: str, synchronous: str, tag: str, n: int = 200) -> float:
    """Microseconds per raw commit of a checkpoint's statements on a plain sqlite3 connection
    in this thread, in the same journal and synchronous mode as the store."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA foreign_keys=ON")
    # WAL checkpoints are maintenance, not the commit: none during the measurement (the
    # WAL is emptied before each), as on the store's inline connection.
    db.execute("PRAGMA wal_autocheckpoint=0")
    run_id = f"raw-{tag}"
    now = time.time()
    db.execute(
        "INSERT INTO effects_runs (id, name, version, args, status, revision, lease_owner, "
        "lease_expires, cancel_requested, created_at, updated_at) "
        "VALUES (?, 'bench.x', 1, '{}', 'running', 1, 'raw', ?, 0, ?, ?)",
        (run_id, now + 600, now, now),
    )
    rows = LogRows(run_id)
    texts = [rows.encode(make_entry(i, "bench.Step", "0" * 16, {"i": i}, "done", i))
             for i in range(n)]  # fmt: skip
    t = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN IMMEDIATE")
        found = db.execute(
            "UPDATE effects_runs SET revision = ?, updated_at = ?, lease_expires = "
            "((julianday('now') - 2440587.5) * 86400.0) + ? "
            "WHERE id = ? AND revision = ? AND lease_owner = ? RETURNING cancel_requested",
            (i + 2, time.time(), 30.0, run_id, i + 1, "raw"),
        ).fetchall()
        assert found
        db.execute("INSERT INTO effects_log (run_id, seq, entry) VALUES (?, ?, ?)",
                   (run_id, i, texts[i]))  # fmt: skip
        db.execute("COMMIT")
    elapsed = (time.perf_counter() - t) / n * 1e6
    db.close()
    return elapsed


async def raw_postgres(url: str, tag: str, n: int = 200) -> float:
    """Microseconds per raw commit of a checkpoint's statements on a plain asyncpg
    connection: the guarded UPDATE and the log INSERT as one statement (one round trip)."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    run_id = f"raw-{tag}"
    now = time.time()
    await conn.execute(
        "INSERT INTO effects_runs (id, name, version, args, status, revision, lease_owner, "
        "lease_expires, cancel_requested, created_at, updated_at) "
        "VALUES ($1, 'bench.x', 1, '{}', 'running', 1, 'raw', $2, false, $3, $3)",
        run_id, now + 600, now,
    )  # fmt: skip
    rows = LogRows(run_id)
    texts = [rows.encode(make_entry(i, "bench.Step", "0" * 16, {"i": i}, "done", i))
             for i in range(n)]  # fmt: skip
    sql = (
        "WITH u AS (UPDATE effects_runs SET revision = $1, updated_at = $2, lease_expires = "
        "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION) + $3 "
        "WHERE id = $4 AND revision = $5 AND lease_owner = 'raw' RETURNING cancel_requested), "
        "i AS (INSERT INTO effects_log (run_id, seq, entry) SELECT $4, $6, $7 "
        "WHERE EXISTS (SELECT 1 FROM u)) SELECT cancel_requested FROM u"
    )
    t = time.perf_counter()
    for i in range(n):
        found = await conn.fetchrow(sql, i + 2, time.time(), 30.0, run_id, i + 1, i, texts[i])
        assert found is not None
    elapsed = (time.perf_counter() - t) / n * 1e6
    await conn.close()
    return elapsed


# -- DBOS ----------------------------------------------------------------------------------------


def dbos_server(url: str, runs: int, steps: int) -> None:
    """The DBOS process: launch once, then for every line on stdin run a round and print its
    steps per second."""
    from dbos import DBOS

    DBOS(config={"name": "bench-concurrent", "system_database_url": url,
                 "log_level": "WARNING", "run_admin_server": False})  # type: ignore[typeddict-unknown-key]  # fmt: skip

    @DBOS.step()
    def dbos_step(i: int) -> int:
        return i

    @DBOS.workflow()
    def dbos_steps(n: int) -> int:
        total = 0
        for i in range(n):
            total += dbos_step(i)
        return total

    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    print("ready", flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        handles = [DBOS.start_workflow(dbos_steps, steps) for _ in range(runs)]
        assert all(h.get_result() == sum(range(steps)) for h in handles)
        print(runs * steps / (time.perf_counter() - t), flush=True)
    DBOS.destroy()


class Dbos:
    """A DBOS process driven round by round."""

    def __init__(self, url: str, runs: int, steps: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--dbos", url, "--runs", str(runs), "--steps", str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise SystemExit(f"DBOS did not start: {line!r}")

    def round(self) -> float:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


# -- main ----------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, tmp: str, pg: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)
        print(f"  {key:<28} {value:>12,.0f}", flush=True)

    sqlite_normal = f"{tmp}/ours.db"
    sqlite_full = f"{tmp}/ours-full.db"
    pg_ours = _database(pg, "bench_concurrent_ours")
    dbos = {
        "dbos_sqlite": Dbos(f"sqlite:///{tmp}/dbos.sqlite", args.runs, args.steps),
        "dbos_pg": Dbos(_database(pg, "bench_concurrent_dbos"), args.runs, args.steps),
    }
    try:
        async with (
            DurableRunner(f"sqlite+aiosqlite:///{sqlite_normal}", timers=False) as normal,
            DurableRunner(
                f"sqlite+aiosqlite:///{sqlite_full}?synchronous=full", timers=False
            ) as full,  # fmt: skip
            DurableRunner(
                pg_ours.replace("postgresql://", "postgresql+asyncpg://", 1), timers=False
            ) as postgres,  # fmt: skip
        ):
            for r in range(-1, args.repeat):  # one warm-up round
                print(f"round {r + 1}" if r >= 0 else "warm-up", flush=True)
                record = add if r >= 0 else (lambda key, value: None)
                record("ours_sqlite", await ours_round(normal, args.runs, args.steps))
                record("ours_sqlite_full", await ours_round(full, args.runs, args.steps))
                record("dbos_sqlite", dbos["dbos_sqlite"].round())
                record("ours_pg", await ours_round(postgres, args.runs, args.steps))
                record("dbos_pg", dbos["dbos_pg"].round())
                tag = f"{r + 1}"
                for path in (sqlite_normal, sqlite_full):
                    wal_checkpoint(path)
                record("ckpt_sqlite", await single_checkpoint(normal, tag))
                record("raw_sqlite", raw_sqlite(sqlite_normal, "NORMAL", tag))
                record("ckpt_sqlite_full", await single_checkpoint(full, tag))
                record("raw_sqlite_full", raw_sqlite(sqlite_full, "FULL", tag))
                record("ckpt_pg", await single_checkpoint(postgres, tag))
                record("raw_pg", await raw_postgres(pg_ours, tag))
    finally:
        for d in dbos.values():
            d.close()
    return samples


def paired(samples: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 30 runs")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--dbos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dbos:
        dbos_server(args.dbos, args.runs, args.steps)
        return
    if args.quick:
        args.runs, args.repeat = 30, 1
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" {args.runs} concurrent runs x {args.steps} steps, {args.repeat} rounds",
        flush=True,
    )
    tmp = tempfile.mkdtemp(prefix="effects-bench-concurrent-")
    try:
        with private_postgres("on") as pg:
            samples = anyio.run(measure, args, tmp, pg, backend="asyncio")
            engine = sa.create_engine(pg.replace("postgresql://", "postgresql+psycopg://"))
            with engine.connect() as c:
                version = str(c.exec_driver_sql("SHOW server_version").scalar()).split()[0]
            engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'steps/s':<46} {'median':>10} {'best':>10}")
    rows = [
        ("ours, SQLite WAL synchronous=NORMAL", "ours_sqlite"),
        ("ours, SQLite WAL synchronous=FULL", "ours_sqlite_full"),
        ("DBOS, SQLite (its defaults)", "dbos_sqlite"),
        (f"ours, PostgreSQL {version} synchronous_commit=on", "ours_pg"),
        (f"DBOS, PostgreSQL {version} synchronous_commit=on", "dbos_pg"),
    ]
    for label, key in rows:
        v = samples[key]
        print(f"{label:<46} {statistics.median(v):>10,.0f} {max(v):>10,.0f}")
    print()
    print(f"{'one checkpoint, one run alone (us)':<46} {'min':>10} {'median':>10}")
    for label, key in [
        ("ours, SQLite NORMAL", "ckpt_sqlite"),
        ("raw commit, SQLite NORMAL", "raw_sqlite"),
        ("ours, SQLite FULL", "ckpt_sqlite_full"),
        ("raw commit, SQLite FULL", "raw_sqlite_full"),
        ("ours, PostgreSQL", "ckpt_pg"),
        ("raw commit, PostgreSQL", "raw_pg"),
    ]:
        v = samples[key]
        print(f"{label:<46} {min(v):>10,.1f} {statistics.median(v):>10,.1f}")
    print()
    ratios = [
        ("ours / DBOS steps/s, SQLite NORMAL", "ours_sqlite", "dbos_sqlite", 10, ">="),
        ("ours / DBOS steps/s, SQLite FULL", "ours_sqlite_full", "dbos_sqlite", None, ""),
        ("ours / DBOS steps/s, PostgreSQL", "ours_pg", "dbos_pg", 10, ">="),
        ("checkpoint / raw commit, SQLite NORMAL", "ckpt_sqlite", "raw_sqlite", 3, "<="),
        ("checkpoint / raw commit, SQLite FULL", "ckpt_sqlite_full", "raw_sqlite_full", 3, "<="),
        ("checkpoint / raw commit, PostgreSQL", "ckpt_pg", "raw_pg", 3, "<="),
    ]
    print(f"{'ratio (paired median)':<46} {'measured':>10}   goal")
    for name, a, b, goal, op in ratios:
        value = paired(samples, a, b)
        if goal is None:
            print(f"{name:<46} {value:>10.2f}")
            continue
        ok = value >= goal if op == ">=" else value <= goal
        print(f"{name:<46} {value:>10.2f}   {op} {goal}: {'met' if ok else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
