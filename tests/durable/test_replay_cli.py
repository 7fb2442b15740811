"""`effects.durable.replay` and `python -m effects runs replay`: stored logs checked against the
code deployed now, performing nothing and writing nothing."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from effects import DivergenceError
from effects.durable import DurableRunner, Log, replay

WORKERS = Path(__file__).parent / "workers"

# The shop as deployed when the runs were recorded (v1), and two later versions: one that
# asks the same things (a refactoring: same effects, new helper), one that inserts a credit
# check between the reservation and the address prompt (incompatible with recorded runs).
SHOP = """
import os
from effects import Call, Yield, computation

def touch(what):
    with open(os.environ["SHOP_EFFECTS"], "a") as f:
        f.write(what + "\\n")
    return what

def reserve(sku, qty):
    touch("reserve " + sku)
    return qty

def ship(sku, address):
    touch("ship " + sku)
    return "shipped"

def check_credit(sku):
    touch("credit " + sku)
    return True

@computation(name="ci.order", version=1)
def order(sku: str, qty: int):
    reserved = yield Call(reserve, sku, qty)
    {extra}
    address = yield Yield({{"ask": "address"}}, input=str)
    yield Call(ship, sku, address)
    return f"{{reserved}} {{sku}} to {{address}}"
"""
V1 = SHOP.format(extra="pass")
V1_REFACTORED = SHOP.format(extra="reserved = int(reserved)")
V2 = SHOP.format(extra="yield Call(check_credit, sku)")


def write_shop(where: Path, source: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "ci_shop.py").write_text(textwrap.dedent(source))
    return where


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The v1 shop, imported in this process (to record runs)."""
    monkeypatch.setenv("SHOP_EFFECTS", str(tmp_path / "effects.txt"))
    monkeypatch.syspath_prepend(str(write_shop(tmp_path / "v1", V1)))
    sys.modules.pop("ci_shop", None)
    yield importlib.import_module("ci_shop")
    sys.modules.pop("ci_shop", None)


def record(url: str, shop: ModuleType) -> None:
    """Three runs: `waiting` (at the address prompt), `shipped` (done), `waiting-2`."""

    async def go() -> None:
        async with DurableRunner(url) as runner:
            await runner.start(shop.order("tea", 2), run_id="waiting")
            await runner.start(shop.order("cup", 1), run_id="shipped")
            await runner.resume("shipped", "1 Rue de Rivoli")
            await runner.start(shop.order("pot", 3), run_id="waiting-2")

    anyio.run(go, backend="asyncio")


def cli(code: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "effects", "runs", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def sqlite_files(tmp_path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.glob("runs.db*")}


def effects_done(tmp_path: Path) -> list[str]:
    path = tmp_path / "effects.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_replay_in_ci_sqlite(tmp_path: Path, shop: ModuleType) -> None:
    """The recorded runs replay with the same code and with a compatible refactoring (exit 0);
    with an incompatible change the command exits 1 naming the first run and step that
    diverge, expected vs got. The store file is byte-identical afterwards and no effect ran."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    record(db, shop)
    before, performed = sqlite_files(tmp_path), effects_done(tmp_path)
    assert performed == ["reserve tea", "reserve cup", "ship cup", "reserve pot"]

    same = cli(tmp_path / "v1", "--all", "--db", db, "--import", "ci_shop")
    assert same.returncode == 0, same.stderr
    lines = same.stdout.splitlines()
    assert lines[0].split()[:2] == ["ok", "waiting"]
    assert "2 entries, suspended" in lines[0]
    assert "3 entries, done" in lines[1]
    assert lines[-1] == "3 of 3 run(s) replay"

    refactored = cli(write_shop(tmp_path / "v1b", V1_REFACTORED), "--all", "--db", db,
                     "--import", "ci_shop")  # fmt: skip
    assert refactored.returncode == 0, refactored.stderr

    changed = cli(write_shop(tmp_path / "v2", V2), "--all", "--db", db, "--import", "ci_shop")
    assert changed.returncode == 1
    assert "Traceback" not in changed.stderr
    [line] = changed.stderr.splitlines()
    assert line.startswith("error: run waiting: diverges at step 1: expected effects.Yield(")
    assert "got effects.Call(fn='ci_shop.check_credit', args=['tea']" in line
    assert line.endswith("(3 runs fail)")
    assert changed.stdout.splitlines()[-1] == "0 of 3 run(s) replay"

    # One run by an id prefix, as JSON.
    one = cli(tmp_path / "v2", "shipp", "--db", db, "--import", "ci_shop", "--json")
    assert one.returncode == 1
    [result] = json.loads(one.stdout)
    assert result["id"] == "shipped"
    assert result["ok"] is False
    assert result["error"]["position"] == 1
    assert result["error"]["expected"].startswith("effects.Yield(")

    assert sqlite_files(tmp_path) == before
    assert effects_done(tmp_path) == performed


def test_replay_usage(tmp_path: Path, shop: ModuleType) -> None:
    """Ambiguous prefixes and missing run selections are usage errors (status 2, one line);
    an unknown computation fails its run (status 1)."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    record(db, shop)
    code = tmp_path / "v1"
    ambiguous = cli(code, "wait", "--db", db, "--import", "ci_shop")
    assert ambiguous.returncode == 2
    assert ambiguous.stderr.splitlines() == [
        "error: run id prefix 'wait' is ambiguous: it starts waiting, waiting-2; "
        "give more of the id"
    ]
    both = cli(code, "waiting", "--status", "done", "--db", db, "--import", "ci_shop")
    assert both.returncode == 2
    assert "--status selects among --all" in both.stderr
    neither = cli(code, "--db", db, "--import", "ci_shop")
    assert neither.returncode == 2
    assert "give the runs to check, or --all" in neither.stderr
    unknown = cli(code, "--all", "--db", db)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: run waiting: LookupError: no computation registered")


def test_replay_on_postgres_writes_nothing(
    tmp_path: Path, shop: ModuleType, pg_database_url: str
) -> None:
    """On PostgreSQL too: every table holds the same rows (revisions included) afterwards."""
    record(pg_database_url, shop)

    def snapshot() -> list[Any]:
        # asyncpg (the test group's driver), from this synchronous test through its own loop.
        async def read() -> list[Any]:
            engine = create_async_engine(pg_database_url)
            try:
                async with engine.connect() as conn:
                    tables = ["effects_runs", "effects_log", "effects_owners", "effects_task_trees"]
                    return [
                        (await conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1, 2"))).all()
                        for t in tables
                    ]
            finally:
                await engine.dispose()

        return anyio.run(read)

    before = snapshot()
    done = cli(write_shop(tmp_path / "v2", V2), "--all", "--db", pg_database_url,
               "--import", "ci_shop")  # fmt: skip
    assert done.returncode == 1
    assert "run waiting: diverges at step 1" in done.stderr
    ok = cli(tmp_path / "v1", "--all", "--db", pg_database_url, "--import", "ci_shop")
    assert ok.returncode == 0, ok.stderr
    assert snapshot() == before


async def _recorded(url: str, shop: ModuleType, run_id: str) -> Log:
    async with DurableRunner(url) as runner:
        return await runner.get_log(run_id)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_replay_api(tmp_path: Path, shop: ModuleType) -> None:
    """`replay(log, comp, handlers)`: where each log ends, a log cut mid-step stops before the
    first effect it does not hold (performing nothing), and divergence is raised with its
    position, expected and got."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    await anyio.to_thread.run_sync(record, db, shop)
    performed = effects_done(tmp_path)
    waiting = await _recorded(db, shop, "waiting")
    shipped = await _recorded(db, shop, "shipped")

    at_prompt = replay(waiting, shop.order("tea", 2))
    assert (at_prompt.end, at_prompt.entries) == ("suspended", 2)
    assert at_prompt.outcome is not None
    assert at_prompt.outcome.value == {"ask": "address"}
    done = replay(shipped, shop.order("cup", 1))
    assert (done.end, done.outcome.value) == ("done", "1 cup to 1 Rue de Rivoli")  # type: ignore[union-attr]

    # The log of a step cut off after the answer, before shipping: in progress, next = ship.
    cut = Log.model_validate(
        {**shipped.model_dump(), "entries": shipped.model_dump()["entries"][:2]}
    )
    mid = replay(cut, shop.order("cup", 1))
    assert (mid.end, mid.outcome) == ("in progress", None)
    assert "ship" in (mid.next or "")
    empty = replay(Log.model_validate({**cut.model_dump(), "entries": []}), shop.order("cup", 1))
    assert empty.end == "in progress"
    assert "reserve" in (empty.next or "")
    assert effects_done(tmp_path) == performed  # nothing was performed

    with pytest.raises(DivergenceError) as caught:
        replay(shipped, shop.order("cup", 5))  # other arguments: another Call at step 0
    assert caught.value.position == 0
    assert "args=['cup', 1]" in caught.value.expected
    assert "args=['cup', 5]" in caught.value.got


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_replay_stops_at_a_sleep_without_sleeping(tmp_path: Path) -> None:
    """A log that ends inside a durable sleep (its wake-up time recorded, the sleep not over)
    replays to `in progress` at once: the replay never waits for the timer."""
    sys.path.insert(0, str(WORKERS))
    try:
        flows = importlib.import_module("crash_flows")
    finally:
        sys.path.remove(str(WORKERS))
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    async with DurableRunner(db, handlers=flows.HANDLERS) as runner:
        await runner.start(flows.timer_flow(counter), run_id="t")
        log = await runner.get_log("t")
    timer = next(i for i, e in enumerate(log.entries) if e.effect == "effects.durable.Timer")
    # Wake up in a day: a replay that slept would time the test out.
    entries = [e.model_dump() for e in log.entries[: timer + 1]]
    entries[-1]["result"] = {"wake_at": time.time() + 86400}
    cut = Log.model_validate({**log.model_dump(), "entries": entries})
    started = time.monotonic()
    result = replay(cut, flows.timer_flow(counter), flows.HANDLERS)
    assert time.monotonic() - started < 5
    assert result.end == "in progress"
    assert "AwaitTimer" in (result.next or "")
    assert len(flows.read_counter(counter)[0]) == 3  # the recorded run's effects only
