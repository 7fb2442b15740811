"""Computations of the crash, PostgreSQL and CLI tests, shared by the test process and the
worker processes (both import this module by the same name, so the logged effects match).

Side effects go to a separate SQLite "counter" file: `attempts` gets a row for every time an
effect's function ran, `applied` one row per idempotency key (the effect made idempotent the
documented way). `KILL_AT` (set only in worker processes) makes the process SIGKILL itself at a
named point: `before:N` (effect N about to run), `after:N` (effect N done, not checkpointed),
`charge` (inside the at-most-once effect, after its write-ahead checkpoint), `claimed` (a worker
claimed a queued run, before its first step), `enqueued` (an enqueue committed),
`group-written:N` / `group-committed:N` (the N-th group commit of several runs' checkpoints:
its statements written but not committed / committed, no run woken yet; see worker.py).

Queued runs (`queued_flow`) also write `queued`: one row per time one of their effects ran, with
the run's name, the process and the time, from which the tests rebuild which runs executed when.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Generator
from contextlib import closing
from typing import Any

import anyio

from effects import (
    Call,
    Clock,
    Effect,
    Fresh,
    Parallel,
    Receive,
    State,
    Yield,
    computation,
    handler,
    transaction,
    try_catch,
    with_handler,
)
from effects.durable import DurableRunner, Queue, RunStatus, at_most_once, idempotency_key

KILL_AT: str | None = None


def _hook(point: str) -> None:
    if KILL_AT == point:
        os.kill(os.getpid(), signal.SIGKILL)


def init_counter(path: str) -> None:
    """Create the counter tables."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT NOT NULL, i INTEGER NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY, i INTEGER, token TEXT)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS queued"
            " (key TEXT NOT NULL, run TEXT NOT NULL, i INTEGER, pid INTEGER, t INTEGER)"
        )


def read_counter(path: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(attempts, applied) rows as (key, i), in insertion order."""
    with closing(sqlite3.connect(path)) as db:
        attempts = db.execute("SELECT key, i FROM attempts ORDER BY rowid").fetchall()
        applied = db.execute("SELECT key, i FROM applied ORDER BY rowid").fetchall()
    return attempts, applied


def side_effect(counter: str, i: int, token: str) -> int:
    """An external effect, idempotent through the idempotency key."""
    key = idempotency_key()
    _hook(f"before:{i}")
    with closing(sqlite3.connect(counter)) as db, db:
        db.execute("INSERT INTO attempts (key, i) VALUES (?, ?)", (key, i))
        db.execute(
            "INSERT OR IGNORE INTO applied (key, i, token) VALUES (?, ?, ?)", (key, i, token)
        )
    _hook(f"after:{i}")
    return i


@computation(name="crash.flow", version=1)
def flow(steps: int, counter: str) -> Generator[Any, Any, int]:
    """`steps` external effects, each after an in-memory one (a fresh uuid), with a Yield for
    a bonus after the first half."""
    total = 0
    for i in range(steps):
        token = yield Fresh.uuid()
        total += yield Call(side_effect, counter, i, str(token))
        if i == steps // 2 - 1:
            bonus: int = yield Yield({"ask": "bonus", "after": i}, input=int)
            total += bonus
    return total


@at_most_once
class Charge(Effect[int]):
    """Charge a card: must never happen twice, so it is at-most-once."""

    counter: str
    amount: int


def _charge(effect: Charge) -> int:
    with closing(sqlite3.connect(effect.counter)) as db, db:
        db.execute("INSERT INTO attempts (key, i) VALUES (?, ?)", ("charge", effect.amount))
    _hook("charge")
    return effect.amount


charges = handler({Charge: _charge}, name="charges", external=True)


@computation(name="crash.charge", version=1)
def charge_flow(counter: str) -> Generator[Any, Any, int]:
    """An at-least-once effect, then an at-most-once charge."""
    yield Call(side_effect, counter, 0, "t")
    paid: int = yield Charge(counter, 10)
    return paid


@computation(name="crash.cleanup", version=1)
def cleanup_flow(counter: str) -> Generator[Any, Any, int]:
    """Waits for an answer; its cleanup is two external effects (numbers 99, then 98)."""
    try:
        yield Call(side_effect, counter, 0, "t")
        answer: int = yield Yield("wait", input=int)
        return answer
    finally:
        yield Call(side_effect, counter, 99, "cleanup")
        yield Call(side_effect, counter, 98, "cleanup")


BLOCKED: anyio.Event | None = None
"""Set (by a worker) to learn when `block` is waiting; `block` then waits to be cancelled."""


async def block(counter: str) -> int:
    """An external effect that, in a worker that set `BLOCKED`, waits until it is cancelled
    (elsewhere it returns at once)."""
    with closing(sqlite3.connect(counter)) as db, db:
        db.execute("INSERT INTO attempts (key, i) VALUES (?, ?)", ("block", 50))
    if BLOCKED is not None:
        BLOCKED.set()
        await anyio.sleep_forever()
    return 50


@computation(name="crash.blocking", version=1)
def blocking_flow(counter: str) -> Generator[Any, Any, int]:
    """Like `cleanup_flow`, with a slow effect (`block`) where a cancel interrupts a running
    step."""
    try:
        yield Call(side_effect, counter, 0, "t")
        yield Call(block, counter)
        answer: int = yield Yield("wait", input=int)
        return answer
    finally:
        yield Call(side_effect, counter, 99, "cleanup")
        yield Call(side_effect, counter, 98, "cleanup")


@computation(name="crash.name", version=1)
def name_flow() -> Generator[Any, Any, str]:
    """Asks for a text answer (any string the JSON of a command line can hold)."""
    name: str = yield Yield("name?", input=str)
    return name


@computation(name="crash.timer", version=1)
def timer_flow(counter: str) -> Generator[Any, Any, int]:
    """Three external effects (0, 1, 2) with a durable sleep (held in memory) between each."""
    total = yield Call(side_effect, counter, 0, "t")
    yield Clock.sleep(TIMER_SLEEP)
    total += yield Call(side_effect, counter, 1, "t")
    yield Clock.sleep(TIMER_SLEEP)
    total += yield Call(side_effect, counter, 2, "t")
    return total


TIMER_SLEEP = 0.3
"""Seconds each sleep of `timer_flow` lasts."""


def read_queued(path: str) -> list[tuple[str, str, int, int, int]]:
    """The `queued` rows as (key, run, i, pid, time_ns), in insertion order."""
    with closing(sqlite3.connect(path)) as db:
        rows: list[tuple[str, str, int, int, int]] = db.execute(
            "SELECT key, run, i, pid, t FROM queued ORDER BY rowid"
        ).fetchall()
    return rows


GROUP_BARRIER: threading.Barrier | None = None
"""Set in a worker running several `group_flow`s: their effects end together, step by step,
so their checkpoints arrive together and are committed in groups."""


def group_effect(counter: str, i: int) -> int:
    """`side_effect`, then wait for the other runs' effect of this step (in the worker)."""
    side_effect(counter, i, "group")
    if GROUP_BARRIER is not None:
        GROUP_BARRIER.wait(timeout=20)
    return i


@computation(name="crash.group_flow", version=1)
def group_flow(steps: int, counter: str) -> Generator[Any, Any, int]:
    """`steps` external effects in a row, nothing else: run many at once, their checkpoints
    are committed in groups."""
    total = 0
    for i in range(steps):
        total += yield Call(group_effect, counter, i)
    return total


def hook(point: str) -> None:
    """SIGKILL this process if it was told to die at `point` (for points outside effects)."""
    _hook(point)


def queued_effect(counter: str, run: str, i: int) -> int:
    """An external effect of a queued run, idempotent through the idempotency key (`applied`
    holds it once), recorded in `queued` each time it runs (which process, when)."""
    key = idempotency_key()
    _hook(f"before:{i}")
    with closing(sqlite3.connect(counter, timeout=20)) as db, db:
        db.execute(
            "INSERT INTO queued (key, run, i, pid, t) VALUES (?, ?, ?, ?, ?)",
            (key, run, i, os.getpid(), time.time_ns()),
        )
        db.execute("INSERT OR IGNORE INTO applied (key, i, token) VALUES (?, ?, ?)", (key, i, run))
    _hook(f"after:{i}")
    return i


async def pause() -> None:
    """Work between the two effects of a queued run: it keeps the run executing long enough
    for runs over the queue's limit to overlap it, were they started."""
    await anyio.sleep(QUEUED_PAUSE)


@computation(name="crash.queued", version=1)
def queued_flow(counter: str, run: str) -> Generator[Any, Any, int]:
    """A queued run: external effect 0, some work, external effect 1."""
    total: int = yield Call(queued_effect, counter, run, 0)
    yield Call(pause)
    total += yield Call(queued_effect, counter, run, 1)
    return total


QUEUED_PAUSE = 0.1
"""Seconds of `pause`."""


# -- what the tests check of queued runs (in the test process) ----------------------------


def executions(
    rows: list[tuple[str, str, int, int, int]],
) -> list[tuple[int, int]]:
    """The (start, end) in ns of each run's execution in each process, from the times its
    effects ran there. An execution cut off by a kill (no effect 1 there) lasted at least
    until that process's last recorded effect: it died just after."""
    last_of_pid: dict[int, int] = {}
    spans: dict[tuple[str, int], list[int]] = {}
    finished: set[tuple[str, int]] = set()
    for _, run, i, pid, t in rows:
        last_of_pid[pid] = max(last_of_pid.get(pid, t), t)
        spans.setdefault((run, pid), []).append(t)
        if i == 1:
            finished.add((run, pid))
    out = []
    for (run, pid), times in spans.items():
        end = max(times) if (run, pid) in finished else last_of_pid[pid]
        out.append((min(times), end))
    return out


def peak_overlap(spans: list[tuple[int, int]]) -> int:
    """The most spans covering one instant (ends sort before starts at equal times)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


async def finish_queue(runner: DurableRunner, ids: list[str], queue: Queue) -> None:
    """Serve `queue` with `runner` until every run of `ids` is done."""
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(runner.work, [queue], poll=0.2))
        deadline = time.monotonic() + 40
        while True:
            runs = [await runner.get(i) for i in ids]
            if all(run.status is RunStatus.DONE for run in runs):
                break
            assert time.monotonic() < deadline, runs
            await anyio.sleep(0.05)
        tg.cancel_scope.cancel()


def check_queued_effects(counter: str, runs: list[str]) -> list[tuple[str, str, int, int, int]]:
    """Each run's two effects applied exactly once; none attempted more than twice (once
    before a kill, once after). Returns the `queued` rows."""
    _, applied = read_counter(counter)
    rows = read_queued(counter)
    applied_keys = [key for key, _ in applied]
    assert len(applied_keys) == len(set(applied_keys)) == 2 * len(runs)
    by_run = Counter((run, i) for key, run, i, _, _ in rows if key in set(applied_keys))
    assert set(by_run) == {(run, i) for run in runs for i in (0, 1)}
    assert max(Counter(key for key, *_ in rows).values()) <= 2
    return rows


async def side_effect_async(counter: str, i: int, token: str) -> int:
    """`side_effect` after giving the other tasks a turn (so branches interleave)."""
    await anyio.lowlevel.checkpoint()
    return side_effect(counter, i, token)


PARALLEL_BRANCHES = 3
PARALLEL_EXPECTED = sum(range(2 * PARALLEL_BRANCHES)) + 2 * PARALLEL_BRANCHES


@computation(name="crash.parallel", version=1)
def parallel_flow(counter: str) -> Generator[Any, Any, int]:
    """Three Parallel branches, each two external effects (numbers 2b and 2b + 1, each after
    a fresh uuid), then one more external effect (number 6) after the branches."""

    def branch(b: int) -> Generator[Any, Any, int]:
        total = 0
        for k in range(2):
            token = yield Fresh.uuid()
            total += yield Call(side_effect_async, counter, 2 * b + k, str(token))
        return total

    results = yield from Parallel.all(*(branch(b) for b in range(PARALLEL_BRANCHES)))
    last: int = yield Call(side_effect, counter, 2 * PARALLEL_BRANCHES, "after")
    return sum(results) + last


@computation(name="crash.messages", version=1)
def messages_flow(counter: str) -> Generator[Any, Any, list[str]]:
    """Two messages on topic "t", each followed by an external effect (numbers 0 and 1)."""
    got: list[str] = []
    for i in range(2):
        message: str = yield Receive("t", input=str)
        yield Call(side_effect, counter, i, message)
        got.append(message)
    return got


@computation(name="crash.transaction", version=1)
def transaction_flow(counter: str) -> Generator[Any, Any, list[str]]:
    """A transaction that changes State, performs external effect 0 and fails (its State change
    rolled back), then external effect 1; returns the State's items."""

    def attempt() -> Generator[Any, Any, None]:
        yield State.modify(lambda items: [*items, "in the transaction"])
        yield Call(side_effect, counter, 0, "t")
        raise ValueError("the transaction fails")

    def body() -> Generator[Any, Any, list[str]]:
        yield State.modify(lambda items: [*items, "before"])
        yield from try_catch(transaction(attempt()))
        yield Call(side_effect, counter, 1, "t")
        items: list[str] = yield State.get()
        return items

    return (yield from with_handler(body(), State([])))


HANDLERS = (Fresh(), charges, Clock())
