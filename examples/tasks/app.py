"""An import job with a live task tree, shared with every open tab.

    python examples/tasks/app.py                  # http://127.0.0.1:8000
    python examples/tasks/app.py --url postgresql+asyncpg://app@db/imports

Start an import, then open the page in another browser: both see the same tree, progress bars
and output. Only the person who started a run may cancel it; cancelling stops the source
program too. Runs and the imported contacts live in the SQLite file (`--db`) or in the database
at `--url`, which several server processes can share (docs/live/deployment.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from importer import ImportOptions, contacts, import_contacts
from starlette.applications import Starlette

from bridges.live import persistent_secret, progress_app

HERE = Path(__file__).resolve().parent


def build(
    url: str,
    secret: str,
    *,
    owner: str | None = None,
    lease: float = 30.0,
    queue: str | None = None,
) -> Starlette:
    """The app: `/` starts imports and lists every run, `/runs/{id}` shows one to everyone.
    Runs and contacts live in the database at `url`; `owner` names this process for run
    leases (default: unique per process). With a `queue`, imports are enqueued on it and
    run by workers (`python -m effects worker`, see `importer.worker_handlers`)."""
    return progress_app(
        import_contacts,
        secret=secret,
        url=url,
        handlers=contacts(url),
        start_input=ImportOptions,
        title="Imports",
        owner=owner,
        lease=lease,
        queue=queue,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="An import job with a live task tree.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="the SQLite file (default: runs.db here)")
    where.add_argument("--url", help="an SQLAlchemy async URL (postgresql+asyncpg://...)")
    parser.add_argument(
        "--owner",
        help="this process's name for run leases; two live processes never share one "
        "(default: with --db, one name per SQLite file, so a restarted server takes its runs "
        "back at once; with --url, unique per process)",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=30.0,
        help="seconds before a dead process's runs are taken over by another (default 30)",
    )
    parser.add_argument(
        "--queue",
        help="enqueue imports on this durable queue for workers instead of running them here: "
        "EFFECTS_DB=URL PYTHONPATH=examples/tasks python -m effects worker --import importer "
        "--handlers importer:worker_handlers --queue NAME",
    )
    args = parser.parse_args()
    if args.url:
        url, secret_file, where_text = args.url, HERE / "live.secret", args.url.split("@")[-1]
        owner = args.owner
    else:
        db: Path = (args.db or HERE / "runs.db").resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        url, secret_file, where_text = f"sqlite+aiosqlite:///{db}", db.with_suffix(".secret"), db
        # One server per SQLite file: a stable owner lets a restart take back at once the runs
        # a killed server left mid-step (a second live server on the file refuses to start).
        owner = args.owner or f"imports:{db}"
    secret = persistent_secret(secret_file)
    app = build(url, secret, owner=owner, lease=args.lease, queue=args.queue)
    print(f"Imports: http://{args.host}:{args.port}  (runs in {where_text})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
