"""`serve_options`: the server command line the examples share."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bridges.live import serve_options


def test_sqlite_by_default_with_an_owner_per_file(tmp_path: Path) -> None:
    opts = serve_options("demo", "A demo.", here=tmp_path, argv=[])
    db = (tmp_path / "runs.db").resolve()
    assert opts.url == f"sqlite+aiosqlite:///{db}"
    assert opts.owner == f"demo:{db}"
    assert (opts.host, opts.port, opts.lease) == ("127.0.0.1", 8000, 30.0)
    assert opts.secret_file == db.with_suffix(".secret")
    assert opts.store == str(db)
    secret = opts.secret()
    assert secret == opts.secret()  # made once, kept in the file
    assert opts.secret_file.read_text().strip() == secret


def test_a_db_in_a_new_directory_and_an_explicit_owner(tmp_path: Path) -> None:
    db = tmp_path / "new" / "dir" / "x.db"
    opts = serve_options(
        "demo", "A demo.", here=tmp_path, argv=["--db", str(db), "--owner", "me", "--port", "9"]
    )
    assert db.parent.is_dir()
    assert (opts.owner, opts.port) == ("me", 9)


def test_a_url_leaves_the_owner_unique_per_process_and_hides_the_password(
    tmp_path: Path,
) -> None:
    url = "postgresql+asyncpg://app:s3cret@db.internal/onboarding"
    opts = serve_options("demo", "A demo.", here=tmp_path, argv=["--url", url, "--lease", "5"])
    assert (opts.url, opts.owner, opts.lease) == (url, None, 5.0)
    assert opts.store == "db.internal/onboarding"
    assert opts.secret_file == tmp_path / "live.secret"


def test_the_apps_own_options_and_refusals(tmp_path: Path) -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--queue")

    opts = serve_options("demo", "A demo.", here=tmp_path, options=extra, argv=["--queue", "q"])
    assert opts.args.queue == "q"
    with pytest.raises(SystemExit):  # --db and --url exclude each other
        serve_options("demo", "A demo.", here=tmp_path, argv=["--db", "a", "--url", "b"])
