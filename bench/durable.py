"""Durable runs on SQLite: cost per step and per checkpoint, cold resume of a long log, and
DBOS Transact on the same machine and database engine.

    python bench/durable.py                  # full run, ~1 min
    python bench/durable.py --quick          # fewer rounds, a smoke test
    python bench/durable.py --json out.json  # also write the results

Workloads (each a fresh run of a 100-step workflow whose steps are trivial functions; the time
per step is the whole run, creation and final write included, divided by 100, the same way
for both systems):

- ours, checkpoint per step: 100 `Call`s (external, at-least-once): a checkpoint after each.
- ours, write-ahead per step: 100 at-most-once effects: a write-ahead checkpoint before each.
- ours, write-ahead, synchronous=FULL: the same with SQLite's `synchronous=FULL` (fsync on
  every commit: durable across power loss, like DBOS's default SQLite settings).
- ours, checkpoint at suspend: 100 recorded in-memory effects, one checkpoint at the end.
- DBOS: `@DBOS.workflow` calling a `@DBOS.step` 100 times (a SQLite system database).

Plus the cost of one checkpoint transaction alone (`Store.checkpoint` appending one entry to a
run), and a cold resume from a 10,000-entry log: load the log, replay it to the pending
`Yield`, validate the answer, take the lease, run the step to the next `Yield`, write it.

Method: warm-up (every workload twice), then `--repeat` rounds, each timing every workload once
(so drift hits all alike). Min and median per workload; ratios are min/min and the median of
the same-round ratios ("paired"), on which the goals are judged: write-ahead per step <= DBOS
per step, checkpoint at suspend >= 20x cheaper per step than DBOS.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio

from effects import Call, Effect, Yield, computation, handler
from effects.durable import DurableRunner, at_most_once
from effects.durable._log import make_entry
from effects.durable._store import LogRows, RunRow

STEPS = 100
LONG_LOG = 10_000


# -- our workflows ------------------------------------------------------------------------------


def trivial(i: int) -> int:
    return i


class Step(Effect[int]):
    """A recorded effect whose handler is in memory (not external): no checkpoint of its own."""

    i: int


@at_most_once
class OnceStep(Effect[int]):
    """An at-most-once effect: a write-ahead checkpoint before it runs."""

    i: int


@computation(name="bench.calls", version=1)
def calls(n: int) -> Generator[Any, Any, int]:
    total = 0
    for i in range(n):
        total += yield Call(trivial, i)
    return total


@computation(name="bench.once", version=1)
def once(n: int) -> Generator[Any, Any, int]:
    total = 0
    for i in range(n):
        total += yield OnceStep(i)
    return total


@computation(name="bench.memory", version=1)
def memory(n: int) -> Generator[Any, Any, int]:
    total = 0
    for i in range(n):
        total += yield Step(i)
    return total


@computation(name="bench.long", version=1)
def long_log(n: int) -> Generator[Any, Any, int]:
    total = 0
    for i in range(n):
        total += yield Step(i)
    while True:  # every answer adds one entry; each resume replays ~n entries
        total += yield Yield("more?", input=int)


HANDLERS = handler({Step: lambda e: e.i, OnceStep: lambda e: e.i}, name="bench")


# -- DBOS ---------------------------------------------------------------------------------------


def dbos_workflow(path: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    from dbos import DBOS

    DBOS(
        config={
            "name": "bench",
            "system_database_url": f"sqlite:///{path}",
            "log_level": "WARNING",
            "run_admin_server": False,  # type: ignore[typeddict-unknown-key]
        }
    )

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
    return dbos_steps, DBOS.destroy


# -- measurement --------------------------------------------------------------------------------


@dataclass
class Workload:
    key: str
    label: str
    unit: str  # what one sample is divided into
    samples: list[float] = field(default_factory=list)  # microseconds per unit

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


async def measure(
    urls: dict[str, str], dbos_run: Callable[[int], int], repeat: int
) -> dict[str, Workload]:
    workloads = {
        w.key: w
        for w in [
            Workload("calls", "ours, checkpoint per step (Call)", "step"),
            Workload("once", "ours, write-ahead per step", "step"),
            Workload("once_full", "ours, write-ahead, synchronous=FULL", "step"),
            Workload("memory", "ours, checkpoint at suspend", "step"),
            Workload("dbos", "DBOS, step per step", "step"),
            Workload("checkpoint", "ours, one checkpoint transaction", "checkpoint"),
            Workload("cold", f"ours, cold resume of a {LONG_LOG:,}-entry log", "resume"),
        ]
    }
    # Runners and stores stay open for the whole benchmark, as DBOS stays launched: what is
    # timed is the work of a run, not opening connections.
    async with (
        DurableRunner(urls["normal"], handlers=HANDLERS) as runner,
        DurableRunner(urls["full"], handlers=HANDLERS) as runner_full,
    ):
        store = runner.store
        long_run = (await runner.start(long_log(LONG_LOG))).id
        for r in range(-2, repeat):  # two warm-up rounds
            record = r >= 0

            def sample(key: str, elapsed: float, per: float, record: bool = record) -> None:
                if record:
                    workloads[key].samples.append(elapsed / per)

            # DBOS runs synchronously in this thread (nothing else is running meanwhile).
            gc.collect()
            t = time.perf_counter()
            assert dbos_run(STEPS) == sum(range(STEPS))
            sample("dbos", (time.perf_counter() - t) * 1e6, STEPS)

            for key, r_, comp in (
                ("calls", runner, calls(STEPS)),
                ("once", runner, once(STEPS)),
                ("once_full", runner_full, once(STEPS)),
                ("memory", runner, memory(STEPS)),
            ):
                gc.collect()
                t = time.perf_counter()
                run = await r_.start(comp)
                sample(key, (time.perf_counter() - t) * 1e6, STEPS)
                assert run.status == "done", run.outcome

            # One checkpoint transaction alone: append one entry to a run, 200 times.
            run_id = f"ckpt-{r}"
            now = time.time()
            await store.insert(
                RunRow(
                    id=run_id,
                    name="bench.x",
                    version=1,
                    args="{}",
                    status="running",
                    prompt=None,
                    input_schema=None,
                    answer=None,
                    result=None,
                    error=None,
                    revision=1,
                    lease_owner=runner.owner,
                    lease_expires=now + 60,
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            rows = LogRows(run_id)
            entries = []
            revision = 1
            gc.collect()
            t = time.perf_counter()
            for i in range(200):
                entries.append(make_entry(i, "bench.Step", "0" * 16, {"i": i}, "done", i))
                revision, _ = await store.checkpoint(
                    run_id, revision=revision, owner=runner.owner, changes={},
                    log=rows.diff(entries),
                )  # fmt: skip
            sample("checkpoint", (time.perf_counter() - t) * 1e6, 200)

            # Cold resume: nothing of the run is in memory between two resumes.
            gc.collect()
            t = time.perf_counter()
            run = await runner.resume(long_run, 1)
            sample("cold", (time.perf_counter() - t) * 1e3, 1)
            assert run.status == "suspended", run.outcome
    return workloads


def paired(a: Workload, b: Workload) -> float:
    return statistics.median(x / y for x, y in zip(a.samples, b.samples, strict=True))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisy numbers)")
    parser.add_argument("--repeat", type=int, help="timed rounds (default 9, --quick 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 9)

    tmp = tempfile.mkdtemp(prefix="effects-bench-")
    urls = {
        "normal": f"sqlite+aiosqlite:///{tmp}/ours.db",
        "full": f"sqlite+aiosqlite:///{tmp}/ours-full.db?synchronous=full",
    }
    dbos_run, dbos_stop = dbos_workflow(os.path.join(tmp, "dbos.sqlite"))
    try:
        workloads = anyio.run(measure, urls, dbos_run, repeat, backend="asyncio")
    finally:
        dbos_stop()
        shutil.rmtree(tmp, ignore_errors=True)

    info = machine()
    ratios = [
        ("DBOS / ours write-ahead (per step)", paired(workloads["dbos"], workloads["once"]), 1.0),
        ("DBOS / ours checkpoint per step", paired(workloads["dbos"], workloads["calls"]), None),
        ("DBOS / ours write-ahead FULL", paired(workloads["dbos"], workloads["once_full"]), None),
        ("DBOS / ours checkpoint at suspend", paired(workloads["dbos"], workloads["memory"]), 20.0),
    ]
    print(f"durable: {STEPS}-step workflows on SQLite, {repeat} rounds, gc on")
    print(f"{info['python']} | {info['platform']} | {info['cpus']} CPUs | {info['cpu']}")
    print()
    print(f"{'workload':<44} {'unit':<10} {'min':>10} {'median':>10}")
    for w in workloads.values():
        scale, unit = (1.0, "ms") if w.key == "cold" else (1.0, "us")
        print(
            f"{w.label:<44} {unit + '/' + w.unit:<10} "
            f"{w.min * scale:>10.1f} {w.median * scale:>10.1f}"
        )
    print()
    print(f"{'ratio (paired)':<44} {'measured':>10}   goal")
    results = []
    for name, value, goal in ratios:
        verdict = (
            "" if goal is None else (f">= {goal:g}  " + ("met" if value >= goal else "MISSED"))
        )
        print(f"{name:<44} {value:>10.1f}   {verdict}".rstrip())
        results.append({"name": name, "paired": value, "goal": goal})

    if args.json:
        data = {
            "benchmark": "durable",
            "steps": STEPS,
            "long_log": LONG_LOG,
            "repeats": repeat,
            "machine": info,
            "workloads": {
                w.key: {
                    "label": w.label,
                    "unit": ("ms" if w.key == "cold" else "us") + " per " + w.unit,
                    "samples": w.samples,
                    "min": w.min,
                    "median": w.median,
                }
                for w in workloads.values()
            },
            "ratios": results,
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
