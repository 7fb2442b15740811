"""Parallel branches in durable runs: each branch's effects are recorded under its branch id,
replayed from the branch's own entries whatever order the branches finish in, and a process
SIGKILLed while branches run is recovered without repeating any completed branch's effect."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from effects import (
    Call,
    ConfigurationError,
    DivergenceError,
    Effect,
    Fresh,
    Parallel,
    UnhandledSuspension,
    Yield,
    arun,
    computation,
    handler,
    run,
    with_handler,
)
from effects.durable import DurableRunner, EffectLogger, Log, RunStatus, at_most_once

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only (the in-memory tests too, for one
    fixture)."""
    return "asyncio"


class Work(Effect[str]):
    """An external effect whose handler completes when the test says so."""

    name: str


class Gates:
    """`Work(name)` completes when `open(name)` is called; `calls` lists the handler calls."""

    def __init__(self) -> None:
        self.events: dict[str, anyio.Event] = {}
        self.calls: list[str] = []
        self.handler = handler({Work: self._work}, external=True)

    def event(self, name: str) -> anyio.Event:
        return self.events.setdefault(name, anyio.Event())

    async def _work(self, effect: Work) -> str:
        self.calls.append(effect.name)
        await self.event(effect.name).wait()
        return effect.name.upper()

    def open(self, *names: str) -> None:
        for name in names:
            self.event(name).set()


def two_steps(name: str) -> Generator[Any, Any, str]:
    first = yield Work(f"{name}1")
    token = yield Fresh.uuid()
    second = yield Work(f"{name}2")
    assert token is not None
    return first + second


def pair() -> Generator[Any, Any, Any]:
    results = yield from Parallel.all(two_steps("a"), two_steps("b"))
    last = yield Work("last")
    return results, last


def round_trip(log: Log) -> Log:
    return Log.model_validate_json(log.model_dump_json())


async def record(order: list[str]) -> tuple[Any, Log]:
    """Run `pair()` live, opening the gates in `order` once each effect is waiting."""
    gates = Gates()
    logger = EffectLogger()
    result: list[Any] = []

    async def main() -> None:
        result.append(await arun(with_handler(pair(), logger), gates.handler, Fresh()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(main)
        for name in order:
            while name not in gates.calls:  # safety net only: each wait is a few loop turns
                await anyio.lowlevel.checkpoint()
            gates.open(name)
    return result[0], round_trip(logger.log)


async def test_branch_effects_are_recorded_under_their_branch_ids() -> None:
    """Entries carry the branch id ("{position}.{index}"); without checkpoints a branch's
    entries join the log when it ends (here a, then b, though b1 completed first); positions
    stay strictly ordered; the run's own effects have no branch."""
    result, log = await record(["b1", "a1", "a2", "b2", "last"])
    assert result == (["A1A2", "B1B2"], "LAST")
    got = [(e.effect.rsplit(".", 1)[1], e.branch, e.result) for e in log.entries]
    assert [(b, r) for kind, b, r in got if kind == "Work"] == [
        ("0.0", "A1"),
        ("0.0", "A2"),
        ("0.1", "B1"),
        ("0.1", "B2"),
        (None, "LAST"),
    ]
    assert [b for _, b, _ in got] == ["0.0"] * 3 + ["0.1"] * 3 + [None]
    assert [e.seq for e in log.entries] == list(range(len(log.entries)))


async def test_replay_follows_each_branch_whatever_order_they_finish_in() -> None:
    """A log recorded with branch b finishing first replays with no handler called, whichever
    branch the scheduler runs first this time; logs of either order give the same result."""
    for order in (["b1", "a1", "a2", "b2", "last"], ["a1", "a2", "b1", "b2", "last"]):
        result, log = await record(order)
        gates = Gates()
        logger = EffectLogger(log)
        replayed = await arun(with_handler(pair(), logger), gates.handler, Fresh())
        assert replayed == result
        assert gates.calls == []
        assert logger.log == log


async def test_a_partial_log_replays_what_completed_and_runs_the_rest_live() -> None:
    """Cut the log after branch a's first effect: replay returns it without calling the
    handler, and everything else runs live once, recorded after the old entries."""
    _, full = await record(["b1", "a1", "a2", "b2", "last"])
    cut = Log.model_validate({**full.model_dump(), "entries": full.model_dump()["entries"][:1]})
    gates = Gates()
    gates.open("b1", "a2", "b2", "last")
    logger = EffectLogger(round_trip(cut))
    assert await arun(with_handler(pair(), logger), gates.handler, Fresh()) == (
        ["A1A2", "B1B2"],
        "LAST",
    )
    assert sorted(gates.calls) == ["a2", "b1", "b2", "last"]
    entries = round_trip(logger.log).entries
    assert entries[0] == full.entries[0]
    assert [e.seq for e in entries] == list(range(len(entries)))


async def test_nested_branches_compose_their_ids() -> None:
    """A Parallel inside a branch: its entries are recorded as "outer/inner" and replay."""

    def inner(name: str) -> Generator[Any, Any, Any]:
        return (yield from Parallel.all(Work(f"{name}-x"), Work(f"{name}-y")))

    def outer() -> Generator[Any, Any, Any]:
        return (yield from Parallel.all(inner("p"), Work("q")))

    gates = Gates()
    gates.open("p-x", "p-y", "q")
    logger = EffectLogger()
    assert await arun(with_handler(outer(), logger), gates.handler) == [["P-X", "P-Y"], "Q"]
    log = round_trip(logger.log)
    branches = {e.args["name"]: e.branch for e in log.entries}
    assert branches == {"p-x": "0.0/0.0", "p-y": "0.0/0.1", "q": "0.1"}
    again = Gates()
    assert await arun(with_handler(outer(), EffectLogger(log)), again.handler) == [
        ["P-X", "P-Y"],
        "Q",
    ]
    assert again.calls == []


async def test_a_race_replays_the_same_winner_and_the_losers_cancellation() -> None:
    """The loser was cancelled while its effect was in flight: that is recorded, and a replay
    delivers the cancellation at the same point and returns the same winner."""
    cleanup: list[str] = []

    def slow() -> Generator[Any, Any, str]:
        try:
            return (yield Work("slow"))
        finally:
            cleanup.append("slow cleaned up")

    gates = Gates()
    gates.open("fast")
    logger = EffectLogger()
    assert (
        await arun(with_handler(Parallel.race(slow(), Work("fast")), logger), gates.handler)
        == "FAST"
    )
    log = round_trip(logger.log)
    statuses = {e.args["name"]: (e.status, e.branch) for e in log.entries}
    assert statuses == {"slow": ("error", "0.0"), "fast": ("done", "0.1")}
    again = Gates()
    replayed = await arun(
        with_handler(Parallel.race(slow(), Work("fast")), EffectLogger(log)), again.handler
    )
    assert replayed == "FAST"
    assert again.calls == []
    assert cleanup == ["slow cleaned up", "slow cleaned up"]


@at_most_once
class Charge(Effect[int]):
    amount: int


async def test_at_most_once_effects_are_refused_in_branches() -> None:
    """A write-ahead record cannot sit among other branches' entries: a clear error in the
    branch, nothing performed or recorded."""
    charged: list[int] = []
    charges = handler({Charge: lambda e: charged.append(e.amount) or e.amount}, external=True)

    def comp() -> Generator[Any, Any, Any]:
        return (yield from Parallel.all(Charge(1)))

    logger = EffectLogger()
    with pytest.raises(ConfigurationError, match="at-most-once"):
        await arun(with_handler(comp(), logger), charges)
    assert charged == []
    assert logger.log.entries == []


async def test_a_yield_in_a_branch_is_recorded_as_its_error() -> None:
    """The UnhandledSuspension a branch gets for its Yield is recorded, and replayed."""

    def asks() -> Generator[Any, Any, str]:
        try:
            return (yield Yield("name?"))
        except UnhandledSuspension:
            return "refused"

    logger = EffectLogger()
    assert await arun(with_handler(Parallel.all(asks()), logger)) == ["refused"]
    log = round_trip(logger.log)
    assert [(e.status, e.branch) for e in log.entries] == [("error", "0.0")]
    assert await arun(with_handler(Parallel.all(asks()), EffectLogger(log))) == ["refused"]


# -- DurableRunner ------------------------------------------------------------------------------

CALLS: list[str] = []


async def noted(name: str) -> str:
    CALLS.append(name)
    await anyio.lowlevel.checkpoint()
    return name


@computation(name="parallel.durable", version=1)
def fan_out() -> Generator[Any, Any, list[str]]:
    def branch(name: str) -> Generator[Any, Any, str]:
        one: str = yield Call(noted, f"{name}1")
        two: str = yield Call(noted, f"{name}2")
        return one + two

    results = yield from Parallel.all(branch("a"), branch("b"), branch("c"))
    answer: str = yield Yield("ok?", input=str)
    return [*results, answer]


async def test_a_durable_run_checkpoints_branches_and_cold_resumes(tmp_path: Path) -> None:
    """Every branch effect is checkpointed as it completes (one lock, no conflict between
    branches); a new runner cold-resumes the run by replaying them, performing none again."""
    CALLS.clear()
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    async with DurableRunner(url) as r:
        started = await r.start(fan_out())
        assert started.status is RunStatus.SUSPENDED
        log = await r.get_log(started.id)
    assert sorted(CALLS) == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert {e.branch for e in log.entries} == {"0.0", "0.1", "0.2", None}
    async with DurableRunner(url) as r:
        done = await r.resume(started.id, "yes")
    assert done.status is RunStatus.DONE
    assert done.outcome is not None
    assert done.outcome.value == ["a1a2", "b1b2", "c1c2", "yes"]  # type: ignore[union-attr]
    assert len(CALLS) == 6


# -- kill -9 while branches run ---------------------------------------------------------------

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.mark.parametrize(
    "kill_at", ["before:0", "after:0", "after:2", "before:3", "after:4", "after:5", "after:6"]
)
async def test_recovery_after_sigkill_while_branches_run(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., bool], kill_at: str
) -> None:
    """A worker SIGKILLs itself before or after one of the branches' external effects (or the
    one after the Parallel); another runner recovers the run: every effect applied once, and
    no effect whose completion was checkpointed before the kill is performed again."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    common = ("--db", url, "--counter", counter, "--run-id", "r1", "--owner", "w1")
    forked(*common, "--action", "start", "--flow", "parallel", "--kill-at", kill_at)

    async with DurableRunner(url, handlers=flows.HANDLERS, owner="w1") as runner:
        stored = await runner.get_log("r1")
        checkpointed = {
            e.args["args"][1]
            for e in stored.entries
            if e.effect == "effects.Call" and e.status == "done"
        }
        recovered = await runner.recover()
        assert [r.id for r in recovered] == ["r1"]
        run = recovered[0]
        assert run.status is RunStatus.DONE, run.outcome
        assert run.outcome is not None
        assert run.outcome.value == flows.PARALLEL_EXPECTED  # type: ignore[union-attr]
        log = await runner.get_log("r1")
        assert [e.seq for e in log.entries] == sorted({e.seq for e in log.entries})

    attempts, applied = flows.read_counter(counter)
    n = 2 * flows.PARALLEL_BRANCHES + 1
    assert sorted(i for _, i in applied) == list(range(n))
    assert len({key for key, _ in applied}) == n
    keys = [key for key, _ in attempts]
    repeated = {i for key, i in attempts if keys.count(key) > 1}
    assert not repeated & checkpointed
    when, _, point = kill_at.partition(":")
    if when == "after":
        assert int(point) in repeated  # done but not checkpointed: run again, same key


async def test_a_loser_cancelled_between_effects_does_not_go_live_on_replay() -> None:
    """A race's loser whose cancellation left no entry (cancelled between two effects; made
    here by dropping its recorded cancellation from the log): on replay the run went on after
    the race, so the loser is cancelled where its entries end instead of performing more."""

    def loser() -> Generator[Any, Any, str]:
        yield Work("first")
        return (yield Work("second"))

    def comp() -> Generator[Any, Any, Any]:
        winner = yield from Parallel.race(loser(), Work("fast"))
        return winner, (yield Work("after"))

    gates = Gates()
    logger = EffectLogger()

    async def main() -> None:
        await arun(with_handler(comp(), logger), gates.handler)

    async with anyio.create_task_group() as tg:
        tg.start_soon(main)
        for name in ("first", "fast", "after"):
            while name not in gates.calls:
                await anyio.lowlevel.checkpoint()
            gates.open(name)
    log = round_trip(logger.log)
    assert {e.args["name"]: e.status for e in log.entries} == {
        "first": "done",
        "second": "error",  # cancelled in flight: recorded
        "fast": "done",
        "after": "done",
    }
    data = log.model_dump()
    data["entries"] = [e for e in data["entries"] if e["args"]["name"] != "second"]
    cut = Log.model_validate(data)
    again = Gates()
    again.open("second")
    replayed = await arun(with_handler(comp(), EffectLogger(cut)), again.handler)
    assert replayed == ("FAST", "AFTER")
    assert again.calls == []


DOUBLED: list[int] = []


def double(x: int) -> int:
    DOUBLED.append(x)
    return 2 * x


def test_the_sync_runner_records_and_replays_branches_too() -> None:
    """Under the sync runner the branches run one after another; their entries are recorded
    under their ids and a replay calls no handler."""
    DOUBLED.clear()

    def branch(i: int) -> Generator[Any, Any, int]:
        value: int = yield Call(double, i)
        yield Fresh.uuid()
        return value

    def comp() -> Generator[Any, Any, Any]:
        both = yield from Parallel.all(branch(1), branch(2))
        first = yield from Parallel.race(branch(3), branch(4))
        return both, first

    logger = EffectLogger()
    assert run(with_handler(comp(), logger), Fresh()) == ([2, 4], 6)
    log = round_trip(logger.log)
    assert [e.branch for e in log.entries] == ["0.0", "0.0", "0.1", "0.1", "4.0", "4.0"]
    DOUBLED.clear()
    assert run(with_handler(comp(), EffectLogger(log)), Fresh()) == ([2, 4], 6)
    assert DOUBLED == []


def test_a_branch_that_changed_diverges_with_the_branch_position() -> None:
    """Replay is strict inside a branch too: a branch that now performs something else raises
    DivergenceError (at its own position), not any other error."""

    def comp(x: int) -> Generator[Any, Any, Any]:
        return (yield from Parallel.all(Call(double, 1), Call(double, x)))

    logger = EffectLogger()
    assert run(with_handler(comp(2), logger)) == [2, 4]
    log = round_trip(logger.log)
    with pytest.raises(DivergenceError, match="position 0"):
        run(with_handler(comp(3), EffectLogger(log)))
