"""In-memory cost of durable runs: logging overhead and cold resume (no SQL).

1. Logging overhead: the same 100-effect computation (50 user effects answered by a plain
   function handler, 50 State get/put) with and without an `EffectLogger` around it, and with the
   final log handed out (`on_log`); and a second mix with 20 user effects and 80 State ops.
   Goal: logged / plain <= 2.
2. Cold resume: a run that performed 10,000 recorded effects and waits at a `Yield` is started
   again from its log; the time until it suspends at the same `Yield` again. Goal: <= 100 ms.
   Parsing the log from JSON (`Log.model_validate_json`) is reported separately.

    python bench/durable_memory.py            # full run
    python bench/durable_memory.py --quick    # fewer rounds
    python bench/durable_memory.py --json out.json

Method: `time.perf_counter_ns` around whole runs; warm-up first; per variant the min and median
over the rounds; the overhead ratio is judged on the median of same-round ratios ("paired").
`gc` collects before each sample, outside the timed region.
"""

from __future__ import annotations

import argparse
import gc
import json
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
    assert run(with_handler(hundred(), EffectLogger()), State(0), HANDLERS) == EXPECTED


def logged_with_log() -> None:
    logs: list[Log] = []
    comp = with_handler(hundred(), EffectLogger(on_log=logs.append))
    assert run(comp, State(0), HANDLERS) == EXPECTED
    assert len(logs[0].entries) == 50


def plain_20() -> None:
    assert run(hundred_20(), State(0), HANDLERS) == EXPECTED_20


def logged_20() -> None:
    logs: list[Log] = []
    comp = with_handler(hundred_20(), EffectLogger(on_log=logs.append))
    assert run(comp, State(0), HANDLERS) == EXPECTED_20
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


def time_ns(fn: Callable[[], Any]) -> int:
    gc.collect()
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ns = parser.parse_args()
    rounds = 5 if ns.quick else 15
    inner = 200 if ns.quick else 1000  # runs of the 100-effect computation per sample
    n_long = 10_000

    log = make_log(n_long)
    text = log.model_dump_json()

    def cold_resume() -> None:
        out = start(with_handler(long_run(n_long), EffectLogger(log)), HANDLERS)
        assert isinstance(out, Suspend)
        expected = sum(2 * i for i in range(n_long))
        assert out.value == f"total {expected}?"
        done = out.resume("ok")
        assert isinstance(done, Done)

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
        "logged + on_log": many(logged_with_log),
        "plain, 20 recorded": many(plain_20),
        "logged, 20 recorded": many(logged_20),
        "cold resume 10k": cold_resume,
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

    print(f"Python {platform.python_version()} on {platform.machine()}, {rounds} rounds")
    print()

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    print(f"{'100-effect computation':<24} {'min ns/effect':>14} {'median':>10}")
    for name in ("plain", "logged", "logged + on_log", "plain, 20 recorded", "logged, 20 recorded"):
        xs = per_effect(name)
        print(f"{name:<24} {min(xs):>14.0f} {statistics.median(xs):>10.0f}")
    ratio = paired("logged", "plain")
    ratio_log = paired("logged + on_log", "plain")
    ratio_20 = paired("logged, 20 recorded", "plain, 20 recorded")
    per_recorded = (min(samples["logged + on_log"]) - min(samples["plain"])) / (inner * 50)
    print(f"{'logged / plain':<24} {ratio:>14.2f}   (50 of 100 recorded; goal <= 2; paired median)")
    print(f"{'logged+on_log / plain':<24} {ratio_log:>14.2f}")
    print(f"{'20 recorded: ratio':<24} {ratio_20:>14.2f}")
    print(f"{'cost per recorded effect':<24} {per_recorded:>14.0f} ns")
    print()
    cold = [s / 1e6 for s in samples["cold resume 10k"]]
    parse_ms = [s / 1e6 for s in samples["parse 10k JSON"]]
    print(f"{'10,000-entry log':<24} {'min ms':>14} {'median':>10}")
    print(f"{'cold resume (replay)':<24} {min(cold):>14.1f} {statistics.median(cold):>10.1f}")
    print(
        f"{'parse JSON':<24} {min(parse_ms):>14.1f} {statistics.median(parse_ms):>10.1f}"
        f"   ({len(text) / 1e6:.2f} MB)"
    )
    both = min(cold) + min(parse_ms)
    print(f"{'parse + cold resume':<24} {both:>14.1f}   (goal: cold resume <= 100 ms)")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(
                {
                    "python": sys.version,
                    "samples_ns": samples,
                    "inner_runs": inner,
                    "logged_over_plain": ratio,
                    "logged_on_log_over_plain": ratio_log,
                    "logged_20_over_plain_20": ratio_20,
                    "ns_per_recorded_effect": per_recorded,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
