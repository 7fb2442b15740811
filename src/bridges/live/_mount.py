"""`mounted_lifespans`: run the lifespans of the apps mounted inside a Starlette or FastAPI app.

ASGI servers send lifespan events to the outermost application only, and Starlette's `Mount`
does not pass them on: a live app mounted with `Mount("/signup", wizard_app(...))` never starts
its task group, its durable runner or its janitor, and every page answers 500. Starting them
lazily at the first request is not possible with structured concurrency (nothing outlives the
request that would start them), so the parent app enters them in its own lifespan::

    app = FastAPI(lifespan=mounted_lifespans)
    app.mount("/signup", wizard_app(onboarding, secret=SECRET, url=URL))

or, next to a lifespan of its own::

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mounted_lifespans(app):
            yield
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Host, Mount, Router


@asynccontextmanager
async def mounted_lifespans(app: Any) -> AsyncIterator[None]:
    """Enter the lifespan of every Starlette (or FastAPI) application mounted in `app` (through
    `Mount` or `Host`, also inside a `Mount(routes=[...])`), in route order; leave them in the
    reverse order. Use it as the parent's `lifespan=`, or inside the parent's own lifespan.

    A sub-application wrapped in a middleware before it is mounted is not found: mount the
    application itself and add the middleware to the parent."""
    async with AsyncExitStack() as stack:
        for sub in _mounted_apps(_routes_of(app)):
            # A sub-application's lifespan state (if it yields one) belongs to its own scope;
            # the parent's requests never see it, so it is dropped here.
            await stack.enter_async_context(sub.router.lifespan_context(sub))
        yield


def _routes_of(app: Any) -> list[BaseRoute]:
    routes = getattr(app, "routes", None)
    return list(routes) if routes is not None else []


def _mounted_apps(routes: list[BaseRoute]) -> Iterator[Starlette]:
    for route in routes:
        if not isinstance(route, Mount | Host):
            continue
        sub = route.app
        if isinstance(sub, Starlette):
            # Its own lifespan is in charge of what is mounted inside it (it may be
            # `mounted_lifespans` too).
            yield sub
        elif isinstance(sub, Router):
            # `Mount("/x", routes=[...])`: a plain router, with no lifespan of its own.
            yield from _mounted_apps(list(sub.routes))
