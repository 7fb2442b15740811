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
from pathlib import Path

from onboarding import onboarding, users
from starlette.applications import Starlette

from bridges.live import GcTuning, serve_options, wizard_app
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
    def gc_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--no-gc-tuning",
            action="store_true",
            help="leave the garbage collector at the interpreter's defaults (the server freezes "
            "what start-up created and raises the collection thresholds otherwise)",
        )

    opts = serve_options(
        "onboarding", "The durable onboarding wizard.", here=HERE, options=gc_option
    )
    gc = None if opts.args.no_gc_tuning else GcTuning()
    app = build(opts.url, opts.secret(), owner=opts.owner, lease=opts.lease, gc=gc)
    opts.serve(app, "Onboarding wizard")


if __name__ == "__main__":
    main()
