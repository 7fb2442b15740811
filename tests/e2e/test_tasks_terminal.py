"""examples/tasks/cli.py: the import job in a terminal, one command, durable across Ctrl-C."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from e2e import ROOT

CLI = ROOT / "examples" / "tasks" / "cli.py"


def command(db: Path, rows: int, speed: int) -> list[str]:
    return [sys.executable, str(CLI), "--rows", str(rows), "--speed", str(speed), "--db", str(db)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}


def saved(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("select count(*) from contacts").fetchone()
    return int(count)


def test_an_import_shows_its_tree_as_text_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    done = subprocess.run(
        command(db, 26, 5000), env=env(), capture_output=True, text=True, timeout=45
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Not a terminal: plain text, one line per change, in the order things happened.
    for expected in (
        "▸ Download contacts.csv",
        "✓ Download contacts.csv",
        "▸ Import",
        "  ▸ Validate",
        "  ✓ Validate",
        "  ▸ Save",
        "  ✓ Save",
        "✓ Import",
    ):
        assert expected in lines
    assert lines.index("✓ Download contacts.csv") < lines.index("▸ Import")
    assert "  | 26,User 26,user26-at-example.com" in lines
    assert "    | rejected row 13: 'user13-at-example.com' is not an email address" in lines
    assert lines[-1] == "24 contacts imported, 2 rejected"
    assert "\x1b" not in done.stdout
    assert saved(db) == 24


def test_ctrl_c_then_the_same_command_continues_the_import(tmp_path: Path) -> None:
    """Interrupted mid-download, the command exits 130; run again, it first finishes the
    interrupted import (durable, same file), then runs the new one."""
    db = tmp_path / "runs.db"
    proc = subprocess.Popen(
        command(db, 60, 40), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:  # the download has begun: its first rows are on screen
        if "5,User 5" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in err
    with sqlite3.connect(db) as conn:
        statuses = [s for (s,) in conn.execute("select status from effects_runs")]
    assert statuses == ["running"]

    again = subprocess.run(
        command(db, 3, 5000), env=env(), capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert any(
        line.startswith("continued the interrupted import") and line.endswith(": done")
        for line in again.stdout.splitlines()
    ), again.stdout
    with sqlite3.connect(db) as conn:
        statuses = [s for (s,) in conn.execute("select status from effects_runs")]
    assert statuses == ["done", "done"]
    assert saved(db) == 56  # rows 1-60 less the 4 rejected; the second import upserts 1-3
