"""Live sessions under load: N concurrent SSE clients, each with a suspended wizard.

The server is the onboarding example (`examples/wizard/app.py`) in a process of its own on
127.0.0.1, with a fresh SQLite file; this process plays N browsers. Each session: GET `/` (the
session cookie, the CSRF token), POST `start` (303 to the run page; the run suspends at its
first `Yield`), GET the run page, open the run page's SSE stream and read its snapshot.

    python bench/live.py                    # N = 1,000 sessions, ~70 s
    python bench/live.py --sessions 200     # quicker
    python bench/live.py --json live.json
    python bench/live.py --trace --sessions 300 --sequential 10   # what each phase allocates
    python bench/live.py --no-gc-tuning     # the server without GcTuning (the default GC)

1. Memory per live session: the server's RSS (`VmRSS` of /proc/PID/status) after a warm-up,
   then after each phase of setting up the N sessions (start page, run started, run page,
   stream open); per session = growth / N, in all and per phase. `--trace` runs the server
   under tracemalloc and shows, per phase, what grew by file and line.
2. Latency under that load, with the N streams open: an answer (the wizard's first step, the
   `X-Live: 1` POST the page's script sends) until the patch with the next step arrives on that
   session's stream. First one answer at a time (`--sequential` of them), then the other
   sessions answer at `--rate` answers per second (Poisson arrivals, whatever the server's
   speed: many users answering at their own pace).

The server runs with `GcTuning()` (`--no-gc-tuning`: without), under a wrapper that times
every garbage collection; the collections of each phase are printed with the results.

Goals: <= 30 KB per live session, p99 <= 50 ms in every run.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "wizard" / "app.py"
NEXT_STEP = "What is your email address?"


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """The resident set size of process `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# The server runs under this wrapper. It times every garbage collection (a `gc.callbacks`
# hook) and, on SIGUSR2, prints the pauses since the previous SIGUSR2 as one JSON line
# (`gc-pauses {...}`). With `--trace` it also runs tracemalloc: on SIGUSR1 it writes the
# allocations that grew since the previous signal, by file and by line, to $BENCH_TRACE.<n>.
WRAPPER = r"""
import gc, json, os, runpy, signal, sys, time
pauses, started = [], {}
def timed(phase, info):
    if phase == "start":
        started["t"] = time.perf_counter()
    elif "t" in started:
        pauses.append((info["generation"], time.perf_counter() - started.pop("t")))
gc.callbacks.append(timed)
def report(signum, frame):
    by_gen = {}
    for gen, took in pauses:
        by_gen.setdefault(gen, []).append(took * 1000)
    summary = {str(g): {"n": len(ms), "max_ms": round(max(ms), 1), "total_ms": round(sum(ms), 1)}
               for g, ms in sorted(by_gen.items())}
    summary["tracked"] = len(gc.get_objects())
    summary["frozen"] = gc.get_freeze_count()
    print("gc-pauses " + json.dumps(summary), flush=True)
    pauses.clear()
signal.signal(signal.SIGUSR2, report)
if os.environ.get("BENCH_GC_THRESHOLDS"):
    # --gc-thresholds: GcTuning() with other thresholds than its defaults.
    from bridges.live import GcTuning
    thresholds = tuple(int(x) for x in os.environ["BENCH_GC_THRESHOLDS"].split(","))
    apply = GcTuning.apply
    def tuned(self):
        apply(self)
        gc.set_threshold(*thresholds)
    GcTuning.apply = tuned
if os.environ.get("BENCH_TRACE"):
    import tracemalloc
    tracemalloc.start()
    out, state = os.environ["BENCH_TRACE"], {"last": None, "n": 0}
    def dump(signum, frame):
        snap = tracemalloc.take_snapshot()
        snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        with open(f"{out}.{state['n']}.tmp", "w") as f:
            for kind in ("filename", "lineno") if state["last"] is not None else ():
                for stat in snap.compare_to(state["last"], kind)[:25]:
                    f.write(f"{kind}\t{stat.size_diff}\t{stat.count_diff}\t{stat.traceback}\n")
        os.replace(f"{out}.{state['n']}.tmp", f"{out}.{state['n']}")
        print(f"traced {state['n']}", flush=True)
        state["last"], state["n"] = snap, state["n"] + 1
    signal.signal(signal.SIGUSR1, dump)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Server:
    """The example's process, and a thread that reads what it prints (so that its pipe never
    fills up) and lets the benchmark wait for a line."""

    def __init__(
        self,
        port: int,
        db: Path,
        trace: Path | None = None,
        gc_tuning: bool = True,
        gc_thresholds: str | None = None,
    ) -> None:
        command = [sys.executable, "-c", WRAPPER, str(APP), "--port", str(port), "--db", str(db)]
        if not gc_tuning:
            command.append("--no-gc-tuning")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gc_thresholds:
            env["BENCH_GC_THRESHOLDS"] = gc_thresholds
        if trace is not None:
            env["BENCH_TRACE"] = str(trace)
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("Uvicorn running on")

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                with self._seen:
                    self.lines.append(line)
                    self._seen.notify_all()

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        """Block until the server prints a line containing `needle`."""
        with self._seen:
            if not self._seen.wait_for(lambda: any(needle in x for x in self.lines), timeout):
                raise RuntimeError(f"the server never printed {needle!r}:\n{''.join(self.lines)}")

    async def gc_pauses(self) -> dict[str, Any]:
        """The server's garbage collections since the previous call: per generation, how
        many, the longest and the total pause (ms); and the objects tracked and frozen."""
        number = sum("gc-pauses " in line for line in self.lines)
        self.process.send_signal(signal.SIGUSR2)

        def printed() -> bool:
            return sum("gc-pauses " in line for line in self.lines) > number

        await anyio.to_thread.run_sync(lambda: self._wait(printed))
        last = [line for line in self.lines if line.startswith("gc-pauses ")][-1]
        result: dict[str, Any] = json.loads(last.split(" ", 1)[1])
        return result

    def _wait(self, predicate: Callable[[], bool]) -> None:
        with self._seen:
            if not self._seen.wait_for(predicate, 60):
                raise RuntimeError("the server did not report its collections")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        self.process.wait(20)
        self._reader.join(20)


# -- one session ----------------------------------------------------------------------------------


@dataclass
class Session:
    """One browser: its cookie and CSRF token, its run, and its open stream."""

    cookie: str = ""
    csrf: str = ""
    path: str = ""
    key: str = ""
    stream: anyio.abc.SocketStream | None = None
    waiting: anyio.Event | None = None
    needle: str = ""
    arrived: float = 0.0
    events: int = 0
    buffer: bytearray = field(default_factory=bytearray)


def _hidden(page: str, event: str) -> str:
    match = re.search(
        rf'name="_event" value="{event}"><input type="hidden" name="_key" value="([^"]*)"', page
    )
    assert match is not None, f"no {event} form"
    return html.unescape(match.group(1))


def browser_client(base: str, connections: int) -> httpx.AsyncClient:
    """One HTTP client for every session: it keeps no cookies (each request carries its
    session's `Cookie` header) and reuses connections, as a browser does."""
    blocked = DefaultCookiePolicy(allowed_domains=[])
    # Idle connections are dropped after 2 s, before the server's keep-alive timeout (5 s):
    # a request sent on a connection the server is closing fails with ReadError (a browser
    # would retry it; this client does not).
    limits = httpx.Limits(max_connections=connections, keepalive_expiry=2.0)
    client = httpx.AsyncClient(base_url=base, timeout=60, limits=limits)
    client.cookies.jar.set_policy(blocked)
    return client


async def open_index(http: httpx.AsyncClient, session: Session) -> None:
    """GET / without a cookie: a new session (its start page is mounted on the server)."""
    response = await http.get("/")
    page = response.text
    cookie = response.headers["set-cookie"].split(";", 1)[0]
    token = re.search(r'<meta name="live-csrf" content="([^"]*)">', page)
    assert token is not None
    session.cookie, session.csrf = cookie, html.unescape(token.group(1))
    session.key = _hidden(page, "start")


async def start_run(http: httpx.AsyncClient, session: Session) -> None:
    """POST start: the run is created and runs to its first `Yield` (then it is evicted)."""
    data = {"_csrf": session.csrf, "_event": "start", "_key": session.key}
    response = await http.post("/", data=data, headers={"Cookie": session.cookie})
    assert response.status_code == 303, response.status_code
    session.path = response.headers["location"]


async def open_run_page(http: httpx.AsyncClient, session: Session) -> None:
    """GET the run page (its view is mounted on the server and follows the run)."""
    page = (await http.get(session.path, headers={"Cookie": session.cookie})).text
    assert "What is your name?" in page, "the run is not at its first step"
    session.key = _hidden(page, "answer")


async def _fill(session: Session) -> None:
    assert session.stream is not None
    session.buffer += await session.stream.receive()


async def _chunk(session: Session) -> bytes:
    """The next chunk of the chunked response body."""
    while (eol := session.buffer.find(b"\r\n")) < 0:
        await _fill(session)
    size = int(bytes(session.buffer[:eol]).split(b";")[0], 16)
    need = eol + 2 + size + 2
    while len(session.buffer) < need:
        await _fill(session)
    data = bytes(session.buffer[eol + 2 : eol + 2 + size])
    del session.buffer[:need]
    if size == 0:
        raise EOFError("the server ended the stream")
    return data


async def open_stream(port: int, session: Session) -> None:
    """Open the run page's SSE stream (a raw HTTP/1.1 request) and read up to its snapshot."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    session.stream = stream
    request = (
        f"GET {session.path}/_live/sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Accept: text/event-stream\r\nCookie: {session.cookie}\r\n\r\n"
    )
    await stream.send(request.encode())
    while (end := session.buffer.find(b"\r\n\r\n")) < 0:
        await _fill(session)
    status = bytes(session.buffer[:end]).split(b" ", 2)[1]
    assert status == b"200", status
    del session.buffer[: end + 4]
    text = ""
    while "event: snapshot" not in text:
        text += (await _chunk(session)).decode()


async def read_stream(session: Session) -> None:
    """Read events for as long as the stream lasts; wake whoever waits for `needle`."""
    text = ""
    while True:
        try:
            text += (await _chunk(session)).decode()
        except (EOFError, anyio.EndOfStream, anyio.ClosedResourceError):
            return
        while "\n\n" in text:
            block, text = text.split("\n\n", 1)
            session.events += 1
            waiting = session.waiting
            if waiting is not None and "event: patch" in block:
                data = json.loads(block.split("data: ", 1)[1])
                main = data["regions"].get("main")
                if main is not None and session.needle in main["html"]:
                    session.arrived = time.perf_counter()
                    waiting.set()


async def answer(http: httpx.AsyncClient, session: Session, name: str) -> float:
    """Answer the first step; seconds from the POST to the patch on the session's stream."""
    session.waiting, session.needle = anyio.Event(), NEXT_STEP
    data = {"_csrf": session.csrf, "_event": "answer", "_key": session.key, "name": name}
    headers = {"X-Live": "1", "Cookie": session.cookie}
    sent = time.perf_counter()
    async with anyio.create_task_group() as tg:

        async def post() -> None:
            response = await http.post(session.path, data=data, headers=headers)
            assert response.status_code == 200, response.text[:200]

        tg.start_soon(post)
        with anyio.fail_after(30):
            await session.waiting.wait()
    session.waiting = None
    return session.arrived - sent


async def in_batches(items: list[Any], size: int, fn: Callable[[Any], Awaitable[None]]) -> None:
    """`fn(item)` for every item, at most `size` at a time."""
    limiter = anyio.CapacityLimiter(size)

    async def one(item: Any) -> None:
        async with limiter:
            await fn(item)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)


# -- the benchmark --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def bench(
    n: int,
    warmup: int,
    sequential: int,
    rate: float,
    concurrency: int,
    trace: bool,
    gc_tuning: bool = True,
    gc_thresholds: str | None = None,
) -> Any:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(tmp) / "trace" if trace else None
        server = Server(port, Path(tmp) / "runs.db", traces, gc_tuning, gc_thresholds)
        try:
            return await _measure(
                server, port, base, n, warmup, sequential, rate, concurrency, traces
            )
        except BaseException:
            server.stop()  # all it printed is read once it has exited
            said = [line for line in server.lines if not line.startswith(("event:", "INFO:"))]
            log = Path(tempfile.gettempdir()) / f"bench-live-server-{server.pid}.log"
            log.write_text("".join(said))
            print(f"the server's output: {log}", file=sys.stderr)
            raise
        finally:
            server.stop()


async def traced(server: Server, traces: Path, n: int) -> list[str]:
    """Have the traced server compare its allocations with the previous call's; returns the
    biggest growths as lines `kind  KiB/session  blocks/session  where`."""
    number = sum("traced " in line for line in server.lines)
    server.process.send_signal(signal.SIGUSR1)
    await anyio.to_thread.run_sync(server.wait_for, f"traced {number}")
    report = traces.with_name(f"{traces.name}.{number}")
    lines = []
    for row in report.read_text().splitlines():
        kind, size, count, where = row.split("\t")
        lines.append(f"{kind:8} {int(size) / 1024 / n:8.2f} KiB {int(count) / n:8.1f}  {where}")
    return lines


async def _measure(
    server: Server,
    port: int,
    base: str,
    n: int,
    warmup: int,
    sequential: int,
    rate: float,
    concurrency: int,
    traces: Path | None,
) -> dict[str, Any]:
    pid = server.pid
    results: dict[str, Any] = {"sessions": n}
    phases: list[tuple[str, Callable[[Session], Awaitable[None]]]] = []
    async with (
        anyio.create_task_group() as readers,
        browser_client(base, concurrency * 2) as http,
    ):
        phases = [
            ("start page", lambda s: open_index(http, s)),
            ("run started", lambda s: start_run(http, s)),
            ("run page", lambda s: open_run_page(http, s)),
            ("stream", lambda s: open_stream(port, s)),
        ]
        # Warm-up: sessions that go through every path once (templates compiled, caches
        # filled, pools opened); they stay, as other users' sessions would.
        warm = [Session() for _ in range(warmup)]
        for _, phase in phases:
            await in_batches(warm, concurrency, phase)
        for s in warm:
            readers.start_soon(read_stream, s)
        for s in warm:
            await answer(http, s, "warm")

        sessions = [Session() for _ in range(n)]
        gc_pauses = {"warm-up": await server.gc_pauses()}
        rss = [("base", rss_kib(pid))]
        seconds = {}
        allocations: dict[str, list[str]] = {}
        if traces is not None:
            await traced(server, traces, n)
        for name, phase in phases:
            t0 = time.perf_counter()
            await in_batches(sessions, concurrency, phase)
            seconds[name] = round(time.perf_counter() - t0, 2)
            rss.append((name, rss_kib(pid)))
            if traces is not None:
                allocations[name] = await traced(server, traces, n)
        if allocations:
            results["allocations"] = allocations
        for s in sessions:
            readers.start_soon(read_stream, s)
        results["phase_seconds"] = seconds
        results["rss_kib"] = dict(rss)
        results["kib_per_session"] = {
            name: round((kib - rss[i][1]) / n, 1) for i, (name, kib) in enumerate(rss[1:])
        }
        results["kib_per_session"]["total"] = round((rss[-1][1] - rss[0][1]) / n, 1)
        gc_pauses["set-up"] = await server.gc_pauses()

        # Latency with every stream open: one answer at a time...
        first = sessions[:sequential]
        seq = [await answer(http, s, f"user {i}") for i, s in enumerate(first)]
        results["latency_sequential"] = summary(seq)
        gc_pauses["sequential"] = await server.gc_pauses()
        # ... then answers arriving at `rate` per second (open loop: Poisson arrivals, whatever
        # the server's speed), as many users answering at their own pace.
        paced: list[float] = []
        rng = random.Random(1)

        async def timed(s: Session, i: int) -> None:
            paced.append(await answer(http, s, f"paced {i}"))

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, s in enumerate(sessions[sequential:]):
                tg.start_soon(timed, s, i)
                await anyio.sleep(rng.expovariate(rate))
        elapsed = time.perf_counter() - t0
        if paced:
            results["latency_paced"] = {
                **summary(paced),
                "offered_per_s": rate,
                "answered_per_s": round(len(paced) / elapsed, 1),
            }
        gc_pauses["paced"] = await server.gc_pauses()
        results["gc_pauses"] = gc_pauses
        results["rss_kib"]["after answers"] = rss_kib(pid)
        results["open_streams"] = sum(s.stream is not None for s in warm + sessions)
        for s in warm + sessions:
            if s.stream is not None:
                await s.stream.aclose()
        readers.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=200, help="answers sent one by one")
    parser.add_argument("--rate", type=float, default=25, help="answers per second after that")
    parser.add_argument("--concurrency", type=int, default=50, help="sessions set up at a time")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--no-gc-tuning",
        action="store_true",
        help="run the server with the interpreter's default garbage collector settings "
        "(the example's --no-gc-tuning) instead of GcTuning()",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the server under tracemalloc and show what each phase allocates per session "
        "(slow: timings are meaningless then)",
    )
    parser.add_argument(
        "--gc-thresholds",
        metavar="G0,G1,G2",
        help="GcTuning() with these collection thresholds instead of its defaults",
    )
    args = parser.parse_args()
    results = anyio.run(
        bench,
        args.sessions,
        args.warmup,
        min(args.sequential, args.sessions),
        args.rate,
        args.concurrency,
        args.trace,
        not args.no_gc_tuning,
        args.gc_thresholds,
        backend="asyncio",
    )
    results["gc_tuning"] = args.gc_thresholds or not args.no_gc_tuning
    results["load_average_after"] = os.getloadavg()
    results["machine"] = (
        f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    )
    kib = results["kib_per_session"]
    print(f"{results['sessions']} live sessions; seconds per phase {results['phase_seconds']}")
    print(f"server RSS (KiB) after each phase: {results['rss_kib']}")
    print(f"memory per live session: {kib['total']} KiB, by phase {kib}; goal <= 30 KB")
    for name in ("latency_sequential", "latency_paced"):
        if name in results:
            print(f"{name}: {results[name]}; goal p99 <= 50 ms")
    print(f"gc tuning: {results['gc_tuning']}; collections (ms) by phase:")
    for phase, pauses in results["gc_pauses"].items():
        print(f"  {phase}: {pauses}")
    print(f"load average after the run: {results['load_average_after']}")
    for phase, lines in results.get("allocations", {}).items():
        print(f"\nallocations per session, phase {phase!r}:")
        print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
