"""A computation whose effects carry a set and callables of every kind (a partial, a lambda, a
closure, a bound method), shared by the identity tests and their worker processes (both import
it by this name, so the logged identities match).

    python identity_flows.py DB start|start-tagged RUN_ID TAG... | resume RUN_ID

prints one JSON line: the run's status, or the error that stopped the action.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from effects import Call, Effect, EffectsError, Yield, computation, handler


def send(user: str) -> str:
    """A named, module-level function."""
    return f"sent to {user}"


def make(user: str) -> Callable[[], str]:
    """A nested function closing over `user`."""

    def notify() -> str:
        return f"notified {user}"

    return notify


@dataclass
class Greeter:
    """An object with a JSON form: its bound methods are identified with it."""

    name: str

    def greet(self) -> str:
        return f"hello {self.name}"


class Label(Effect[None]):
    """An effect whose argument is a set."""

    tags: frozenset[str]


labels = handler({Label: lambda e: None})


@computation(name="identity_flow", version=1)
def flow(tags: list[str], user: str) -> Generator[Any, Any, str]:
    """Every kind of argument whose identity is at stake, then a pending Yield."""
    yield Label(frozenset(tags))
    yield Call(partial(send, user))
    # The set constant compiles to a frozenset in the lambda's code: its digest must not
    # depend on the hash seed either.
    yield Call(lambda: send(user) if user in {"alice", "bob", "carol", "dave", "eve"} else "")
    yield Call(make(user))
    yield Call(Greeter(user).greet)
    answer = yield Yield("ok?")
    return f"{answer}"


@computation(name="identity_tagged", version=1)
def tagged(tags: set[str]) -> Generator[Any, Any, str]:
    """A set as a computation argument."""
    answer = yield Yield(f"{len(tags)} tags?")
    return f"{answer}"


async def main(argv: list[str]) -> dict[str, Any]:
    from effects.durable import DurableRunner

    db, action, run_id, *tags = argv
    async with DurableRunner(db, handlers=labels) as runner:
        try:
            if action == "start":
                run = await runner.start(flow(tags, "alice"), run_id=run_id)
            elif action == "start-tagged":
                # Starting again with the id of an existing run of the same arguments is a
                # no-op that returns it.
                run = await runner.start(tagged(set(tags)), run_id=run_id)
            else:
                run = await runner.resume(run_id, "yes")
        except EffectsError as err:
            return {"error": type(err).__name__, "message": str(err)}
        return {"status": run.status.value, "prompt": run.prompt}


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, sys.argv[1:], backend="asyncio")), flush=True)
