"""Durable queues on PostgreSQL: throughput of queued 10-step runs with 1, 2 and 4 worker
processes, and enqueue -> claim latency; the same workload with DBOS queues on the same
PostgreSQL server, side by side in the same run.

    python bench/scale.py                       # starts a private PostgreSQL, ~2-3 min
    python bench/scale.py --runs 300 --latency 100   # quicker
    python bench/scale.py --url postgresql://postgres@127.0.0.1:5432/postgres  # a server of yours
    python bench/scale.py --no-dbos             # ours only

Workload: a run of 10 trivial steps (`Call(trivial, i)`, a checkpoint after each; DBOS: a
`@DBOS.workflow` calling a `@DBOS.step` 10 times). For each worker count, N runs are enqueued
while no worker serves, then the workers start; throughput = N / (last run's end - first run's
start), both read from the database (ours: `claimed_at`, `updated_at`; DBOS:
`started_at_epoch_ms`, `updated_at`). Every worker runs at most 8 runs at once (ours:
`--concurrency 8`; DBOS: `worker_concurrency=8`).

Latency: one idle worker; runs are enqueued one at a time, 20 ms apart; latency = the claim's
start (by the database's clock) - the enqueue's start (the enqueuing host's clock; one host
here). DBOS polls its queues (`polling_interval_sec`, default 1 s; here 0.05 s, see
`--dbos-poll`), ours is woken by LISTEN/NOTIFY.

Worker processes: ours are `python -m effects worker --import scale ...` (this module
registers the computation when imported); DBOS's are this file with `--dbos-worker`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from effects import Call, computation

HERE = Path(__file__).resolve().parent
STEPS = 10
CONCURRENCY = 8
QUEUE = "bench"


def trivial(i: int) -> int:
    """One step's work: nothing."""
    return i


@computation(name="bench.scale.steps")
def steps(n: int) -> Generator[Any, Any, int]:
    """`n` trivial external calls, a checkpoint after each."""
    total = 0
    for i in range(n):
        total += yield Call(trivial, i)
    return total


# -- a private PostgreSQL server --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def private_postgres(synchronous_commit: str = "on") -> Iterator[str]:
    """A throwaway PostgreSQL cluster with the server's default durability settings (fsync
    on; `synchronous_commit` as given). Yields a base URL (no driver, database `postgres`)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin)")
    bindir = found[-1].parent
    root = Path(tempfile.mkdtemp(prefix="effects-bench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"

    def run(*args: str) -> None:
        subprocess.run([*run_as, *args], cwd=root, check=True, capture_output=True)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{root}'"
    options += f" -c max_connections=200 -c synchronous_commit={synchronous_commit}"
    run(
        str(bindir / "pg_ctl"),
        "start",
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        options,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"],
            cwd=root,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _database(base: str, name: str) -> str:
    """Create database `name` on the server of `base` (dropped first); its plain URL."""
    engine = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return str(sa.make_url(base).set(database=name).render_as_string(hide_password=False))


def _sync(url: str) -> sa.Engine:
    return sa.create_engine(
        sa.make_url(url).set(drivername="postgresql+psycopg"), pool_pre_ping=True
    )


# -- processes ----------------------------------------------------------------------------------


@contextmanager
def processes(commands: list[list[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start the worker processes, wait until each says it serves, stop them at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    started = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for c in commands
    ]
    try:
        for p in started:
            assert p.stdout is not None
            line = p.stdout.readline()
            if "serving" not in line:
                p.kill()
                raise SystemExit(f"a worker did not start: {line!r} {p.communicate()[1]}")
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in started:
            try:
                p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def _wait(engine: sa.Engine, sql: str, n: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if conn.exec_driver_sql(sql).scalar() == n:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {n} finished runs")
        time.sleep(0.05)


# -- ours ---------------------------------------------------------------------------------------

_OURS_DONE = "SELECT count(*) FROM effects_runs WHERE status = 'done'"


class Ours:
    """Our queues: enqueue through a DurableRunner, `python -m effects worker` processes."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        self.engine = _sync(url)

    def worker(self) -> list[str]:
        return [
            sys.executable,
            *("-m", "effects", "worker", "--db", self.url, "--import", "scale"),
            *("--queue", QUEUE, "--concurrency", str(CONCURRENCY)),
        ]

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM effects_runs")

    def enqueue(self, n: int, gap: float = 0.0) -> None:
        import anyio

        from effects.durable import DurableRunner

        async def go() -> None:
            async with DurableRunner(self.url, timers=False) as runner:
                for _ in range(n):
                    await runner.enqueue(steps(STEPS), queue=QUEUE)
                    if gap:
                        await anyio.sleep(gap)

        anyio.run(go, backend="asyncio")

    def throughput(self, n: int, workers: int) -> float:
        self.reset()
        self.enqueue(n)
        with processes([self.worker() for _ in range(workers)]):
            _wait(self.engine, _OURS_DONE, n)
        with self.engine.connect() as conn:
            first, last = conn.exec_driver_sql(
                "SELECT min(claimed_at), max(updated_at) FROM effects_runs"
            ).one()
        return n / (last - first)

    def latency(self, n: int) -> list[float]:
        self.reset()
        with processes([self.worker()]):
            self.enqueue(n, gap=0.02)
            _wait(self.engine, _OURS_DONE, n)
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT claimed_at - created_at FROM effects_runs").all()
        return [r[0] for r in rows]


# -- DBOS ---------------------------------------------------------------------------------------

_DBOS_DONE = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"


def _dbos_app(url: str, poll: float, worker: bool) -> Any:
    from dbos import DBOS

    DBOS(
        config={
            "name": "bench-scale",
            "system_database_url": url,
            "log_level": "WARNING",
        }
    )

    @DBOS.step()
    def dbos_step(i: int) -> int:
        return i

    @DBOS.workflow(name="bench_steps")
    def dbos_steps(n: int) -> int:
        total = 0
        for i in range(n):
            total += dbos_step(i)
        return total

    if not worker:
        DBOS.listen_queues([])
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=CONCURRENCY, polling_interval_sec=poll)
    return DBOS


def dbos_worker(url: str, poll: float) -> None:
    """A DBOS worker process: serve the queue until SIGTERM."""
    dbos = _dbos_app(url, poll, worker=True)
    print("serving", flush=True)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        time.sleep(0.1)
    dbos.destroy(workflow_completion_timeout_sec=0)


class Dbos:
    """DBOS queues: a DBOSClient enqueues, DBOS processes (this file) work."""

    def __init__(self, url: str, poll: float) -> None:
        self.url = url
        self.poll = poll
        self.engine = _sync(url)
        # Launch once to create the system database and register the queue.
        with processes([self.worker()]):
            pass

    def worker(self) -> list[str]:
        return [
            sys.executable,
            str(HERE / "scale.py"),
            "--dbos-worker",
            self.url,
            "--dbos-poll",
            str(self.poll),
        ]

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM dbos.workflow_status")

    def enqueue(self, n: int, gap: float = 0.0) -> None:
        from dbos import DBOSClient

        client = DBOSClient(system_database_url=self.url)
        try:
            for _ in range(n):
                client.enqueue({"queue_name": QUEUE, "workflow_name": "bench_steps"}, STEPS)
                if gap:
                    time.sleep(gap)
        finally:
            client.destroy()

    def throughput(self, n: int, workers: int) -> float:
        self.reset()
        self.enqueue(n)
        with processes([self.worker() for _ in range(workers)]):
            _wait(self.engine, _DBOS_DONE, n)
        with self.engine.connect() as conn:
            first, last = conn.exec_driver_sql(
                "SELECT min(started_at_epoch_ms), max(updated_at) FROM dbos.workflow_status"
            ).one()
        return n / ((last - first) / 1000)

    def latency(self, n: int) -> list[float]:
        self.reset()
        with processes([self.worker()]):
            self.enqueue(n, gap=0.02)
            _wait(self.engine, _DBOS_DONE, n)
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT started_at_epoch_ms - created_at FROM dbos.workflow_status"
            ).all()
        return [r[0] / 1000 for r in rows]


# -- main ---------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    systems: dict[str, Any] = {"ours": Ours(_database(base, "bench_ours"))}
    # Our schema is created by the first runner: enqueue nothing, once.
    systems["ours"].enqueue(0)
    if args.dbos:
        systems["dbos"] = Dbos(_database(base, "bench_dbos"), args.dbos_poll)
    results: dict[str, Any] = {"throughput": {}, "latency": {}}
    for workers in args.workers:
        for name, system in systems.items():
            rate = system.throughput(args.runs, workers)
            results["throughput"].setdefault(name, {})[workers] = rate
            print(f"{name:5} {workers} worker(s): {rate:8.1f} runs/s", flush=True)
    for name, system in systems.items():
        lat = system.latency(args.latency)
        results["latency"][name] = {
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": _pct(lat, 0.99) * 1000,
            "max_ms": max(lat) * 1000,
        }
        print(f"{name:5} enqueue -> claim: {results['latency'][name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL server (postgresql://...); default: private")
    parser.add_argument("--runs", type=int, default=600, help="runs per throughput round")
    parser.add_argument("--latency", type=int, default=200, help="runs of the latency round")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-dbos", dest="dbos", action="store_false")
    parser.add_argument("--dbos-poll", type=float, default=0.05, help="DBOS queue polling (s)")
    parser.add_argument("--dbos-worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="the private server's synchronous_commit (off: commits do not wait for the WAL "
        "flush, so the disk's fsync rate does not bound both systems)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.dbos_worker:
        dbos_worker(args.dbos_worker, args.dbos_poll)
        return
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {args.runs} runs of {STEPS} steps per round",
        flush=True,
    )
    if args.url:
        results = measure(args.url, args)
    else:
        with private_postgres(args.synchronous_commit) as base:
            results = measure(base, args)
    ours, dbos = results["throughput"]["ours"], results["throughput"].get("dbos")
    if dbos:
        for workers in args.workers:
            print(f"ours / DBOS with {workers} worker(s): {ours[workers] / dbos[workers]:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
