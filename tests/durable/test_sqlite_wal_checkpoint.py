"""SQLite: the WAL checkpoint a long run of inline commits triggers leaves the checkpoint
connection usable (its PRAGMA's result row used to stay pending, and the next checkpoint
committed on that connection failed with "SQL statements in progress")."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from effects import Call, computation
from effects.durable import DurableRunner, RunStatus

pytestmark = pytest.mark.anyio

BIG = "x" * 20_000


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers run on asyncio only."""
    return "asyncio"


def big() -> str:
    return BIG


@computation(name="tests.wal.writer", version=1)
def writer(n: int) -> Generator[Any, Any, int]:
    for _ in range(n):
        yield Call(big)
    return n


async def test_a_wal_checkpoint_leaves_the_connection_usable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    async with DurableRunner(url) as runner:
        # One run alone commits inline; every 256 commits the WAL's size is checked and,
        # past 4 MiB (here ~5 MiB of log), checkpointed on the checkpoint connection.
        first = await runner.start(writer(260))
        assert first.status is RunStatus.DONE
        # Another run's checkpoints go through that connection.
        second = await runner.start(writer(3))
        assert second.status is RunStatus.DONE, second.outcome
