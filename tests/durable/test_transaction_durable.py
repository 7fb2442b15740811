"""`transaction` in durable runs under the kill-point harness: a process SIGKILLed inside or
after a failed transaction is recovered by replay with the same rollback."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from effects import Done
from effects.durable import DurableRunner

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The worker's computations, imported under the same module name as in the workers."""
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.mark.parametrize("kill_at", ["after:0", "before:1", "after:1"])
async def test_recovery_after_sigkill_rolls_back_the_same(
    tmp_path: Path, flows: ModuleType, forked: Callable[..., bool], kill_at: str
) -> None:
    """Killed after the failed transaction's external effect, or before / after the next one:
    recover() in another process replays the run, rolls the transaction back the same way, and
    applies each external effect once."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    common = ("--db", url, "--counter", counter, "--run-id", "t1", "--owner", "w1")
    assert forked(*common, "--action", "start", "--flow", "transaction", "--kill-at", kill_at)
    async with DurableRunner(url, handlers=flows.HANDLERS, owner="w1") as runner:
        recovered = await runner.recover()
        assert [r.id for r in recovered] == ["t1"]
        assert recovered[0].outcome == Done(["before"])
    _, applied = flows.read_counter(counter)
    assert [i for _, i in applied] == [0, 1]
