"""The onboarding wizard, served live and durable on SQLite.

    python examples/wizard/app.py                 # http://127.0.0.1:8000
    python examples/wizard/app.py --port 8001 --db /tmp/onboarding.db

Start a wizard, answer a step or two, stop the server (Ctrl-C), start it again and reload the
page: you are at the same step, with your answers. Runs live in the SQLite file (`--db`,
default `runs.db` next to this file); the session secret comes from `$LIVE_SECRET` or is
generated once and kept next to the database, so sessions survive restarts too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from onboarding import onboarding, users
from starlette.applications import Starlette

from bridges.live import persistent_secret, wizard_app
from effects import EventAccumulator

HERE = Path(__file__).resolve().parent



def announce(event: object) -> None:
    """Where domain events go in this demo: the server's console."""
    print(f"event: {event}", flush=True)


def build(db: Path) -> Starlette:
    """The wizard app, with its runs and users in the SQLite file `db`."""
    return wizard_app(
        onboarding,
        secret=persistent_secret(db.with_suffix(".secret")),
        url=f"sqlite+aiosqlite:///{db}",
        handlers=[users(db), EventAccumulator(on_event=announce)],
        title="Onboarding",
        template_dirs=[HERE / "templates"],
        templates={"index": "start.html", "done": "welcome.html"},
        # One server per database in this demo: a stable owner lets a restarted server take
        # back the runs its killed predecessor left mid-step at once.
        owner=f"onboarding:{db}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="The durable onboarding wizard.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--db", type=Path, default=HERE / "runs.db", help="the SQLite file")
    args = parser.parse_args()
    db: Path = args.db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    print(f"Onboarding wizard: http://127.0.0.1:{args.port}  (runs in {db})", flush=True)
    # Live streams never end by themselves: bound the graceful shutdown, clients reconnect.
    uvicorn.run(
        build(db), host="127.0.0.1", port=args.port, access_log=False, timeout_graceful_shutdown=2
    )


if __name__ == "__main__":
    main()
