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
from pathlib import Path

from importer import ImportOptions, contacts, import_contacts
from starlette.applications import Starlette

from bridges.live import progress_app, serve_options

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
    def queue_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--queue",
            help="enqueue imports on this durable queue for workers instead of running them "
            "here: EFFECTS_DB=URL PYTHONPATH=examples/tasks python -m effects worker --import "
            "importer --handlers importer:worker_handlers --queue NAME",
        )

    opts = serve_options(
        "imports", "An import job with a live task tree.", here=HERE, options=queue_option
    )
    app = build(opts.url, opts.secret(), owner=opts.owner, lease=opts.lease, queue=opts.args.queue)
    opts.serve(app, "Imports")


if __name__ == "__main__":
    main()
