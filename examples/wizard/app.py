"""The onboarding wizard, served live and durable on SQLite or PostgreSQL.

    python examples/wizard/app.py                 # http://127.0.0.1:8000
    python examples/wizard/app.py --port 8001 --db /tmp/onboarding.db
    python examples/wizard/app.py --url postgresql+asyncpg://app@db/onboarding

Start a wizard, answer a step or two, stop the server (Ctrl-C), start it again and reload the
page: you are at the same step, with your answers. Runs and users live in the SQLite file
(`--db`, default `runs.db` next to this file) or in the database at `--url`, which several
server processes can share behind a load balancer (docs/live/deployment.md, `bash
scripts/cluster`). The session secret comes from `$LIVE_SECRET` or is generated once and kept
in a file (next to the database, or next to this file with `--url`), so sessions survive
restarts and every process on the machine shares it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from onboarding import onboarding, users
from starlette.applications import Starlette

from bridges.live import GcTuning, persistent_secret, wizard_app
from effects import EventAccumulator

HERE = Path(__file__).resolve().parent


def announce(event: object) -> None:
    """Where domain events go in this demo: the server's console."""
    print(f"event: {event}", flush=True)


def build(
    url: str,
    secret: str,
    *,
    owner: str | None = None,
    lease: float = 30.0,
    gc: GcTuning | None = None,
) -> Starlette:
    """The wizard app, with its runs and users in the database at `url` (SQLAlchemy async).
    `owner` names this process for run leases (default: unique per process); `gc` tunes the
    garbage collector for many live sessions (`main` passes `GcTuning()`)."""
    return wizard_app(
        onboarding,
        secret=secret,
        url=url,
        handlers=[users(url), EventAccumulator(on_event=announce)],
        title="Onboarding",
        template_dirs=[HERE / "templates"],
        templates={"index": "start.html", "done": "welcome.html"},
        owner=owner,
        lease=lease,
        gc=gc,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="The durable onboarding wizard.")
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
        "--no-gc-tuning",
        action="store_true",
        help="leave the garbage collector at the interpreter's defaults (the server freezes "
        "what start-up created and raises the collection thresholds otherwise)",
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
        owner = args.owner or f"onboarding:{db}"
    gc = None if args.no_gc_tuning else GcTuning()
    app = build(url, persistent_secret(secret_file), owner=owner, lease=args.lease, gc=gc)
    print(f"Onboarding wizard: http://{args.host}:{args.port}  (runs in {where_text})", flush=True)
    # Live streams never end by themselves: bound the graceful shutdown, clients reconnect.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
