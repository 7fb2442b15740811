"""Dispatch cost per effect: one State get/put loop under several interpreters.

Every variant runs the same computation, N iterations of ``x = yield get; yield put(x + 1)`` and a
final ``get`` (2N + 1 effects), and must end with the counter equal to N. Times are nanoseconds per
effect round trip, so variants that need a smaller N (python-effect) stay comparable.

    python bench/dispatch.py                   # full run
    python bench/dispatch.py --quick           # small N, a few seconds
    python bench/dispatch.py --json out.json   # also write the results
    python bench/dispatch.py --clock cpu       # CPU time of this thread (a shared machine)

Method: ``time.perf_counter_ns`` (``--clock cpu``: ``time.thread_time_ns``, this thread's CPU time,
for a machine shared with other work) around one whole run (generator creation and handler
installation included; they are O(1) or O(depth), negligible against N). Warm-up runs first (every
variant, then round-robin for ``--warmup`` seconds, to get the CPU clock up), then ``--repeat``
rounds, each timing every variant once, so drift of the machine hits all of them alike. Per
variant: min and median over the rounds. Ratios: min/min, and the median of the same-round ratios
("paired"), on which the goals are judged. ``gc`` stays on (allocation-heavy interpreters pay for
their garbage); a collection runs before each sample, outside the timed region.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import attr
from effect import (
    ComposedDispatcher,
    TypeDispatcher,
    base_dispatcher,
    sync_perform,
    sync_performer,
)
from effect import Effect as PyEffect
from effect.do import do

# The runtime under test is written in parallel with this script: until it imports, the peers
# (bare, minimal, python-effect) still run and the "ours" rows say why they are missing.
try:
    from effects import Effect, State, arun, handler, run
except ImportError as exc:
    EFFECTS_IMPORT_ERROR: ImportError | None = exc
else:
    EFFECTS_IMPORT_ERROR = None

DEPTH = 100

# --- 1. bare generator send: the physical limit ---------------------------------------------


def bare_loop(n: int) -> Generator[Any, Any, Any]:
    for _ in range(n):
        x = yield None  # "get": yields a constant
        yield x + 1  # "put": hands the new value to the driver
    return (yield None)


def run_bare(n: int) -> int:
    gen = bare_loop(n)
    send = gen.send
    state = 0
    try:
        send(None)  # run to the first get
        while True:
            state = send(state)  # answer get, receive put's value
            send(None)  # answer put, run to the next get
    except StopIteration as stop:
        result: int = stop.value
        return result


# --- 2. minimal hand-written interpreter ----------------------------------------------------


class Get:
    __slots__ = ()


class Put:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def minimal_loop(n: int) -> Generator[Any, Any, Any]:
    for _ in range(n):
        x = yield Get()
        yield Put(x + 1)
    return (yield Get())


def minimal_state(initial: Any) -> dict[type, Callable[[Any], Any]]:
    cell = [initial]

    def get(_effect: Get) -> Any:
        return cell[0]

    def put(effect: Put) -> None:
        cell[0] = effect.value

    return {Get: get, Put: put}


def minimal_interpret(
    gen: Generator[Any, Any, Any], handlers: dict[type, Callable[[Any], Any]]
) -> Any:
    send = gen.send
    value = None
    try:
        while True:
            effect = send(value)
            value = handlers[type(effect)](effect)
    except StopIteration as stop:
        return stop.value


def run_minimal(n: int) -> int:
    result: int = minimal_interpret(minimal_loop(n), minimal_state(0))
    return result


# --- 3./4. our runtime ----------------------------------------------------------------------


def loop(n: int) -> Generator[Any, Any, Any]:
    for _ in range(n):
        x = yield State.get()
        yield State.put(x + 1)
    return (yield State.get())


def run_ours(n: int) -> int:
    result: int = run(loop(n), State(0))
    return result


_loop_runner: asyncio.Runner | None = None


def run_ours_async(n: int) -> int:
    """The same loop under the async driver (`arun` on asyncio): what every AsyncComputation
    and durable step pays per effect, including the driver's fairness checks."""
    global _loop_runner
    if _loop_runner is None:
        # One event loop for every sample: starting a loop is not what is measured.
        _loop_runner = asyncio.Runner()
    result: int = _loop_runner.run(arun(loop(n), State(0)))
    return result


def unrelated_handlers(depth: int) -> list[Any]:
    """`depth` handlers, each for an effect type of its own that the loop never performs."""
    handlers = []
    for i in range(depth):
        # A class statement rather than type(): type() cannot take the Effect[int] alias as a
        # base (no __mro_entries__ resolution).
        class Unrelated(Effect[int]):
            pass

        Unrelated.__name__ = Unrelated.__qualname__ = f"E{i}"
        handlers.append(handler({Unrelated: lambda _effect: 0}))
    return handlers


def make_run_ours_deep(depth: int) -> Callable[[int], int]:
    between = unrelated_handlers(depth)

    def run_ours_deep(n: int) -> int:
        # First listed is innermost: the loop sees the unrelated handlers first, State last.
        result: int = run(loop(n), *between, State(0))
        return result

    return run_ours_deep


# --- 5. python-effect -----------------------------------------------------------------------


@attr.s
class PeGet:
    """Intent: read the counter."""


@attr.s
class PePut:
    """Intent: replace the counter."""

    value = attr.ib()


def pe_dispatcher(box: list[Any]) -> ComposedDispatcher:
    @sync_performer
    def perform_get(_dispatcher: Any, _intent: PeGet) -> Any:
        return box[0]

    @sync_performer
    def perform_put(_dispatcher: Any, intent: PePut) -> None:
        box[0] = intent.value

    # State first: base_dispatcher is only needed once per run, for the Func intent that @do
    # wraps the generator in; listing it first would add a miss to every get and put.
    return ComposedDispatcher(
        [TypeDispatcher({PeGet: perform_get, PePut: perform_put}), base_dispatcher]
    )


@do
def pe_loop(n: int) -> Generator[Any, Any, Any]:
    for _ in range(n):
        x = yield PyEffect(PeGet())
        yield PyEffect(PePut(x + 1))
    return (yield PyEffect(PeGet()))


def run_python_effect(n: int) -> int:
    result: int = sync_perform(pe_dispatcher([0]), pe_loop(n))
    return result


# --- harness --------------------------------------------------------------------------------


@dataclass
class Variant:
    key: str
    label: str
    n: int
    fn: Callable[[int], int] | None
    error: str | None = None
    skipped: bool = False  # unavailable (not importable), as opposed to failed
    samples: list[float] = field(default_factory=list)  # ns per effect

    @property
    def effects_per_run(self) -> int:
        return 2 * self.n + 1

    def sample(self) -> float:
        assert self.fn is not None
        gc.collect()
        start = clock_ns()
        result = self.fn(self.n)
        elapsed = clock_ns() - start
        if result != self.n:  # not `assert`: must hold under python -O too
            raise AssertionError(f"{self.label}: final counter {result!r}, expected {self.n}")
        return elapsed / self.effects_per_run

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


# (numerator, denominator, goal) — goal is (comparison, bound) or None for information only.
RATIOS: list[tuple[str, str, tuple[str, float] | None]] = [
    ("ours", "minimal", ("<=", 1.25)),
    ("ours_depth100", "ours", ("<=", 1.3)),
    ("ours_async", "ours", None),
    ("python_effect", "ours", (">=", 20.0)),
    ("ours", "bare", None),
    ("minimal", "bare", None),
    ("python_effect", "minimal", None),
]

NAMES = {
    "bare": "bare",
    "minimal": "minimal",
    "ours": "ours",
    "ours_depth100": f"ours depth {DEPTH}",
    "ours_async": "ours async",
    "python_effect": "python-effect",
}


def build_variants(n: int, n_peer: int) -> list[Variant]:
    variants = [
        Variant("bare", "bare generator send", n, run_bare),
        Variant("minimal", "minimal dict-dispatch interpreter", n, run_minimal),
    ]
    if EFFECTS_IMPORT_ERROR is None:
        deep: Callable[[int], int] | None
        error = None
        try:
            deep = make_run_ours_deep(DEPTH)
        except Exception as exc:
            deep, error = None, f"setup failed: {exc!r}"
        variants += [
            Variant("ours", "effects, depth 1", n, run_ours),
            Variant("ours_depth100", f"effects, depth {DEPTH}", n, deep, error),
            Variant("ours_async", "effects, depth 1, arun (asyncio)", n, run_ours_async),
        ]
    else:
        reason = f"effects not importable yet ({EFFECTS_IMPORT_ERROR})"
        variants += [
            Variant("ours", "effects, depth 1", n, None, reason, skipped=True),
            Variant("ours_depth100", f"effects, depth {DEPTH}", n, None, reason, skipped=True),
            Variant("ours_async", "effects, depth 1, arun", n, None, reason, skipped=True),
        ]
    variants.append(
        Variant("python_effect", "python-effect 1.1 (@do, sync_perform)", n_peer, run_python_effect)
    )
    return variants


def measure(variants: list[Variant], repeats: int, warmup: float) -> None:
    def take(v: Variant) -> float | None:
        try:
            return v.sample()
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {exc}"
            return None

    # Warm-up: every variant once (the first correctness check), then round-robin until
    # `warmup` seconds have passed. The 2-core VM this was written on runs ~1.7x slower for the
    # first ~1.5 s of sustained load after idling (clock ramp, no steal time), which made
    # back-to-back runs disagree by that much.
    start = time.perf_counter()
    while True:
        for v in variants:
            if v.fn is not None and v.error is None:
                take(v)
        if time.perf_counter() - start >= warmup:
            break
    # Repeats interleaved: round i of every variant runs within the same short window, so the
    # paired ratios below cancel slow drift of the machine.
    for _ in range(repeats):
        for v in variants:
            if v.fn is not None and v.error is None:
                ns = take(v)
                if ns is not None:
                    v.samples.append(ns)


def stack_overhead_us(variants: list[Variant], repeats: int) -> float | None:
    """Per-run cost of installing the depth-100 stack: both ours variants on an empty loop.

    It is included in every depth-100 sample; shown so that a depth ratio missed at --quick's
    small N can be told apart from slower dispatch.
    """
    by_key = {v.key: v for v in variants}
    shallow, deep = by_key["ours"], by_key["ours_depth100"]
    if not (shallow.ok and deep.ok and shallow.fn and deep.fn):
        return None

    def best(fn: Callable[[int], int]) -> int:
        times = []
        for _ in range(max(repeats, 7)):
            start = clock_ns()
            fn(0)
            times.append(clock_ns() - start)
        return min(times)

    return (best(deep.fn) - best(shallow.fn)) / 1000


clock_ns: Callable[[], int] = time.perf_counter_ns


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "clock": "cpu (thread_time)" if clock_ns is time.thread_time_ns else "wall (perf_counter)",
    }


def ratios(variants: list[Variant]) -> list[dict[str, Any]]:
    by_key = {v.key: v for v in variants}
    rows = []
    for num, den, goal in RATIOS:
        a, b = by_key[num], by_key[den]
        row: dict[str, Any] = {
            "name": f"{NAMES[num]} / {NAMES[den]}",
            "goal": f"{goal[0]} {goal[1]}" if goal else None,
            "min": None,
            "paired": None,
            "met": None,
        }
        if a.ok and b.ok and len(a.samples) == len(b.samples):
            row["min"] = a.min / b.min
            # Median over rounds of the same-round ratio: robust to drift between rounds.
            row["paired"] = statistics.median(
                x / y for x, y in zip(a.samples, b.samples, strict=True)
            )
            if goal:
                op, bound = goal
                row["met"] = row["paired"] <= bound if op == "<=" else row["paired"] >= bound
        rows.append(row)
    return rows


def report(
    variants: list[Variant],
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    repeats: int,
    overhead_us: float | None,
) -> None:
    print(
        f"dispatch: State get/put loop, ns per effect (2N+1 effects/run), {repeats} repeats, gc on"
    )
    print(f"{info['python']} | {info['platform']} | {info['cpus']} CPUs | {info['cpu']}")
    load = " ".join(f"{x:.1f}" for x in info["load_average"])
    print(f"clock: {info['clock']} | load average {load}")
    print()
    print(f"{'variant':<40} {'N':>8} {'min':>9} {'median':>9}")
    for v in variants:
        if v.ok:
            print(f"{v.label:<40} {v.n:>8} {v.min:>9.1f} {v.median:>9.1f}")
        else:
            print(f"{v.label:<40} {v.n:>8}   -- {v.error}")
    if overhead_us is not None:
        print(f"(installing the depth-{DEPTH} stack: {overhead_us:.0f} us per run, included above)")
    print()
    print(f"{'ratio':<40} {'min/min':>9} {'paired':>9}   goal (on paired)")
    for r in rows:
        if r["min"] is None:
            print(f"{r['name']:<40} {'--':>9} {'--':>9}   {r['goal'] or ''}".rstrip())
            continue
        verdict = "" if r["met"] is None else ("  met" if r["met"] else "  MISSED")
        goal = f"{r['goal']}{verdict}" if r["goal"] else ""
        print(f"{r['name']:<40} {r['min']:>9.2f} {r['paired']:>9.2f}   {goal}".rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N (smoke test, noisy numbers)")
    parser.add_argument("-n", type=int, help="iterations for all but python-effect")
    parser.add_argument("--n-peer", type=int, help="iterations for python-effect (slow)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per variant (default 7)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up runs (default 2, --quick 0.5)"
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: this thread's CPU time (time other processes take "
        "from this one is not counted: for a shared machine)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    global clock_ns
    clock_ns = time.thread_time_ns if args.clock == "cpu" else time.perf_counter_ns

    n = args.n or (5_000 if args.quick else 200_000)
    # python-effect costs ~40x more per effect; a smaller N keeps the run short and the
    # per-effect numbers comparable. Its @do is trampolined, so N is not bounded by recursion.
    n_peer = args.n_peer or (1_000 if args.quick else 20_000)

    variants = build_variants(n, n_peer)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    measure(variants, args.repeat, warmup)
    rows = ratios(variants)
    overhead_us = stack_overhead_us(variants, args.repeat)
    info = machine()
    report(variants, rows, info, args.repeat, overhead_us)

    if args.json:
        data = {
            "benchmark": "dispatch",
            "unit": "ns per effect",
            "repeats": args.repeat,
            "warmup_s": warmup,
            "quick": args.quick,
            "machine": info,
            "variants": {
                v.key: {
                    "label": v.label,
                    "n": v.n,
                    "effects_per_run": v.effects_per_run,
                    "samples": v.samples,
                    "min": v.min if v.ok else None,
                    "median": v.median if v.ok else None,
                    "error": v.error,
                }
                for v in variants
            },
            "ratios": rows,
            "ours_depth100_install_us": overhead_us,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    # A variant that raised (not one that is merely unavailable) fails the run.
    failed = [v for v in variants if v.error and not v.skipped]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
