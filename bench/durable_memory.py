"""In-memory cost of durable runs: logging overhead and cold resume (no SQL).

1. Logging overhead: the same 100-effect computation (50 user effects answered by a plain
   function handler, 50 State get/put) with and without an `EffectLogger` first in its handler
   list (as `DurableRunner` installs it; "own scope": in a `with_handler` scope of its own), and
   with the final log handed out (`on_log`, which builds the `LogEntry` models); a second mix
   with 20 user effects and 80 State ops. Goal: logged / plain <= 1.5.
   The breakdown: a logger's fixed cost per run (an empty computation, logged minus plain), the
   cost per recorded effect (the rest of the difference, / 50) and per entry built when the log
   is read (on_log minus logged, / 50).
2. Cold resume: a run that performed 10,000 recorded effects and waits at a `Yield` is started
   again from its log, as a store would hand it over: the log's JSON is parsed
   (`Log.model_validate_json`), replayed to the same `Yield`, and answered. Goal: <= 50 ms.
   Parsing and replaying are also timed on their own.

    python bench/durable_memory.py            # full run
    python bench/durable_memory.py --quick    # fewer rounds
    python bench/durable_memory.py --clock cpu   # CPU time of this thread (a shared machine)
    python bench/durable_memory.py --json out.json

Method: `time.perf_counter_ns` (or `time.thread_time_ns` with `--clock cpu`: time other
processes take from this one is not counted) around whole samples; warm-up first; per variant
the min and median over the rounds; ratios are judged on the median of same-round ratios
("paired"). `gc` collects before each sample, outside the timed region.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Generator
from typing import Any

from effects import Done, Effect, State, Suspend, Yield, handler, run, start, with_handler
from effects.durable import EffectLogger, Log


class Score(Effect[int]):
    """A user effect with an int result."""

    n: int


class Label(Effect[str]):
    """A user effect with a str result."""

    n: int


HANDLERS = handler({Score: lambda e: e.n * 2, Label: lambda e: f"item-{e.n}"})


def hundred() -> Generator[Any, Any, int]:
    """100 effects: per round 2 State ops and 2 user effects (50 recorded)."""
    for i in range(25):
        total = yield State.get()
        score = yield Score(i)
        yield State.put(total + score)
        label = yield Label(i)
        assert label == f"item-{i}"
    return (yield State.get())  # type: ignore[no-any-return]


def hundred_20() -> Generator[Any, Any, int]:
    """100 effects: per round 8 State ops and 2 user effects (20 recorded)."""
    for i in range(10):
        total = yield State.get()
        score = yield Score(i)
        yield State.put(total + score)
        for _ in range(3):
            yield State.put((yield State.get()))
        label = yield Label(i)
        assert label == f"item-{i}"
    return (yield State.get())  # type: ignore[no-any-return]


EXPECTED = sum(2 * i for i in range(25))
EXPECTED_20 = sum(2 * i for i in range(10))


def plain() -> None:
    assert run(hundred(), State(0), HANDLERS) == EXPECTED


def logged() -> None:
    # The logger first in the handler list (as `DurableRunner` installs it).
    assert run(hundred(), EffectLogger(), State(0), HANDLERS) == EXPECTED


def logged_scope() -> None:
    # The same in a handler scope of its own.
    assert run(with_handler(hundred(), EffectLogger()), State(0), HANDLERS) == EXPECTED


def logged_with_log() -> None:
    logs: list[Log] = []
    assert run(hundred(), EffectLogger(on_log=logs.append), State(0), HANDLERS) == EXPECTED
    assert len(logs[0].entries) == 50


def plain_20() -> None:
    assert run(hundred_20(), State(0), HANDLERS) == EXPECTED_20


def logged_20() -> None:
    logs: list[Log] = []
    assert run(hundred_20(), EffectLogger(on_log=logs.append), State(0), HANDLERS) == EXPECTED_20
    assert len(logs[0].entries) == 20


def long_run(n: int) -> Generator[Any, Any, Any]:
    """n recorded effects, then a Yield."""
    total = 0
    for i in range(n):
        total += yield Score(i)
    return (yield Yield(f"total {total}?"))


def make_log(n: int) -> Log:
    out = start(with_handler(long_run(n), EffectLogger()), HANDLERS)
    assert isinstance(out, Suspend)
    log: Log = out.data[EffectLogger]
    assert len(log.entries) == n + 1
    return log


def empty() -> Generator[Any, Any, int]:
    """No effect at all: what remains is the cost of the scopes."""
    return 0
    yield  # pragma: no cover


def plain_empty() -> None:
    run(empty(), State(0), HANDLERS)


def logged_empty() -> None:
    run(empty(), EffectLogger(), State(0), HANDLERS)


_clock = time.perf_counter_ns


def time_ns(fn: Callable[[], Any]) -> int:
    gc.collect()
    t0 = _clock()
    fn()
    return _clock() - t0


def main() -> None:
    global _clock
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: this thread's CPU time (for a shared machine)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ns = parser.parse_args()
    if ns.clock == "cpu":
        _clock = time.thread_time_ns
    rounds = 5 if ns.quick else 15
    inner = 200 if ns.quick else 1000  # runs of the 100-effect computation per sample
    n_long = 10_000

    log = make_log(n_long)
    text = log.model_dump_json()
    expected = sum(2 * i for i in range(n_long))

    def resume_from(stored: Log) -> None:
        out = start(with_handler(long_run(n_long), EffectLogger(stored)), HANDLERS)
        assert isinstance(out, Suspend)
        assert out.value == f"total {expected}?"
        done = out.resume("ok")
        assert isinstance(done, Done)

    def cold_resume() -> None:
        resume_from(Log.model_validate_json(text))

    def replay_only() -> None:
        resume_from(log)

    def parse() -> None:
        assert len(Log.model_validate_json(text).entries) == n_long + 1

    def many(fn: Callable[[], None]) -> Callable[[], None]:
        def go() -> None:
            for _ in range(inner):
                fn()

        return go

    variants: dict[str, Callable[[], None]] = {
        "plain": many(plain),
        "logged": many(logged),
        "logged, own scope": many(logged_scope),
        "logged + on_log": many(logged_with_log),
        "plain, 20 recorded": many(plain_20),
        "logged, 20 recorded": many(logged_20),
        "plain, empty": many(plain_empty),
        "logged, empty": many(logged_empty),
        "cold resume 10k": cold_resume,
        "replay 10k": replay_only,
        "parse 10k JSON": parse,
    }
    # Warm-up: the CPU clock ramps up under sustained load.
    t_end = time.perf_counter() + (0.5 if ns.quick else 2.0)
    while time.perf_counter() < t_end:
        for fn in variants.values():
            fn()
    samples: dict[str, list[int]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(time_ns(fn))

    def per_effect(name: str) -> list[float]:
        return [s / (inner * 100) for s in samples[name]]

    load = os.getloadavg()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {rounds} rounds, "
        f"clock {ns.clock}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print()

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    def paired_diff(a: str, b: str) -> float:
        """The median over the rounds of (a - b), ns per run of the computation."""
        return statistics.median(
            (x - y) / inner for x, y in zip(samples[a], samples[b], strict=True)
        )

    print(f"{'100-effect computation':<24} {'min ns/effect':>14} {'median':>10}")
    for name in (
        "plain",
        "logged",
        "logged, own scope",
        "logged + on_log",
        "plain, 20 recorded",
        "logged, 20 recorded",
    ):
        xs = per_effect(name)
        print(f"{name:<24} {min(xs):>14.0f} {statistics.median(xs):>10.0f}")
    ratio = paired("logged", "plain")
    ratio_scope = paired("logged, own scope", "plain")
    ratio_log = paired("logged + on_log", "plain")
    ratio_20 = paired("logged, 20 recorded", "plain, 20 recorded")
    fixed = paired_diff("logged, empty", "plain, empty")
    per_recorded = (paired_diff("logged", "plain") - fixed) / 50
    per_built = paired_diff("logged + on_log", "logged") / 50
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(f"{'logged / plain':<24} {ratio:>14.2f}   (50 of 100 recorded; goal <= 1.5: {verdict})")
    print(f"{'own scope / plain':<24} {ratio_scope:>14.2f}   (with_handler(comp, EffectLogger()))")
    print(f"{'logged+on_log / plain':<24} {ratio_log:>14.2f}   (the log read: entries built)")
    print(f"{'20 recorded: ratio':<24} {ratio_20:>14.2f}")
    print(f"{'logger, fixed per run':<24} {fixed:>14.0f} ns  (empty computation, logged - plain)")
    print(f"{'per recorded effect':<24} {per_recorded:>14.0f} ns")
    print(f"{'per entry built':<24} {per_built:>14.0f} ns  (when the log is read)")
    print()
    print(f"{'10,000-entry log':<24} {'min ms':>14} {'median':>10}")
    for label, name in (
        ("cold resume from JSON", "cold resume 10k"),
        ("  of which: parse", "parse 10k JSON"),
        ("  of which: replay", "replay 10k"),
    ):
        ms = [x / 1e6 for x in samples[name]]
        print(f"{label:<24} {min(ms):>14.1f} {statistics.median(ms):>10.1f}")
    cold = statistics.median(x / 1e6 for x in samples["cold resume 10k"])
    verdict = "met" if cold <= 50 else "NOT met"
    print(f"({len(text) / 1e6:.2f} MB of JSON; goal: cold resume <= 50 ms (median): {verdict})")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(
                {
                    "python": sys.version,
                    "clock": ns.clock,
                    "load_average": load,
                    "samples_ns": samples,
                    "inner_runs": inner,
                    "logged_over_plain": ratio,
                    "logged_own_scope_over_plain": ratio_scope,
                    "logged_on_log_over_plain": ratio_log,
                    "logged_20_over_plain_20": ratio_20,
                    "logger_fixed_ns_per_run": fixed,
                    "ns_per_recorded_effect": per_recorded,
                    "ns_per_entry_built": per_built,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
