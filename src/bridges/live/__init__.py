"""The live bridge: Starlette pages that project a run's state as regions.

A page is a set of `id`-keyed regions, each a pure function of its view's state and stamped with
the revision at which it last changed. The page is served as full HTML (it works without
JavaScript), kept current over Server-Sent Events (or an optional WebSocket) with a snapshot on
every connect and patches after, and commanded with POSTs that carry a CSRF token and an
idempotency key. See docs/live/protocol.md for the wire format.

- `wizard_app(computation, secret=..., url=...)`: each `Yield` of a durable computation is a
  page with a generated form; `progress_app(...)`: long work with task trees, progress bars and
  output, shared by every visitor; `run_app(...)` returns the `LiveApp` behind both.
- `model_app(computation, ...)`: a single-model app (one current run, *Run again*);
  `serve_model(...)` serves it from the command line and exits when the run ends.
- `mounted_lifespans`: the parent's `lifespan=` when such an app is mounted in a Starlette or
  FastAPI app (`Mount("/signup", wizard_app(...))`).
- `serve_options(name, description, here=...)`: the command line of an app's server process
  (`--host`, `--port`, `--db` or `--url`, `--owner`, `--lease`), as the examples use it.
- `LiveApp` + `LiveView` (mount / handle_event / handle_info / render) for pages of your own.
- `runs_dashboard(url, authorize=..., secret=...)`: a page for operators over a durable store
  (list and filter runs, read their logs, cancel / resume / fork / retry), closed without an
  authorize hook.
- `Limits`: how many pages the server keeps, for how long, and how many runs a session may
  start per minute (docs/live/limits.md); `GcTuning`: the garbage collector set for a
  server holding many live sessions.
"""

from ._app import LiveApp
from ._dashboard import runs_dashboard
from ._forms import Form, FormField, Option, build_form, parse_form
from ._gc import GcTuning
from ._limits import Limits, RateLimit
from ._model import model_app, model_live_app, serve_model
from ._mount import mounted_lifespans
from ._page import Page
from ._regions import Projection, Region
from ._runs import (
    IndexView,
    Prompt,
    RunChanged,
    RunsConfig,
    RunView,
    TasksChanged,
    progress_app,
    run_app,
    wizard_app,
)
from ._serve import ServeOptions, serve_options
from ._session import Session, Sessions, persistent_secret, same_origin
from ._tasks_view import TasksHub
from ._view import Event, LiveView, NotFound, Reply

__all__ = (
    # apps for durable runs
    "wizard_app",
    "progress_app",
    "run_app",
    "model_app",
    "model_live_app",
    "serve_model",
    "mounted_lifespans",
    "serve_options",
    "ServeOptions",
    "RunView",
    "IndexView",
    "RunsConfig",
    "Prompt",
    "RunChanged",
    "TasksChanged",
    "TasksHub",
    # operators
    "runs_dashboard",
    # pages of your own
    "LiveApp",
    "LiveView",
    "Limits",
    "GcTuning",
    "Page",
    "Event",
    "Reply",
    "NotFound",
    "Session",
    "Sessions",
    "same_origin",
    "persistent_secret",
    # building blocks
    "Projection",
    "Region",
    "Form",
    "FormField",
    "Option",
    "build_form",
    "parse_form",
    "RateLimit",
)
