"""The onboarding wizard as plain effects: no web code, no I/O.

`onboarding()` asks three questions, creates the user through the `CreateUser` effect and emits
a `UserOnboarded` event. What those effects do is decided by the handlers `app.py` installs:
`users(url)` writes to a SQL table (SQLite or PostgreSQL), and is *external*, so a durable run
checkpoints right after it and never creates the same user twice, even across a crash.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, Field, JsonValue
from pydantic_core import PydanticCustomError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

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
        description="Your account is registered with this address.",
        json_schema_extra={"widget": "email", "placeholder": "ada@example.com"},
    )


PLANS: dict[str, JsonValue] = {
    "free": {"label": "Free", "description": "One project, community support."},
    "pro": {"label": "Pro", "description": "Unlimited projects and email support; 12 € a month."},
    "enterprise": {
        "label": "Enterprise",
        "description": "Single sign-on, an audit log and a contract; priced per seat.",
    },
}


class PlanChoice(BaseModel):
    """Step 3."""

    plan: Literal["free", "pro", "enterprise"] = Field(
        description="Prices are examples: this demo charges nothing.",
        json_schema_extra={"choices": PLANS},  # labels and descriptions of the choices
    )


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
    # `step` / `steps`: the page shows "Step 2 of 3", and so does the tab's title.
    who: Name = yield Yield(
        {"title": "Welcome! What is your name?", "step": 1, "steps": 3}, input=Name
    )
    contact: Contact = yield Yield(
        {"title": f"Hello {who.name}! What is your email address?", "step": 2, "steps": 3},
        input=Contact,
    )
    choice: PlanChoice = yield Yield(
        {
            "title": "Choose a plan",
            "text": f"Signing up {who.name} <{contact.email}>.",
            "submit": "Create my account",
            "step": 3,
            "steps": 3,
        },
        input=PlanChoice,
    )
    user_id = yield from CreateUser(who.name, contact.email, choice.plan)
    yield EventAccumulator.emit(UserOnboarded(user_id, contact.email, choice.plan))
    return Account(user_id=user_id, name=who.name, email=contact.email, plan=choice.plan)


# -- production handlers -------------------------------------------------------------------


def users(url: str) -> Handler:
    """`CreateUser` as an INSERT into the `users` table of the database at `url` (an
    SQLAlchemy async URL: the SQLite file of the runs, or the PostgreSQL database every server
    process shares).

    The insert is keyed by the effect's idempotency key: if the process dies after the insert
    but before the run's checkpoint, the recovered run (in this process or another one)
    performs the effect again with the same key and gets the same user back instead of a
    second one.
    """
    engine = create_async_engine(url)
    ready = anyio.Lock()
    created = False

    async def create_table() -> None:
        nonlocal created
        async with ready:
            if created:
                return
            # Several processes may start at once: CREATE TABLE IF NOT EXISTS can still race
            # on PostgreSQL, so the loser retries once (and then finds the table).
            for attempt in (1, 2):
                try:
                    async with engine.begin() as conn:
                        await conn.run_sync(_TABLES.create_all, checkfirst=True)
                    break
                except DBAPIError:
                    if attempt == 2:
                        raise
            created = True

    async def create_user(effect: CreateUser) -> int:
        key = idempotency_key() or f"unlogged:{id(effect)}"
        await create_table()
        async with engine.begin() as conn:
            values = {
                "name": effect.name,
                "email": effect.email,
                "plan": effect.plan,
                "created_at": datetime.now(UTC).isoformat(),
                "request_key": key,
            }
            insert = _insert(engine.dialect.name)(_USERS).values(**values)
            await conn.execute(insert.on_conflict_do_nothing(index_elements=["request_key"]))
            found = await conn.execute(sa.select(_USERS.c.id).where(_USERS.c.request_key == key))
            return int(found.scalar_one())

    return handler({CreateUser: create_user}, name="users", external=True)


_TABLES = sa.MetaData()
_USERS = sa.Table(
    "users",
    _TABLES,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("request_key", sa.Text, unique=True),
)


def _insert(dialect: str) -> Any:
    """The INSERT of a dialect that knows `ON CONFLICT DO NOTHING`."""
    if dialect == "postgresql":
        return postgresql.insert
    return sqlite.insert
