"""The onboarding wizard (examples/wizard) with the JSON API mounted at /api: the server the
TypeScript client's tests and the React page talk to.

    python tests/api/wizard_api.py --port P --url sqlite+aiosqlite:///runs.db [--page DIR]

Callers: the pages' session cookie (the React page, served from `--page` at /page/), or bearer
tokens `token-<user>` for user `<user>` (node's tests). `WIZARD` declares the wizard's prompt
models, from which `npm run gen` makes the client's test types.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "wizard"))

from onboarding import Contact, Name, PlanChoice, onboarding, users  # noqa: E402

from bridges.api import ApiComputation, api_app  # noqa: E402
from bridges.live import run_app  # noqa: E402
from effects import EventAccumulator  # noqa: E402

SECRET = "test-secret-of-the-json-api-0123456789"
WIZARD = ApiComputation(onboarding, prompts=[Name, Contact, PlanChoice])
COMPUTATIONS = [WIZARD]


def verify(token: str) -> str | None:
    """Test tokens: `token-<user>` is user `<user>`."""
    user = token.removeprefix("token-")
    return user if user != token and user.isalnum() else None


def build(url: str, *, page: Path | None = None, owner: str | None = None) -> Starlette:
    """The wizard's pages at /, its JSON API at /api, the React test page at /page/."""
    live = run_app(
        onboarding,
        secret=SECRET,
        url=url,
        # The example's handlers (examples/wizard/app.py builds a wizard_app with the same).
        handlers=[users(url), EventAccumulator(on_event=lambda event: print(event, flush=True))],
        title="Onboarding",
        owner=owner,
        lease=5.0,
    )
    config = live.state["runs"]
    api = api_app(config.the_runner, computations=COMPUTATIONS, secret=SECRET, bearer=verify)
    live.route(Mount("/api", app=api))
    if page is not None:
        live.route(Mount("/page", app=StaticFiles(directory=page, html=True)))
    return live.build()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--page", type=Path)
    parser.add_argument("--owner")
    args = parser.parse_args()
    app = build(args.url, page=args.page, owner=args.owner)
    # Info level: the tests wait for uvicorn's "running on" line.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
