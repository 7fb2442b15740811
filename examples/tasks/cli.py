"""The import job in a terminal: the same task tree, progress and output the page shows.

    python examples/tasks/cli.py                      # import 200 contacts into runs.db here
    python examples/tasks/cli.py --rows 50 --speed 500 --db /tmp/imports.db

In a terminal the tree is drawn live with progress bars (rich); piped into a file or a CI log
it is plain text, one line per change. The run is durable, like the web app's: interrupt it
with Ctrl-C and run the command again, and the interrupted import goes on where it was (its
finished batches are not saved twice) before a new one starts.

Exit status: 0 when the import finished, 1 when it failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
from importer import contacts, import_contacts

from bridges.terminal import Style, TerminalView
from effects import Done
from effects.durable import DurableRunner, RunStatus

HERE = Path(__file__).resolve().parent


async def main(rows: int, speed: int, db: Path, style: Style) -> int:
    url = f"sqlite+aiosqlite:///{db}"
    run = None
    with TerminalView(style=style) as view:
        async with DurableRunner(
            url,
            handlers=contacts(url),
            # One command-line importer per file (the web app on the same file has its own).
            owner=f"imports-cli:{db}",
            on_tasks=lambda _run_id, snapshot: view.update(snapshot),
        ) as runner:
            for run in await runner.recover():
                view.write(f"continued the interrupted import {run.id}: {run.status.value}")
            run = await runner.start(import_contacts(rows, speed))
    assert run is not None  # (only an exception leaves the block without it)
    if run.status is RunStatus.DONE and isinstance(run.outcome, Done):
        print(run.outcome.value)
        return 0
    print(f"import {run.id} {run.status.value}: {run.outcome}", file=sys.stderr)
    return 1


def cli() -> None:
    parser = argparse.ArgumentParser(description="Import contacts, shown in the terminal.")
    parser.add_argument("--rows", type=int, default=200, help="how many contacts (default 200)")
    parser.add_argument("--speed", type=int, default=50, help="lines per second the source sends")
    parser.add_argument("--db", type=Path, default=HERE / "runs.db", help="the SQLite file")
    parser.add_argument("--style", choices=["auto", "rich", "plain"], default="auto")
    args = parser.parse_args()
    if not 1 <= args.rows <= 10_000 or not 1 <= args.speed <= 10_000:
        parser.error("--rows and --speed must be between 1 and 10,000")
    try:
        status = anyio.run(main, args.rows, args.speed, args.db.resolve(), args.style)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue the import", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    cli()
