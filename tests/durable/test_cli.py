"""`python -m effects runs list|show|resume|cancel`, run as a subprocess against a real store."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from effects import InvalidInput
from effects.durable import DurableRunner, Run
from effects.durable._cli import main

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


@pytest.fixture
def store(tmp_path: Path, flows: ModuleType) -> tuple[str, list[Run]]:
    """A store with a suspended run of 4 steps and a finished one."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)

    async def setup() -> list[Run]:
        async with DurableRunner(db, handlers=flows.HANDLERS) as runner:
            waiting = await runner.start(flows.flow(4, counter), run_id="waiting")
            done = await runner.start(flows.charge_flow(counter), run_id="paid")
            return [waiting, done]

    return db, anyio.run(setup, backend="asyncio")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "effects", "runs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_list(store: tuple[str, list[Run]]) -> None:
    """`list` prints a table of runs; `--status` filters; `--json` is machine-readable."""
    db, _ = store
    done = cli("list", "--db", db)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "V",
        "STATUS",
        "REV",
        "CREATED",
        "(UTC)",
        "UPDATED",
        "(UTC)",
    ]
    assert [line.split()[:4] for line in lines[1:]] == [  # newest first
        ["paid", "crash.charge", "1", "done"],
        ["waiting", "crash.flow", "1", "suspended"],
    ]
    oldest = cli("list", "--db", db, "--oldest-first").stdout.splitlines()
    assert [line.split()[0] for line in oldest[1:]] == ["waiting", "paid"]
    done = cli("list", "--db", db, "--status", "done", "--json")
    assert done.returncode == 0, done.stderr
    [run] = json.loads(done.stdout)
    assert (run["id"], run["status"], run["result"]) == ("paid", "done", 10)


def test_show(store: tuple[str, list[Run]]) -> None:
    """`show` prints the run and its log, one readable line per entry."""
    db, _ = store
    done = cli("show", "waiting", "--db", db)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "status   suspended (revision" in out
    assert 'prompt   {"ask":"bonus","after":1}' in out
    assert "input    integer" in out
    assert "log (5 entries)" in out
    # Each entry: seq, status, when it started (UTC) and how long it took, the effect.
    times = r"\d\d:\d\d:\d\d\.\d\d\d\s+\d+ms"
    assert re.search(rf'\n    1  done     {times}  Call\(fn="crash_flows.side_effect"', out)
    assert re.search(r"\n    4  pending  \d\d:\d\d:\d\d\.\d\d\d\s+…  Yield\(value=", out)
    assert "  seq  status   started         took  effect" in out

    done = cli("show", "paid", "--db", db, "--json")
    data = json.loads(done.stdout)
    assert data["run"]["result"] == 10
    assert [e["status"] for e in data["log"]["entries"]] == ["done", "done"]


def test_resume_and_cancel(store: tuple[str, list[Run]], flows: ModuleType, tmp_path: Path) -> None:
    """`resume` answers with a JSON value and runs the step; `cancel` cancels; invalid input
    fails without changing the run."""
    db, [waiting, _] = store
    code = ("--import", "crash_flows", "--handlers", "crash_flows:HANDLERS")
    unknown = cli("resume", "waiting", "100", "--db", db)
    assert unknown.returncode == 1
    assert "no computation registered as 'crash.flow'" in unknown.stderr
    bad = cli("resume", "waiting", '"many"', "--db", db, *code)
    assert bad.returncode == 1
    assert "invalid input for int" in bad.stderr
    done = cli("resume", "waiting", "100", "--db", db, *code, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)  # as `show --json` prints it: the run and its log
    run = shown["run"]
    assert (run["status"], run["result"]) == ("done", 0 + 1 + 100 + 2 + 3)
    assert run["revision"] > waiting.revision
    assert shown == json.loads(cli("show", "waiting", "--db", db, "--json").stdout)

    async def another() -> str:
        async with DurableRunner(db, handlers=flows.HANDLERS) as runner:
            return (await runner.start(flows.flow(2, str(tmp_path / "counter.db")))).id

    run_id = anyio.run(another, backend="asyncio")
    done = cli("cancel", run_id, "--db", db, "--reason", "not needed", *code)
    assert done.returncode == 0, done.stderr
    assert "status   cancelled" in done.stdout
    assert 'reason   "not needed"' in done.stdout


def test_errors_exit_with_status_1(store: tuple[str, list[Run]], tmp_path: Path) -> None:
    """Unknown runs, bad values, missing stores and unknown code are reported, not raised."""
    db, _ = store
    for args, message in [
        (["show", "nope", "--db", db], "RunNotFound: no run with id 'nope'"),
        (["resume", "waiting", "not json", "--db", db], "VALUE must be JSON"),
        (["resume", "waiting", "1", "--db", db], "MissingHandlerError: no handler for"),
        (["list", "--db", f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}"], "no store at"),
        (["cancel", "waiting", "--db", db, "--handlers", "nowhere"], "expected MODULE:NAME"),
    ]:
        err = io.StringIO()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stderr", err)
            assert main(["runs", *args], out=io.StringIO()) == 1, args
        assert message in err.getvalue(), (args, err.getvalue())


def test_help_and_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` works; a missing command is a usage error (status 2)."""
    done = cli("--help")
    assert done.returncode == 0
    assert "resume" in done.stdout
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with pytest.raises(SystemExit) as caught:
        main(["runs"])
    assert caught.value.code == 2


def one_line_failure(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """The command failed with `status` and said why in exactly one line, no traceback."""
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_every_failure_is_one_line(store: tuple[str, list[Run]], tmp_path: Path) -> None:
    """Stores that cannot be opened, unknown handlers, bad numbers: exit status 1 (2 for
    usage errors) and one line on stderr, never a traceback."""
    db, _ = store
    path = db.removeprefix("sqlite+aiosqlite:///")
    read_only = f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"
    line = one_line_failure(cli("list", "--db", read_only))
    assert "cannot use the store" in line
    assert "readonly database" in line

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        line = one_line_failure(cli("list", "--db", f"postgresql://u@127.0.0.1:{port}/x"))
    assert line.startswith("error: ConfigurationError: cannot open the store postgresql")
    assert "Connect call failed" in line

    line = one_line_failure(
        cli("resume", "waiting", "1", "--db", db, "--handlers", "crash_flows:missing")
    )
    assert line == "error: ConfigurationError: --handlers 'crash_flows:missing': module " + (
        "'crash_flows' has no 'missing'"
    )

    line = one_line_failure(cli("list", "--db", db, "--limit", "-1"), status=2)
    assert line == "python -m effects runs list: error: argument --limit: -1 is negative " + (
        "(see --help)"
    )
    line = one_line_failure(cli("show", "--db", db), status=2)
    assert "the following arguments are required: run_id" in line


def test_db_accepts_a_path(store: tuple[str, list[Run]], tmp_path: Path) -> None:
    """`--db runs.db` is the SQLite file at that path (relative to the working directory)."""
    assert store[0].endswith(f"{tmp_path}/runs.db")
    done = subprocess.run(
        [sys.executable, "-m", "effects", "runs", "list", "--db", "runs.db", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)] == ["paid", "waiting"]


def test_an_answer_that_cannot_be_stored_is_invalid_input(
    store: tuple[str, list[Run]], flows: ModuleType
) -> None:
    """A text with a lone surrogate (valid JSON, no UTF-8 form) is refused as
    `InvalidInput`, by the runner and through the CLI; the run stays where it was."""
    db, _ = store

    async def asked() -> Run:
        async with DurableRunner(db, handlers=flows.HANDLERS) as runner:
            run = await runner.start(flows.name_flow(), run_id="ask")
            with pytest.raises(InvalidInput, match="lone surrogate"):
                await runner.resume(run.id, "\ud800")
            return run

    run = anyio.run(asked, backend="asyncio")
    code = ("--import", "crash_flows", "--handlers", "crash_flows:HANDLERS")
    line = one_line_failure(cli("resume", "ask", '"\\ud800"', "--db", db, *code))
    assert line.startswith("error: InvalidInput: run 'ask': the answer: cannot be stored")
    after = json.loads(cli("show", "ask", "--db", db, "--json").stdout)["run"]
    assert (after["status"], after["revision"]) == ("suspended", run.revision)


def test_id_prefixes_since_and_json_everywhere(
    store: tuple[str, list[Run]], flows: ModuleType, tmp_path: Path
) -> None:
    """Every command takes an id prefix that matches one run (an ambiguous one is a usage
    error, status 2, one line); `list --since` takes a time or a duration ago; `unpark` and
    `cancel` print JSON like `show`."""
    db, _ = store
    code = ("--import", "crash_flows", "--handlers", "crash_flows:HANDLERS")

    async def more() -> None:
        async with DurableRunner(db, handlers=flows.HANDLERS) as runner:
            await runner.start(flows.name_flow(), run_id="wait-2")

    anyio.run(more, backend="asyncio")
    shown = cli("show", "wai", "--db", db)
    line = one_line_failure(shown, status=2)
    assert line == (
        "error: run id prefix 'wai' is ambiguous: it starts wait-2, waiting; give more of the id"
    )
    exact = cli("show", "pai", "--db", db, "--json")
    assert exact.returncode == 0, exact.stderr
    assert json.loads(exact.stdout)["run"]["id"] == "paid"
    line = one_line_failure(cli("show", "zz", "--db", db))
    assert line == "error: RunNotFound: no run with id 'zz' or an id starting with it"
    # LIKE wildcards in a prefix are literal.
    one_line_failure(cli("show", "w%", "--db", db))

    everything = json.loads(cli("list", "--db", db, "--since", "1h", "--json").stdout)
    assert [r["id"] for r in everything] == ["wait-2", "paid", "waiting"]
    created = everything[0]["created_at"]  # ISO with an offset: accepted as is
    later = json.loads(cli("list", "--db", db, "--since", created, "--json").stdout)
    assert [r["id"] for r in later] == ["wait-2"]
    assert cli("list", "--db", db, "--since", "2999-01-01").stdout.strip().endswith("(no runs)")
    line = one_line_failure(cli("list", "--db", db, "--since", "yesterday"), status=2)
    assert "'yesterday' is neither a time (2026-11-22T10:00) nor a duration" in line

    cancelled = cli("cancel", "wait-", "--db", db, "--json", *code)
    assert cancelled.returncode == 0, cancelled.stderr
    data = json.loads(cancelled.stdout)
    assert (data["run"]["id"], data["run"]["status"]) == ("wait-2", "cancelled")
    assert data["log"]["entries"][-1]["status"] == "error"
    unparked = cli("unpark", "paid", "--db", db, "--json")
    assert json.loads(unparked.stdout)["run"]["status"] == "done"


def test_worker_json(store: tuple[str, list[Run]]) -> None:
    """`worker --json` says it serves, and that it stopped, as JSON lines."""
    db, _ = store
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), *sys.path])}
    command = ("worker", "--db", db, "--queue", "q1", "--json", "--owner", "w-json")
    process = subprocess.Popen(
        [sys.executable, "-m", "effects", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first == {"worker": "w-json", "serving": ["q1"]}
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert json.loads(out) == {"worker": "w-json", "stopped": True}


def test_runner_list_filters(store: tuple[str, list[Run]], flows: ModuleType) -> None:
    """`DurableRunner.list`: newest first, created since, by id prefix (LIKE wildcards taken
    literally), paged with limit and offset."""
    db, [_, paid] = store

    async def listed() -> None:
        async with DurableRunner(db, handlers=flows.HANDLERS) as runner:
            await runner.start(flows.name_flow(), run_id="wa%t")

            async def ids(**options: Any) -> list[str]:
                return [r.id for r in await runner.list(**options)]

            assert await ids() == ["waiting", "paid", "wa%t"]
            assert await ids(newest_first=True) == ["wa%t", "paid", "waiting"]
            assert await ids(since=paid.created_at) == ["paid", "wa%t"]
            assert await ids(since=paid.created_at.timestamp() + 3600) == []
            assert await ids(id_prefix="wa") == ["waiting", "wa%t"]
            assert await ids(id_prefix="wa%") == ["wa%t"]
            assert await ids(newest_first=True, limit=1, offset=1) == ["paid"]

    anyio.run(listed, backend="asyncio")
