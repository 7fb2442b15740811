"""Many concurrent suspended `AsyncComputation` runners: memory each, and resume latency.

N runners (default 10,000) of a 3-step wizard are started in one task group of one process and
left suspended at their first prompt. Measured, per backend (asyncio, trio):

- memory per suspended runner: the growth of traced Python memory (tracemalloc, in a run of
  its own because tracing slows everything down) and of the process RSS (in the timing run),
  divided by N, after a garbage collection;
- resume -> next suspend latency: with all N live, each runner in turn (shuffled order) is
  resumed with ``await runner.resume_sync(answer)`` and timed until that step's `Suspend`
  comes back; two passes (step 1 -> 2 and step 2 -> 3), so every sample is taken while all N
  runners are live. p50, p99 and max over the 2N samples. Then every runner finishes.

For comparison, the "task per runner" row measures what a design that parks one task per
suspended runner would add *on top*: N bare tasks, each waiting on its own `anyio.Event`.

    python bench/async_runs.py                  # N = 10,000, asyncio and trio
    python bench/async_runs.py --quick          # N = 1,000
    python bench/async_runs.py --backend trio --json out.json

Configurations ("owner" column): `callback` passes `on_message` (a page pushing each message:
nothing is buffered); `iterator` keeps messages for `async for` and leaves them unread (the
worst case: every outcome so far stays in the runner's inbox).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import anyio.lowlevel
import psutil
from pydantic import BaseModel

from effects import AsyncComputation, Done, Message, State, Suspend, Yield


class Age(BaseModel):
    """The second step's answer."""

    age: int


def wizard() -> Generator[Any, Any, str]:
    """Three prompts, one State decoration, validated answers."""
    name = yield Yield("name?", input=str)
    yield State.put(1)
    age = yield Yield("age?", input=Age)
    yield State.put(2)
    ok = yield Yield(f"create {name}, {age.age}?", input=bool)
    return f"created {name}" if ok else "aborted"


ANSWERS = ("ada", {"age": 36}, True)


def _ignore(message: Message) -> None:
    pass


def _options(owner: str) -> dict[str, Any]:
    if owner == "callback":
        return {"on_message": _ignore}
    return {}


async def _start_all(tg: Any, n: int, owner: str) -> list[AsyncComputation]:
    runners = []
    opts = _options(owner)
    for i in range(n):
        runner, out = await AsyncComputation.start_sync(
            wizard(), task_group=tg, tag=i, handlers=State(0), **opts
        )
        assert type(out) is Suspend, out
        assert out.value == "name?", out
        runners.append(runner)
    return runners


async def _finish_all(runners: list[AsyncComputation], from_step: int) -> None:
    for runner in runners:
        for answer in ANSWERS[from_step:]:
            out = await runner.resume_sync(answer)
        assert out == Done("created ada"), out


async def _warm_up(tg: Any) -> None:
    # First use of pydantic adapters, anyio internals, code objects: not per-runner memory.
    for owner in ("callback", "iterator"):
        runners = await _start_all(tg, 50, owner)
        await _finish_all(runners, 0)


def _run(backend: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(fn, backend=backend)


def memory_traced(backend: str, n: int, owner: str) -> float:
    """Bytes of traced Python memory per suspended runner."""

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            await _warm_up(tg)
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            runners = await _start_all(tg, n, owner)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            await _finish_all(runners, 0)
        return (after - before) / n

    result: float = _run(backend, main)
    return result


def memory_task_per_runner(backend: str, n: int) -> float:
    """Bytes of traced memory per bare task parked on its own Event (the comparison row)."""

    async def park(event: anyio.Event) -> None:
        await event.wait()

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            warm = [anyio.Event() for _ in range(50)]
            for ev in warm:
                tg.start_soon(park, ev)
            await anyio.lowlevel.checkpoint()
            for ev in warm:
                ev.set()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            events = [anyio.Event() for _ in range(n)]
            for ev in events:
                tg.start_soon(park, ev)
            # Let every task reach its wait (a parked task, not a scheduled one).
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            for ev in events:
                ev.set()
        return (after - before) / n

    result: float = _run(backend, main)
    return result


def timing(backend: str, n: int, owner: str, seed: int) -> dict[str, Any]:
    """RSS per runner and resume -> next suspend latencies with all `n` runners live."""
    proc = psutil.Process()

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    began: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - began[0])

    async def main() -> dict[str, Any]:
        samples: list[int] = []
        async with anyio.create_task_group() as tg:
            await _warm_up(tg)
            gc.collect()
            rss_before = proc.memory_info().rss
            t0 = time.perf_counter()
            runners = await _start_all(tg, n, owner)
            start_s = time.perf_counter() - t0
            gc.collect()
            rss_after = proc.memory_info().rss
            order = list(runners)
            rng = random.Random(seed)
            gc.callbacks.append(on_gc)
            for step in (0, 1):
                rng.shuffle(order)
                for runner in order:
                    t = time.perf_counter_ns()
                    out = await runner.resume_sync(ANSWERS[step])
                    samples.append(time.perf_counter_ns() - t)
                    assert type(out) is Suspend, out
            gc.callbacks.remove(on_gc)
            t0 = time.perf_counter()
            await _finish_all(runners, 2)
            finish_s = time.perf_counter() - t0
        samples.sort()
        q = statistics.quantiles(samples, n=100, method="inclusive")
        return {
            "rss_per_runner": (rss_after - rss_before) / n,
            "p50_us": q[49] / 1000,
            "p99_us": q[98] / 1000,
            "p999_us": statistics.quantiles(samples, n=1000, method="inclusive")[998] / 1000,
            "max_us": samples[-1] / 1000,
            "samples": len(samples),
            "start_per_s": n / start_s,
            "finish_per_s": n / finish_s,
            "gc_full_collections": len(pauses[2]),
            "gc_max_full_pause_ms": max(pauses[2], default=0.0) * 1000,
            "gc_max_young_pause_ms": max(pauses[0] + pauses[1], default=0.0) * 1000,
        }

    result: dict[str, Any] = _run(backend, main)
    return result


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def child(kind: str, backend: str, owner: str, n: int, seed: int) -> dict[str, Any]:
    """One measurement, in the process it was started in."""
    if kind == "traced":
        return {"traced_per_runner": memory_traced(backend, n, owner)}
    if kind == "task":
        return {"traced_per_runner": memory_task_per_runner(backend, n)}
    return timing(backend, n, owner, seed)


def in_fresh_process(kind: str, backend: str, owner: str, n: int, seed: int) -> dict[str, Any]:
    """Run one measurement in a new interpreter, so that memory freed by an earlier one (which
    the allocator keeps) cannot hide the growth of the next."""
    cmd = [sys.executable, __file__, "--child", kind, backend, owner, str(n), str(seed)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    """Parse options, run every configuration, print a table (and JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="N = 1,000")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, backend, owner, n_text, seed_text = args.child
        print(json.dumps(child(kind, backend, owner, int(n_text), int(seed_text))))
        return
    n = 1_000 if args.quick else args.runners
    backends = ("asyncio", "trio") if args.backend == "both" else (args.backend,)

    rows: list[dict[str, Any]] = []
    for backend in backends:
        for owner in ("callback", "iterator"):
            row: dict[str, Any] = {"backend": backend, "owner": owner, "runners": n}
            row.update(in_fresh_process("traced", backend, owner, n, args.seed))
            row.update(in_fresh_process("timing", backend, owner, n, args.seed))
            rows.append(row)
            print(
                f"{backend:8} {owner:9} N={n:,}: per suspended runner"
                f" {row['traced_per_runner'] / 1024:.2f} KiB traced,"
                f" {row['rss_per_runner'] / 1024:.2f} KiB RSS;"
                f" resume->suspend p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us,"
                f" p99.9 {row['p999_us']:.0f} us, max {row['max_us'] / 1000:.1f} ms"
                f" ({row['samples']:,} samples; {row['gc_full_collections']} full GCs,"
                f" longest {row['gc_max_full_pause_ms']:.0f} ms);"
                f" start {row['start_per_s']:,.0f}/s",
                flush=True,
            )
        task = in_fresh_process("task", backend, "-", n, args.seed)
        rows.append({"backend": backend, "owner": "task per runner", "runners": n, **task})
        print(
            f"{backend:8} comparison: a parked task + its Event adds"
            f" {task['traced_per_runner'] / 1024:.2f} KiB traced each",
            flush=True,
        )

    ok = all(
        r["traced_per_runner"] <= 10 * 1024 and r["p99_us"] <= 1000 for r in rows if "p99_us" in r
    )
    print(f"goals (<= 10 KiB per suspended runner, p99 <= 1 ms): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
