"""The same onboarding computation under a test stack and a production stack.

Run: python examples/handler_stacks/main.py
"""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

from effects import Clock, Effect, EventAccumulator, Fresh, Reader, Stack, handler, run
from effects.testing import DeterministicFresh, FixedClock, Scripted


class CreateUser(Effect[int]):
    """Store a user; the result is the new row id."""

    id: uuid.UUID
    name: str
    tenant: str


def onboard(name: str) -> Generator[Any, Any, dict[str, Any]]:
    """Domain logic: no I/O, only effects."""
    tenant = yield Reader.ask()
    user_id = yield Fresh.uuid()
    row = yield CreateUser(user_id, name, tenant)
    at = yield Clock.now()
    yield EventAccumulator.emit({"event": "UserOnboarded", "row": row, "at": at.isoformat()})
    return {"row": row, "id": str(user_id), "tenant": tenant}


def production_stack(db: sqlite3.Connection, tenant: str) -> Stack:
    def create(e: CreateUser) -> int:
        cur = db.execute(
            "INSERT INTO users (id, name, tenant) VALUES (?, ?, ?)", (str(e.id), e.name, e.tenant)
        )
        db.commit()
        return cur.lastrowid or 0

    return Stack(
        handler({CreateUser: create}, external=True),
        Fresh(version=7),
        Clock(),
        Reader(tenant),
        EventAccumulator(on_event=lambda ev: print("  event:", ev)),
    )


def test_stack(tenant: str) -> Stack:
    fixed_id = uuid.UUID(int=1)
    return Stack(
        Scripted((CreateUser(fixed_id, "ada", tenant), 42)),
        DeterministicFresh(),
        FixedClock(),
        Reader(tenant),
        EventAccumulator(),
    )


def main() -> None:
    print("test stack:      ", run(onboard("ada"), test_stack("t1")))
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "users.db")
        db.execute("CREATE TABLE users (id TEXT, name TEXT, tenant TEXT)")
        print("production stack:")
        print("  result:", run(onboard("ada"), production_stack(db, "t1")))
        print("  rows:  ", db.execute("SELECT name, tenant FROM users").fetchall())
        db.close()


if __name__ == "__main__":
    main()
