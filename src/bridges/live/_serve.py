"""`serve_options`: the command line of a live app's server process, as the examples and
docs/live/deployment.md use it (`--host`, `--port`, `--db` or `--url`, `--owner`, `--lease`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from ._session import persistent_secret


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """A server process's options, read by `serve_options`.

    - `url`: the store's SQLAlchemy URL (`--url`, or the SQLite file `--db` as a URL);
    - `owner`: the process's lease owner (`--owner`; with `--db` by default one name per
      SQLite file, so a restarted server takes back at once the runs a killed one left
      mid-step; with `--url` None, unique per process);
    - `lease`: seconds before a dead process's runs are taken over (`--lease`, default 30);
    - `secret_file`: where `secret()` keeps the app's secret (next to the SQLite file, or in
      the app's directory with `--url`);
    - `store`: the store for a start-up line (the file, or the URL's part after `@`: no
      password);
    - `args`: every option parsed, the app's own ones too.
    """

    host: str
    port: int
    url: str
    owner: str | None
    lease: float
    secret_file: Path
    store: str
    args: argparse.Namespace

    def secret(self) -> str:
        """The app's secret, made once and kept in `secret_file` (see `persistent_secret`)."""
        return persistent_secret(self.secret_file)

    def serve(self, app: Any, title: str) -> None:
        """Print where `title` is served and serve `app` with uvicorn until Ctrl-C. Live
        streams never end by themselves: the graceful shutdown is bounded (2 s) and browsers
        reconnect to the next process."""
        print(f"{title}: http://{self.host}:{self.port}  (runs in {self.store})", flush=True)
        uvicorn.run(
            app, host=self.host, port=self.port, access_log=False, timeout_graceful_shutdown=2
        )


def serve_options(
    name: str,
    description: str,
    *,
    here: Path,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> ServeOptions:
    """Parse a live app server's command line: `--host` (127.0.0.1), `--port` (8000, or the
    `PORT` environment variable), `--db PATH` (SQLite; default `here/runs.db`) or `--url URL`,
    `--owner`, `--lease`, and the app's own options added by `options(parser)`. `name` makes
    the default owner with `--db` (`"{name}:{file}"`). The SQLite file's directory is created.
    """
    parser = argparse.ArgumentParser(description=description)
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
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    if args.url:
        url, secret_file, store = args.url, here / "live.secret", args.url.split("@")[-1]
        owner = args.owner
    else:
        db: Path = (args.db or here / "runs.db").resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        url, secret_file, store = f"sqlite+aiosqlite:///{db}", db.with_suffix(".secret"), str(db)
        # One server per SQLite file: a stable owner lets a restart take back at once the runs
        # a killed server left mid-step (a second live server on the file refuses to start).
        owner = args.owner or f"{name}:{db}"
    return ServeOptions(
        host=args.host,
        port=args.port,
        url=url,
        owner=owner,
        lease=args.lease,
        secret_file=secret_file,
        store=store,
        args=args,
    )
