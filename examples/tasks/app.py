"""An import job with a live task tree, shared with every open tab.

    python examples/tasks/app.py                  # http://127.0.0.1:8000

Start an import, then open the page in another browser: both see the same tree, progress bars
and output. Only the person who started a run may cancel it; cancelling stops the source
program too. Runs and the imported contacts live in the SQLite file (`--db`).
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



def build(db: Path) -> Starlette:
    """The app: `/` starts imports and lists every run, `/runs/{id}` shows one to everyone."""
    return progress_app(
        import_contacts,
        secret=persistent_secret(db.with_suffix(".secret")),
        url=f"sqlite+aiosqlite:///{db}",
        handlers=contacts(db),
        start_input=ImportOptions,
        title="Imports",
        owner=f"imports:{db}",  # one server per database: a restart takes its runs back at once
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="An import job with a live task tree.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--db", type=Path, default=HERE / "runs.db", help="the SQLite file")
    args = parser.parse_args()
    db: Path = args.db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    print(f"Imports: http://127.0.0.1:{args.port}  (runs in {db})", flush=True)
    uvicorn.run(
        build(db), host="127.0.0.1", port=args.port, access_log=False, timeout_graceful_shutdown=2
    )


if __name__ == "__main__":
    main()
