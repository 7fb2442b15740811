"""Chaos: several durable runs driven by worker processes that SIGKILL themselves at kill points
drawn at random (seeded), then recovered. Whatever the kills, every effect is applied exactly
once, performed again only where a kill cut it off after it ran, and every run ends in a final
state or waits, consistently, at its prompt.

Bounded: a fixed number of worker processes per run (each a fork of a preloaded fork server),
a few seconds in all. `EFFECTS_CHAOS_SEED` replays one seed."""

from __future__ import annotations

import importlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from effects import Cancelled, Done, InterruptedEffect, Throw
from effects.durable import DurableRunner, Queue, Run, RunStatus

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"
SEEDS = [int(os.environ["EFFECTS_CHAOS_SEED"])] if "EFFECTS_CHAOS_SEED" in os.environ else [1, 2]
FORKS_PER_RUN = 4
BUDGET = 20.0  # seconds for the worker processes of one seed (a safety net, not a target)
STEPS = 10
BONUS = 100


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite) run on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


def _points(*effects: int) -> list[str]:
    return [f"{when}:{i}" for i in effects for when in ("before", "after")]


# Per flow: the effects its side_effect calls number, the action that starts it, and where it
# may be killed (besides not at all).
FLOWS: dict[str, tuple[str, list[str]]] = {
    "flow": ("start", _points(*range(STEPS))),
    "cleanup": ("cancel", _points(0, 99, 98)),
    "blocking": ("cancel-running", _points(0, 99, 98)),
    "charge": ("start", [*_points(0), "charge"]),
}


class Chaos:
    """Drives one run through worker processes with random kill points, and remembers which
    effect each kill cut off after it ran (the only effects that may run twice)."""

    def __init__(
        self,
        rng: random.Random,
        forked: Callable[..., bool],
        db: str,
        counter: str,
        deadline: float,
    ) -> None:
        self.rng = rng
        self.forked = forked
        self.db = db
        self.counter = counter
        self.deadline = deadline
        self.cut_after: Counter[tuple[str, int]] = Counter()
        self.forks = 0

    def worker(self, run_id: str, flow: str, action: str, *extra: str) -> None:
        points = FLOWS[flow][1]
        point = self.rng.choice([*points, "none"])
        killed = self.forked(
            "--db", self.db, "--counter", self.counter, "--run-id", run_id, "--owner", "w1",
            "--flow", flow, "--action", action, "--kill-at", point, *extra,
            may_finish=True,
        )  # fmt: skip
        self.forks += 1
        when, _, n = point.partition(":")
        if killed and when == "after":
            self.cut_after[(run_id, int(n))] += 1

    async def drive(self, run_id: str, flow: str) -> None:
        action = FLOWS[flow][0]
        extra = ("--answer", str(BONUS)) if flow == "flow" else ()
        self.worker(run_id, flow, action, *extra)
        for _ in range(FORKS_PER_RUN - 1):
            if time.monotonic() > self.deadline:
                return
            async with DurableRunner(self.db, owner="observer") as runner:
                status = (await runner.get(run_id)).status
            if status is RunStatus.RUNNING:
                self.worker(run_id, flow, "recover")
            elif status is RunStatus.SUSPENDED and flow == "flow":
                self.worker(run_id, flow, "resume", "--answer", str(BONUS))
            else:
                return


def _expected_effects(run: Run, flow: str) -> list[int]:
    """The side effects a run in this state has performed (by number), in order."""
    if flow == "flow":
        return list(range(STEPS)) if run.status is RunStatus.DONE else list(range(STEPS // 2))
    if flow in ("cleanup", "blocking"):
        # Killed at effect 0, before the worker got to cancel: no cancel was ever asked for.
        return [0] if run.status is RunStatus.SUSPENDED else [0, 99, 98]
    return [0]


def _check_final(run: Run, flow: str) -> None:
    if flow == "flow":
        assert run.status in (RunStatus.DONE, RunStatus.SUSPENDED), run
        if run.status is RunStatus.DONE:
            assert run.outcome == Done(sum(range(STEPS)) + BONUS)
    elif flow in ("cleanup", "blocking"):
        assert run.status in (RunStatus.CANCELLED, RunStatus.SUSPENDED), run
        if run.status is RunStatus.CANCELLED:
            assert run.outcome == Cancelled("stop")
    else:
        assert run.status in (RunStatus.DONE, RunStatus.FAILED), run
        if run.status is RunStatus.FAILED:
            assert isinstance(run.outcome, Throw)
            assert isinstance(run.outcome.error, InterruptedEffect)


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_kill_points_every_effect_once(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., bool], seed: int
) -> None:
    """Four runs (a 10-effect flow with a prompt, a cancel at the prompt, a cancel of a
    running step, an at-most-once charge), each through up to four workers killed at random
    points, then `recover()`: exactly-once effects, consistent end states."""
    rng = random.Random(seed)
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    chaos = Chaos(rng, forked, db, counter, time.monotonic() + BUDGET)
    runs = {f"{flow}-{seed}": flow for flow in FLOWS}
    for run_id, flow in runs.items():
        await chaos.drive(run_id, flow)
    assert chaos.forks <= FORKS_PER_RUN * len(runs)

    async with DurableRunner(db, handlers=flows.HANDLERS, owner="w1") as runner:
        await runner.recover()
        assert await runner.recover() == []
        assert await runner.list(RunStatus.RUNNING) == []
        final = {run_id: await runner.get(run_id) for run_id in runs}
        logs = {run_id: await runner.get_log(run_id) for run_id in runs}

    attempts, applied = flows.read_counter(counter)
    keys_of = {key: key.rpartition(":")[0] for key, _ in applied}
    for run_id, flow in runs.items():
        run, log = final[run_id], logs[run_id]
        where = f"seed {seed}, run {run_id}: {run.status.value}"
        _check_final(run, flow)
        # Applied exactly once each, in order, at one position each (idempotency key).
        mine = [(key, i) for key, i in applied if keys_of[key] == run_id]
        assert [i for _, i in mine] == _expected_effects(run, flow), where
        # Performed again only where a kill cut the effect off after it ran.
        tried = Counter(key for key, _ in attempts)
        for key, i in mine:
            assert tried[key] == 1 + chaos.cut_after[(run_id, i)], (where, i)
        if run.status is RunStatus.SUSPENDED:
            # Waiting consistently: the log ends at the pending Yield that the row shows.
            *done, pending = log.entries
            assert pending.status == "pending", where
            assert pending.args["value"] == run.prompt, where
            assert all(e.status == "done" for e in done), where
        else:
            assert all(e.status != "pending" for e in log.entries), where
    charged = [k for k, _ in attempts if k == "charge"]
    assert len(charged) <= len(SEEDS)  # at most once per charge run, whatever the kills
    assert [k for k, _ in attempts].count("block") == 1


# -- queued runs on PostgreSQL -------------------------------------------------------------

QUEUE = "chaos"
QUEUE_LIMIT = 2
QUEUED_RUNS = 12  # enough that every doomed worker finds a fresh run to claim
QUEUE_FORKS = 3
LEASE = 1.0
QUEUE_KILL_POINTS = ["claimed", *_points(0, 1)]


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_kills_of_queue_workers_every_effect_once(
    pg_database_url: str, tmp_path: Path, flows: ModuleType, forked: Callable[..., bool],
    seed: int,
) -> None:  # fmt: skip
    """Twelve runs on a queue limited to two at once; three worker processes in turn, each
    SIGKILLed at a random kill point (after a claim, before or after either effect), each
    taking over what its predecessors left once their leases expired; then a last worker
    finishes everything. Every effect applied once, the limit never exceeded, one run per
    dedup id."""
    rng = random.Random(seed)
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    queue = Queue(QUEUE, concurrency=QUEUE_LIMIT)
    names = [f"job-{seed}-{i}" for i in range(QUEUED_RUNS)]
    async with DurableRunner(
        pg_database_url, handlers=flows.HANDLERS, owner="finisher", lease=LEASE
    ) as runner:
        ids = [
            (await runner.enqueue(flows.queued_flow(counter, n), queue=QUEUE, dedup_id=n)).id
            for n in names
        ]
        points = [rng.choice(QUEUE_KILL_POINTS) for _ in range(QUEUE_FORKS)]
        for i, point in enumerate(points):
            assert forked(
                "--db", pg_database_url, "--counter", counter, "--owner", f"doomed-{i}",
                "--action", "work", "--queue", QUEUE, "--queue-concurrency", str(QUEUE_LIMIT),
                "--lease", str(LEASE), "--kill-at", point,
            )  # fmt: skip
        # The last one died holding runs (its leases not yet expired, or expired untaken).
        assert [r for r in await runner.list("running") if r.lease_owner], points
        await flows.finish_queue(runner, ids, queue)
        for n, run_id in zip(names, ids, strict=True):
            again = await runner.enqueue(flows.queued_flow(counter, n), queue=QUEUE, dedup_id=n)
            assert again.id == run_id
        assert len(await runner.list()) == QUEUED_RUNS
    rows = flows.check_queued_effects(counter, names)
    assert flows.peak_overlap(flows.executions(rows)) <= QUEUE_LIMIT, points
