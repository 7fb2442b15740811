"""The import job as a task tree: download a CSV from a real subprocess, validate it, save it.

    import contacts
    ├── Download contacts.csv   the program's output streamed line by line, with progress
    └── Import
        ├── Validate            one progress step per row; rejected rows are printed
        └── Save                one progress step per row, in batches (external effect)

Each `task(...)` is a node of the run's task tree; `Progress`, `Output` and `Print` report into
the innermost open task. The durable runner checkpoints after every `Call` and every
`SaveContacts`, so after a restart the job goes on from there: a download cut off by the
restart starts again, a save continues from its last batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from anyio.abc import Process
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from effects import (
    Call,
    Effect,
    Handler,
    Output,
    Print,
    Progress,
    bracket,
    computation,
    handler,
    task,
)

SOURCE = Path(__file__).with_name("source.py")
BATCH = 25


class ImportOptions(BaseModel):
    """The start form."""

    rows: int = Field(default=200, ge=1, le=10_000, description="How many contacts to import")
    speed: int = Field(default=50, ge=1, le=10_000, description="Lines per second the source sends")


class SaveContacts(Effect[int]):
    """Insert or update contacts (`id, name, email` rows); the result is how many."""

    rows: tuple[tuple[int, str, str], ...]


# -- the job -------------------------------------------------------------------------------


@computation(name="tasks.import_contacts", version=1)
def import_contacts(rows: int = 200, speed: int = 50) -> Generator[Any, Any, str]:
    """Download, validate and save `rows` contacts."""
    argv = [sys.executable, "-u", str(SOURCE), "--rows", str(rows), "--speed", str(speed)]
    lines = yield from task("Download contacts.csv", download(argv, rows))
    saved, rejected = yield from task("Import", import_rows(lines[1:]))
    yield Print(f"{saved} contacts saved, {rejected} rejected")
    return f"{saved} contacts imported, {rejected} rejected"


def download(argv: list[str], rows: int) -> Generator[Any, Any, list[str]]:
    """Run the source program; its output lines become this task's output as they come."""
    while True:
        yield Progress(0, rows + 1)  # the header, then the rows
        try:
            # Finished, failed or cancelled, the program is stopped: bracket releases on
            # every way out.
            lines: list[str] = yield from bracket(Call(spawn, argv), receive, release)
            return lines
        except SourceLost:
            yield Output("the server restarted during the download: downloading again")


def receive(handle: str) -> Generator[Any, Any, list[str]]:
    received: list[str] = []
    while (lines := (yield Call(read_lines, handle))) is not None:
        for line in lines:
            yield Output(line)
        received += lines
        yield Progress(len(received))
    return received


def release(handle: str) -> Generator[Any, Any, None]:
    yield Call(stop, handle)


def import_rows(lines: list[str]) -> Generator[Any, Any, tuple[int, int]]:
    yield Progress(0, 2)
    valid = yield from task("Validate", validate(lines))
    yield Progress.step()
    saved = yield from task("Save", save(valid))
    yield Progress.step()
    return saved, len(lines) - len(valid)


def validate(lines: list[str]) -> Generator[Any, Any, list[tuple[int, str, str]]]:
    yield Progress(0, len(lines))
    valid: list[tuple[int, str, str]] = []
    for line in lines:
        row_id, name, email = line.split(",", 2)
        if "@" in email:
            valid.append((int(row_id), name, email))
        else:
            yield Print(f"rejected row {row_id}: {email!r} is not an email address")
        yield Progress.step()
    return valid


def save(rows: list[tuple[int, str, str]]) -> Generator[Any, Any, int]:
    yield Progress(0, len(rows))
    saved = 0
    for start in range(0, len(rows), BATCH):
        saved += yield from SaveContacts(tuple(rows[start : start + BATCH]))
        yield Progress(saved)
    return saved


# -- a program's output, as effects -------------------------------------------------------

# Running programs by handle. A handle is a string, so that the `Call`s that use it can be
# logged. A program dies with the server process that started it: after a restart, reading
# from its handle raises `SourceLost` (recorded, and rebuilt as itself when replayed).
_PROGRAMS: dict[str, tuple[Process, bytearray]] = {}


class SourceLost(LookupError):
    """The program behind a handle is gone (it died with a previous server process)."""


async def spawn(argv: list[str]) -> str:
    """Start a program; returns its handle."""
    process = await anyio.open_process(argv, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    handle = uuid.uuid4().hex
    _PROGRAMS[handle] = (process, bytearray())
    return handle


async def read_lines(handle: str) -> list[str] | None:
    """The next lines the program printed (at least one), or None once its output ended."""
    try:
        process, pending = _PROGRAMS[handle]
    except KeyError:
        raise SourceLost(f"no program {handle}") from None
    assert process.stdout is not None
    while True:
        try:
            pending += await process.stdout.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            rest, pending[:] = pending.decode(), b""
            return [rest] if rest else None
        *lines, tail = pending.split(b"\n")
        if lines:
            pending[:] = tail
            return [line.decode().rstrip("\r") for line in lines]


async def stop(handle: str) -> int | None:
    """Stop the program if it still runs; returns its exit status."""
    entry = _PROGRAMS.pop(handle, None)
    if entry is None:
        return None
    process = entry[0]
    if process.returncode is None:
        process.terminate()
    await process.aclose()
    return process.returncode


# -- production handlers -------------------------------------------------------------------


def contacts(url: str) -> Handler:
    """`SaveContacts` as an upsert into the `contacts` table of the database at `url` (an
    SQLAlchemy async URL, SQLite or PostgreSQL; an upsert by id: saving a batch again after a
    crash changes nothing)."""
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

    async def save_contacts(effect: SaveContacts) -> int:
        await create_table()
        insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(_CONTACTS)
        rows = [{"id": i, "name": name, "email": email} for i, name, email in effect.rows]
        upsert = insert.on_conflict_do_update(
            index_elements=["id"],
            set_={"name": insert.excluded.name, "email": insert.excluded.email},
        )
        async with engine.begin() as conn:
            await conn.execute(upsert, rows)
        return len(rows)

    return handler({SaveContacts: save_contacts}, name="contacts", external=True)


def worker_handlers() -> Handler:
    """The handlers of a worker process (`python -m effects worker --handlers
    importer:worker_handlers`): `contacts` on the worker's store, `$EFFECTS_DB`."""
    return contacts(os.environ["EFFECTS_DB"])


_TABLES = sa.MetaData()
_CONTACTS = sa.Table(
    "contacts",
    _TABLES,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=False),
)
