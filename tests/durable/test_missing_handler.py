"""A process without a handler the run needs (the command line without `--handlers`) does not
destroy the run: the `MissingHandlerError` reaches the caller and the run waits, as it was,
for a process that has the handler. Only the computation's own errors fail a run."""

from __future__ import annotations

import io
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import pytest

from effects import Call, Effect, MissingHandlerError, Yield, computation, handler
from effects.durable import DurableRunner, RunStatus
from effects.durable._cli import main

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite) run on asyncio only."""
    return "asyncio"


def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


SENT: list[str] = []


class Notify(Effect[str]):
    """Sent by a handler only the full deployment installs."""

    text: str


def send(effect: Notify) -> str:
    SENT.append(effect.text)
    return f"sent {effect.text}"


NOTIFIER = handler({Notify: send}, name="notifier", external=True)


def audit(text: str) -> str:
    SENT.append(f"audit {text}")
    return text


@computation(name="missing.after_answer", version=1)
def after_answer() -> Generator[Any, Any, str]:
    name: str = yield Yield("who?", input=str)
    sent: str = yield Notify(name)
    return sent


@computation(name="missing.after_checkpoint", version=1)
def after_checkpoint() -> Generator[Any, Any, str]:
    name: str = yield Yield("who?", input=str)
    yield Call(audit, name)
    sent: str = yield Notify(name)
    return sent


@computation(name="missing.in_replay", version=1)
def in_replay() -> Generator[Any, Any, str]:
    try:
        first: str = yield Notify("hello")
    except Exception:  # a computation that swallows everything
        first = "unsent"
    name: str = yield Yield("who?", input=str)
    return f"{first}/{name}"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SENT.clear()


async def test_a_missing_handler_after_the_answer_leaves_the_run_suspended(
    tmp_path: Path,
) -> None:
    """Resumed in a process without the handler the next step needs, the run goes back to its
    prompt with the answer not consumed; a process with the handler then resumes it."""
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        run = await runner.start(after_answer(), run_id="a1")
        assert run.status is RunStatus.SUSPENDED
    async with DurableRunner(url(tmp_path)) as bare:
        with pytest.raises(MissingHandlerError, match="Notify"):
            await bare.resume("a1", "ada")
        run = await bare.get("a1")
        assert (run.status, run.prompt, run.lease_owner) == (RunStatus.SUSPENDED, "who?", None)
        log = await bare.get_log("a1")
        assert [e.status for e in log.entries] == ["pending"]
        assert await bare.recover() == []
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        run = await runner.resume("a1", "ada")
        assert run.status is RunStatus.DONE
        assert run.outcome is not None
        assert run.outcome.value == "sent ada"  # type: ignore[union-attr]
    assert SENT == ["ada"]


async def test_a_missing_handler_after_a_checkpoint_leaves_the_run_to_recovery(
    tmp_path: Path,
) -> None:
    """Once the step checkpointed an effect after the answer it cannot go back to the
    prompt: it stays `running`, unleased and not failed, and `recover()` in a process with the
    handler finishes it without repeating the checkpointed effect."""
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        await runner.start(after_checkpoint(), run_id="c1")
    async with DurableRunner(url(tmp_path)) as bare:
        with pytest.raises(MissingHandlerError, match="Notify"):
            await bare.resume("c1", "ada")
        run = await bare.get("c1")
        assert (run.status, run.lease_owner, run.error) == (RunStatus.RUNNING, None, None)
        assert await bare.recover() == []  # still missing here; not counted as an attempt
        assert (await bare.get("c1")).recovery_attempts == 0
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        [run] = await runner.recover()
        assert run.status is RunStatus.DONE
    assert SENT == ["audit ada", "ada"]


async def test_replay_without_a_handler_reports_the_missing_handler(tmp_path: Path) -> None:
    """A computation that swallows the error at a recorded effect whose handler is missing
    goes another way on replay: the caller is told the handler is missing (not a
    divergence), and the run is untouched."""
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        run = await runner.start(in_replay(), run_id="r1")
        assert run.status is RunStatus.SUSPENDED
    async with DurableRunner(url(tmp_path)) as bare:
        with pytest.raises(MissingHandlerError, match="Notify") as caught:
            await bare.resume("r1", "ada")
        assert "position 0" in str(caught.value)
        run = await bare.get("r1")
        assert run.status is RunStatus.SUSPENDED
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        run = await runner.resume("r1", "ada")
        assert run.outcome is not None
        assert run.outcome.value == "sent hello/ada"  # type: ignore[union-attr]


async def test_the_command_line_without_handlers_exits_non_zero(tmp_path: Path) -> None:
    """`runs resume` without `--handlers` fails with exit status 1 and names the missing
    handler; the run is still waiting for its answer."""
    async with DurableRunner(url(tmp_path), handlers=NOTIFIER) as runner:
        await runner.start(after_answer(), run_id="k1")

    def cli() -> int:
        return main(["runs", "resume", "k1", '"ada"', "--db", url(tmp_path)], io.StringIO())

    assert await anyio.to_thread.run_sync(cli) == 1
    async with DurableRunner(url(tmp_path)) as runner:
        assert (await runner.get("k1")).status is RunStatus.SUSPENDED
    assert SENT == []
