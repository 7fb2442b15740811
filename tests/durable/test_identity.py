"""The identity of effect arguments: sets are stored in one order whatever the hash seed,
callables are identified by what they do, and logs written in the previous form still replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from effects import Call, DivergenceError, Done, Suspend, Yield, computation, start, with_handler
from effects.durable import EffectLogger, Log

WORKERS = Path(__file__).parent / "workers"
LEGACY_LOG = Path(__file__).parent / "data" / "identity_log_v0.json"
TAGS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"]


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(WORKERS))
    import identity_flows

    return identity_flows


def _python(seed: int, *code_and_args: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    env["PYTHONPATH"] = os.pathsep.join([str(WORKERS), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, *code_and_args], env=env, capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_hash_seeds_order_the_set_differently() -> None:
    # The premise of the next test: without canonical sorting the two processes would store
    # the set in different orders.
    code = f"print(list(frozenset({TAGS!r})))"
    assert _python(1, "-c", code) != _python(2, "-c", code)


def test_a_run_started_under_one_hash_seed_resumes_under_another(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    script = str(WORKERS / "identity_flows.py")
    started = json.loads(_python(1, script, db, "start", "r1", *TAGS))
    assert started == {"status": "suspended", "prompt": "ok?"}
    # The process that resumes hashes strings differently: the replay must still match the
    # set argument, the partial, the lambda (whose code holds a set constant), the closure
    # and the bound method recorded by the first one.
    resumed = json.loads(_python(2, script, db, "resume", "r1"))
    assert resumed == {"status": "done", "prompt": None}


def test_starting_a_run_again_with_a_set_argument_under_another_hash_seed(
    tmp_path: Path,
) -> None:
    # Stored arguments are compared as text: the set must be stored in one order.
    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    script = str(WORKERS / "identity_flows.py")
    first = json.loads(_python(1, script, db, "start-tagged", "t1", *TAGS))
    again = json.loads(_python(2, script, db, "start-tagged", "t1", *TAGS))
    assert first == again == {"status": "suspended", "prompt": f"{len(TAGS)} tags?"}


def _record(comp: Any, *handlers: Any) -> Log:
    out = start(with_handler(comp, EffectLogger()), *handlers)
    assert type(out) is Suspend
    log: Log = out.data[EffectLogger]
    return log


def _replay(log: Log, comp: Any, *handlers: Any) -> Any:
    return start(with_handler(comp, EffectLogger(log)), *handlers)


@computation
def calls(fn: Callable[[], Any]) -> Generator[Any, Any, Any]:
    result = yield Call(fn)
    yield Call(len, "abc")  # a builtin keeps its plain name
    return (yield Call(lambda: result))


def out_log(fn: Callable[[], Any]) -> Log:
    logger = EffectLogger()
    start(with_handler(calls(fn), logger))
    return logger.log


def _diverges(recorded: Callable[[], Any], replayed: Callable[[], Any]) -> bool:
    log = out_log(recorded)
    out = start(with_handler(calls(replayed), EffectLogger(log)))
    if type(out) is Done:
        return False
    assert isinstance(out.error, DivergenceError), out  # type: ignore[union-attr]
    assert out.error.position == 0  # type: ignore[union-attr]
    return True


def send(user: str) -> str:
    return f"sent to {user}"


def test_a_partial_is_identified_by_its_function_and_arguments() -> None:
    assert _diverges(partial(send, "alice"), partial(send, "mallory"))
    assert _diverges(partial(send, user="alice"), partial(send, user="mallory"))
    assert not _diverges(partial(send, "alice"), partial(send, "alice"))


def test_a_lambda_is_identified_by_its_code_and_closure() -> None:
    def lambdas(user: str) -> tuple[Callable[[], str], Callable[[], str]]:
        # Two lambdas defined in the same place share a qualified name: only their code
        # tells them apart.
        return (lambda: send(user)), (lambda: send("mallory"))

    a, b = lambdas("alice")
    assert a.__qualname__ == b.__qualname__
    assert _diverges(a, b)
    assert _diverges(lambdas("alice")[0], lambdas("mallory")[0])
    assert not _diverges(lambdas("alice")[0], lambdas("alice")[0])


def make(user: str, *, loud: bool = False) -> Callable[[], str]:
    def notify() -> str:
        return f"notified {user}" + ("!" if loud else "")

    return notify


def with_default(user: str) -> Callable[..., str]:
    def notify(who: str = user) -> str:
        return f"notified {who}"

    return notify


def test_a_nested_function_is_identified_by_its_closure_and_defaults() -> None:
    assert _diverges(make("alice"), make("mallory"))
    assert _diverges(make("alice"), make("alice", loud=True))
    assert _diverges(with_default("alice"), with_default("mallory"))
    assert not _diverges(make("alice"), make("alice"))


@dataclass
class Greeter:
    name: str

    def greet(self) -> str:
        return f"hello {self.name}"


class Opaque:
    def __init__(self, name: str) -> None:
        self.name = name

    def greet(self) -> str:
        return f"hello {self.name}"


def test_a_bound_method_is_identified_with_its_object_when_that_has_a_json_form() -> None:
    assert _diverges(Greeter("alice").greet, Greeter("mallory").greet)
    assert not _diverges(Greeter("alice").greet, Greeter("alice").greet)
    # No JSON form: the method's name only (as before), never a refusal.
    assert not _diverges(Opaque("alice").greet, Opaque("mallory").greet)


def test_a_recursive_closure_is_identified_without_recursing_forever() -> None:
    def outer(user: str) -> Callable[[int], str]:
        def again(n: int) -> str:
            return user if n == 0 else again(n - 1)

        return again

    assert _diverges(partial(outer("alice"), 1), partial(outer("mallory"), 1))


def ready() -> str:
    return "ready"


def test_named_functions_keep_the_previous_identity() -> None:
    # A module-level function (and a builtin) is still logged by its name alone: logs that
    # only call named functions are byte for byte what the previous version wrote.
    log = out_log(ready)
    assert log.entries[0].args["fn"] == f"{__name__}.ready"
    assert log.entries[1].args["fn"] == "builtins.len"


def test_a_log_written_by_the_previous_version_replays_unchanged_code(flows: Any) -> None:
    # Recorded by the previous release (callables by name only, `partial(name)`): the same
    # code replays it to its pending Yield and goes on live.
    legacy = Log.model_validate_json(LEGACY_LOG.read_text())
    assert legacy.entries[1].args["fn"] == "partial(identity_flows.send)"
    out = _replay(legacy, flows.flow(["x"], "alice"), flows.labels)
    assert type(out) is Suspend
    assert out.value == "ok?"
    assert out.resume("yes") == Done("yes")


def test_a_log_without_entry_times_replays_and_keeps_them_unknown(flows: Any) -> None:
    # The previous release recorded no times: its entries replay as they are (no times
    # invented for them) and the Yield answered now gets both.
    legacy = Log.model_validate_json(LEGACY_LOG.read_text())
    assert all(e.started_at is None and e.ended_at is None for e in legacy.entries)
    logs: list[Log] = []
    out = start(
        with_handler(flows.flow(["x"], "alice"), EffectLogger(legacy, on_log=logs.append)),
        flows.labels,
    )
    assert type(out) is Suspend
    before = time.time()
    assert out.resume("yes") == Done("yes")
    entries = logs[-1].entries
    assert entries[:-1] == legacy.entries[:-1]
    ask = entries[-1]
    assert ask.status == "done"
    assert ask.started_at is not None
    assert ask.ended_at is not None
    assert ask.ended_at >= before


def test_entries_in_the_new_form_are_never_matched_by_the_previous_form(flows: Any) -> None:
    log = _record(flows.flow(["x"], "alice"), flows.labels)
    assert log.entries[1].args["fn"] == {
        "partial": "identity_flows.send",
        "args": ["alice"],
        "kwargs": {},
    }
    out = _replay(log, flows.flow(["x"], "mallory"), flows.labels)
    assert type(out).__name__ == "Throw"
    assert isinstance(out.error, DivergenceError)  # type: ignore[union-attr]
    assert out.error.position == 1  # type: ignore[union-attr]


def test_sets_nested_in_models_and_containers_are_sorted() -> None:
    from pydantic import BaseModel

    from effects.durable._identity import encode

    class Filter(BaseModel):
        tags: set[str]

    value = {"f": Filter(tags={"b", "a", "c"}), "xs": [frozenset({3, 1, 2})], "t": ("z", "y")}
    assert encode(value) == {"f": {"tags": ["a", "b", "c"]}, "xs": [[1, 2, 3]], "t": ["z", "y"]}
    nested = frozenset({frozenset({"b", "a"}), frozenset({"c"})})
    assert encode(nested) == [["a", "b"], ["c"]]


def echo(value: float) -> float:
    return value


@computation(name="identity_float_argument", version=1)
def waits_for(seconds: float) -> Generator[Any, Any, str]:
    yield Call(echo, seconds)  # the argument is part of the Call's identity
    return f"{(yield Yield('go?'))}"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # SQLAlchemy's async drivers
async def test_a_run_started_with_an_int_for_a_float_parameter_resumes(tmp_path: Path) -> None:
    # The store rebuilds `seconds` as a float; the first step must see it as the replays
    # will, or the recorded Call(echo, 3) and the replayed Call(echo, 3.0) differ.
    from effects.durable import DurableRunner

    db = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    async with DurableRunner(db) as runner:
        run = await runner.start(waits_for(3))
    async with DurableRunner(db) as runner:
        run = await runner.resume(run.id, "now")
    assert run.outcome == Done("now")
