"""The onboarding wizard as plain effects: no web code, no I/O.

`onboarding()` asks three questions, creates the user through the `CreateUser` effect and emits
a `UserOnboarded` event. What those effects do is decided by the handlers `app.py` installs:
`users(db)` writes to a SQLite table, and is *external*, so a durable run checkpoints right
after it and never creates the same user twice, even across a crash.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from effects import Effect, EventAccumulator, Handler, Yield, computation, handler
from effects.durable import idempotency_key

# -- the questions -------------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")


def _email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        # A custom error type keeps pydantic from prefixing the message with "Value error, ".
        raise PydanticCustomError("email", "enter an email address such as ada@example.com")
    return value.lower()


class Name(BaseModel):
    """Step 1."""

    name: str = Field(min_length=1, max_length=80, description="How should we call you?")


class Contact(BaseModel):
    """Step 2."""

    email: Annotated[str, AfterValidator(_email)] = Field(
        max_length=200,
        description="We send the confirmation there.",
        json_schema_extra={"widget": "email", "placeholder": "ada@example.com"},
    )


class PlanChoice(BaseModel):
    """Step 3."""

    plan: Literal["free", "pro", "enterprise"]


class Account(BaseModel):
    """The wizard's result: what the welcome page shows."""

    user_id: int
    name: str
    email: str
    plan: str


# -- effects -------------------------------------------------------------------------------


class CreateUser(Effect[int]):
    """Store a new user; the result is the user's id."""

    name: str
    email: str
    plan: str


@dataclass(frozen=True)
class UserOnboarded:
    """The domain event emitted once the user exists."""

    user_id: int
    email: str
    plan: str


# -- the wizard ----------------------------------------------------------------------------


@computation(name="onboarding", version=1)
def onboarding() -> Generator[Any, Any, Account]:
    """Ask for a name, an email and a plan; create the user; welcome them."""
    who: Name = yield Yield({"title": "Welcome! What is your name?"}, input=Name)
    contact: Contact = yield Yield(
        {"title": f"Hello {who.name}! What is your email address?"}, input=Contact
    )
    choice: PlanChoice = yield Yield(
        {
            "title": "Choose a plan",
            "text": f"Signing up {who.name} <{contact.email}>.",
            "submit": "Create my account",
        },
        input=PlanChoice,
    )
    user_id = yield from CreateUser(who.name, contact.email, choice.plan)
    yield EventAccumulator.emit(UserOnboarded(user_id, contact.email, choice.plan))
    return Account(user_id=user_id, name=who.name, email=contact.email, plan=choice.plan)


# -- production handlers -------------------------------------------------------------------


def users(db: Path) -> Handler:
    """`CreateUser` as an INSERT into the `users` table of the SQLite file `db`.

    The insert is keyed by the effect's idempotency key: if the process dies after the insert
    but before the run's checkpoint, the recovered run performs the effect again with the same
    key and gets the same user back instead of a second one.
    """

    def insert(effect: CreateUser, key: str) -> int:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " email TEXT NOT NULL, plan TEXT NOT NULL, created_at TEXT NOT NULL,"
                " request_key TEXT UNIQUE)"
            )
            conn.execute(
                "INSERT INTO users (name, email, plan, created_at, request_key)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_key) DO NOTHING",
                (effect.name, effect.email, effect.plan, datetime.now(UTC).isoformat(), key),
            )
            row = conn.execute("SELECT id FROM users WHERE request_key = ?", (key,)).fetchone()
        return int(row[0])

    def create_user(effect: CreateUser) -> Awaitable[int]:
        key = idempotency_key() or f"unlogged:{id(effect)}"
        # sqlite3 blocks: run it in a worker thread, not on the event loop.
        return anyio.to_thread.run_sync(insert, effect, key)

    return handler({CreateUser: create_user}, name="users", external=True)
