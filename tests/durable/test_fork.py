"""`DurableRunner.fork` and `python -m effects runs fork`: a new run from step N of another run's
log, with another answer; the source untouched; one transaction (kill -9 leaves no half run)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from effects import ConfigurationError, InvalidInput
from effects.durable import DurableRunner, RunStatus

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent / "workers"
CODE = ("--import", "crash_flows", "--handlers", "crash_flows:HANDLERS")
# crash.flow with 4 steps: effects 0..3 (a uuid, then a Call), the bonus prompt at seq 4.
ANSWERED = 0 + 1 + 2 + 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    pg: str = request.getfixturevalue("pg_database_url")
    return pg


@pytest.fixture
def counter(tmp_path: Path, flows: ModuleType) -> str:
    path = str(tmp_path / "counter.db")
    flows.init_counter(path)
    return path


async def source_run(url: str, flows: ModuleType, counter: str) -> tuple[Any, Any]:
    """A finished run `src` (answered 5) and its log, as stored."""
    async with DurableRunner(url, handlers=flows.HANDLERS) as runner:
        await runner.start(flows.flow(4, counter), run_id="src")
        run = await runner.resume("src", 5)
        return run, await runner.get_log("src")


def ops_worker(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), *sys.path])}
    return subprocess.run(
        [sys.executable, str(WORKERS / "ops_worker.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_fork_answers_a_prompt_differently(url: str, flows: ModuleType, counter: str) -> None:
    """Forked at the prompt with another answer, the new run replays the source's first
    steps (performing none of them again) and continues live; the source is untouched."""
    source, log = await source_run(url, flows, counter)
    assert source.outcome.value == ANSWERED + 5
    async with DurableRunner(url, handlers=flows.HANDLERS) as runner:
        forked = await runner.fork("src", at=4, answer=100, new_id="f1")
        assert forked.status is RunStatus.DONE
        assert forked.outcome is not None
        assert forked.outcome.value == ANSWERED + 100  # type: ignore[union-attr]
        new_log = await runner.get_log("f1")
        # The copied steps are the source's, times included; the prompt was answered anew.
        assert new_log.entries[:4] == log.entries[:4]
        assert new_log.entries[4].effect == "effects.Yield"
        assert new_log.entries[4].result == 100
        assert new_log.entries[4].started_at == log.entries[4].started_at
        assert (await runner.get("src")).revision == source.revision
        assert await runner.get_log("src") == log

        # Without an answer: the new run performs step 4 again (asks the same question).
        again = await runner.fork("src", at=4, new_id="f2")
        assert again.status is RunStatus.SUSPENDED
        assert again.prompt == {"ask": "bonus", "after": 1}
        done = await runner.resume("f2", 7)
        assert done.outcome.value == ANSWERED + 7  # type: ignore[union-attr]
        # From the very start: a new run with the same arguments.
        fresh = await runner.fork("src", at=0, new_id="f3")
        assert fresh.status is RunStatus.SUSPENDED
        # After the last step: a copy that replays to the same result.
        copy = await runner.fork("src", at=len(log.entries), new_id="f4")
        assert copy.outcome.value == ANSWERED + 5  # type: ignore[union-attr]

    _, applied = flows.read_counter(counter)
    keys = [key for key, _ in applied]
    # The source's 4 effects, f1's and f2's 2 after the prompt, f3's first 2: each once, under
    # the new run's own idempotency keys; f4 performed nothing.
    assert sorted(k.partition(":")[0] for k in keys) == sorted(
        ["src"] * 4 + ["f1"] * 2 + ["f2"] * 2 + ["f3"] * 2
    )


async def test_fork_validates_the_step(url: str, flows: ModuleType, counter: str) -> None:
    """A step that is not in the log, an answer where no prompt is, an invalid answer, a
    prefix ending with an unanswered step: clear errors, nothing written."""
    await source_run(url, flows, counter)
    async with DurableRunner(url, handlers=flows.HANDLERS) as runner:
        waiting = await runner.start(flows.flow(4, counter), run_id="wait")
        cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
            ("src", {"at": 3, "answer": 1}, ConfigurationError, "step 3 is effects.Call, not a"),
            ("src", {"at": 99, "answer": 1}, ConfigurationError, "its log has no step 99"),
            ("src", {"at": 99}, ConfigurationError, "fork at 9 to continue after its last step"),
            ("src", {"at": -1}, ConfigurationError, "a step number (0 or more) is needed"),
            ("src", {"at": 4, "answer": "many"}, InvalidInput, "invalid input for int"),
            ("wait", {"at": 5}, ConfigurationError, "step 4 has no result yet"),
        ]  # fmt: skip
        for run_id, kwargs, error, message in cases:
            with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
                await runner.fork(run_id, **kwargs)
        assert [r.id for r in await runner.list()] == ["src", "wait"]
        # The waiting run's own prompt, answered in a fork: the source still waits.
        forked = await runner.fork("wait", at=4, answer=1)
        assert forked.outcome.value == ANSWERED + 1  # type: ignore[union-attr]
        assert (await runner.get("wait")).revision == waiting.revision


async def test_fork_cli(tmp_path: Path, flows: ModuleType, counter: str) -> None:
    """`runs fork ID --at N --answer JSON` prints the new run like `show`; errors are one
    line with status 1."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    await source_run(url, flows, counter)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), *sys.path])}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "effects", "runs", "fork", *args, "--db", url, *CODE],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    done = cli("sr", "--at", "4", "--answer", "100", "--new-id", "cli-fork", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["run"]["id"], shown["run"]["result"]) == ("cli-fork", ANSWERED + 100)
    assert len(shown["log"]["entries"]) == 9
    bad = cli("src", "--at", "3", "--answer", "1")
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "error: ConfigurationError: cannot fork run 'src' at step 3 with an answer: step 3 is "
        "effects.Call, not a Yield (only a prompt takes an answer)"
    ]


@pytest.mark.parametrize("statement", ["INSERT INTO effects_runs", "INSERT INTO effects_log"])
async def test_kill_mid_fork_leaves_no_half_run(
    url: str, flows: ModuleType, counter: str, statement: str
) -> None:
    """Killed (-9) inside the fork's transaction, after its run row or its log rows were
    written and before the commit: no trace of the new run; the source is as it was."""
    source, log = await source_run(url, flows, counter)
    done = ops_worker("--db", url, "--action", "fork", "--run-id", "src", "--at", "4",
                      "--answer", "100", "--new-id", "half", "--kill-sql", statement)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    async with DurableRunner(url, handlers=flows.HANDLERS) as runner:
        assert [r.id for r in await runner.list()] == ["src"]
        assert (await runner.get("src")).revision == source.revision
        assert await runner.get_log("src") == log
        assert await runner.recover() == []


@pytest.mark.parametrize("kill_at", ["before:2", "after:2", "before:3", "after:3"])
async def test_kill_after_fork_committed_is_recovered(
    url: str, flows: ModuleType, counter: str, kill_at: str
) -> None:
    """Killed after the fork committed, before or after either effect the new run performs
    live: `recover()` finishes the fork with the stored answer; each effect is applied once,
    and only the one a kill cut off after it ran was attempted twice."""
    await source_run(url, flows, counter)
    done = ops_worker("--db", url, "--action", "fork", "--run-id", "src", "--at", "4",
                      "--answer", "100", "--new-id", "f", "--kill-at", kill_at,
                      "--owner", "ops")  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    async with DurableRunner(url, handlers=flows.HANDLERS, owner="ops") as runner:
        assert (await runner.get("f")).status is RunStatus.RUNNING
        [run] = await runner.recover()
        assert run.id == "f"
        assert run.outcome is not None
        assert run.outcome.value == ANSWERED + 100  # type: ignore[union-attr]
    attempts, applied = flows.read_counter(counter)
    assert sorted(k for k, _ in applied if k.startswith("f:")) == ["f:6", "f:8"]
    tried = [k for k, _ in attempts if k.startswith("f:")]
    when, _, i = kill_at.partition(":")
    repeated = {k for k in tried if tried.count(k) > 1}
    assert repeated == ({f"f:{6 if i == '2' else 8}"} if when == "after" else set())
