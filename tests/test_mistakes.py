"""Mistakes that used to pass silently (or fail far from their cause) get a clear error at the
earliest point, and the EFFECTS_DEBUG mode warns about effects and computations never run."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import effects
from effects import (
    DivergenceError,
    Effect,
    InvalidInput,
    MissingHandlerError,
    State,
    TimeoutError,
    computation,
    handler,
    run,
    with_handler,
)

SRC = Path(effects.__file__).resolve().parent.parent


class Send(Effect[None]):
    to: str


SENDS = handler({Send: lambda e: None})


def test_yielding_a_list_of_effects_says_to_yield_each_or_use_parallel() -> None:
    """Thrown at the yield (catchable there), naming both ways to write it."""

    def notify() -> Generator[Any, Any, str]:
        try:
            yield [Send("ada"), Send("bob")]
        except TypeError as err:
            return str(err)
        return "not raised"

    message = run(notify(), SENDS)
    assert "yielded a list of effects" in message
    assert "for effect in effects: yield effect" in message
    assert "Parallel.all(*effects)" in message

    def tuple_of_effects() -> Generator[Any, Any, None]:
        yield (Send("ada"), Send("bob"))

    with pytest.raises(TypeError, match="yielded a tuple of effects"):
        run(tuple_of_effects(), SENDS)


def test_yielding_none_or_a_coroutine_says_what_to_write() -> None:
    def bare() -> Generator[Any, Any, None]:
        yield

    with pytest.raises(TypeError, match=r"yielded None \(a bare `yield`\?\)"):
        run(bare())

    async def fetch() -> int:
        return 1

    def awaits() -> Generator[Any, Any, None]:
        yield fetch()  # closed by the runner: no "never awaited" warning (warnings are errors)

    with pytest.raises(TypeError, match=r"yield from Call\(async_function"):
        run(awaits())


def test_yielding_a_value_that_is_no_effect_is_a_type_error() -> None:
    def text() -> Generator[Any, Any, None]:
        yield "hello"

    with pytest.raises(TypeError, match=r"yielded 'hello' \(str\), which is not an effect"):
        run(text())


def test_a_value_with_a_handler_for_its_type_is_still_handled() -> None:
    """Any type may have a handler: the new checks run only when the lookup failed."""

    def text() -> Generator[Any, Any, Any]:
        return (yield "hello")

    assert run(text(), handler({str: lambda s: s.upper()})) == "HELLO"


def test_missing_handler_says_how_to_install_one() -> None:
    with pytest.raises(MissingHandlerError) as info:
        run(with_handler(Send("ada"), State(0)))
    message = str(info.value)
    assert message.startswith("no handler for Send(to='ada') (effect type Send); ")
    assert "handlers in scope: State, YieldHandler" in message
    assert "with_handler(comp, handler({Send: lambda effect: ...}))" in message
    assert "run(comp, my_handler)" in message
    assert "@handles(Send)" in message


def test_computation_refuses_async_functions_at_decoration() -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match="cannot decorate the async function"):
        computation(fetch)  # type: ignore[arg-type]


def test_computation_of_a_plain_function_fails_clearly_when_run() -> None:
    """Before: "iter() returned non-iterator of type 'int'", far from the function."""

    @computation
    def total(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError) as info:
        run(total(1, 2))  # type: ignore[arg-type]
    assert "@computation function" in str(info.value)
    assert "total returned 3 (int), not a generator" in str(info.value)


def test_computation_of_a_wrapper_returning_a_computation_runs_it() -> None:
    @computation
    def inner(x: int) -> Generator[Any, Any, int]:
        yield Send("x")
        return x * 2

    @computation
    def wrapper(x: int) -> Generator[Any, Any, int]:
        return inner(x + 1)  # type: ignore[return-value]

    assert run(wrapper(1), SENDS) == 4


def test_public_exceptions_are_named_by_the_public_module() -> None:
    exceptions = [
        obj
        for obj in (getattr(effects, name) for name in effects.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert MissingHandlerError in exceptions
    assert len(exceptions) >= 16
    for cls in exceptions:
        assert cls.__module__ == "effects", cls
        assert pickle.loads(pickle.dumps(cls)) is cls
        assert repr(cls) == f"<class 'effects.{cls.__qualname__}'>"


def test_tracebacks_name_effects_not_the_private_module() -> None:
    with pytest.raises(MissingHandlerError) as info:
        run(Send("ada"))
    text = "".join(traceback.format_exception(info.value))
    assert "effects.MissingHandlerError: no handler for Send" in text
    assert "effects._exceptions" not in text


def test_exceptions_with_extra_arguments_survive_pickling() -> None:
    invalid = pickle.loads(pickle.dumps(InvalidInput("bad age", [{"loc": ("age",)}])))
    assert (str(invalid), invalid.errors) == ("bad age", [{"loc": ("age",)}])
    diverged = pickle.loads(pickle.dumps(DivergenceError("moved", 3, "A()", "B()")))
    assert (str(diverged), diverged.position, diverged.expected, diverged.got) == (
        "moved",
        3,
        "A()",
        "B()",
    )
    timed_out = pickle.loads(pickle.dumps(TimeoutError("late", runner=object())))
    assert (str(timed_out), timed_out.runner) == ("late", None)


DEBUG_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from collections.abc import Generator
    from typing import Any

    from effects import Call, Effect, State, computation, handler, run


    class Ping(Effect[None]):
        pass


    class Send(Effect[None]):
        to: str


    @computation
    def sub(x: int) -> Generator[Any, Any, int]:
        yield State.put(x)
        return x


    def good() -> Generator[Any, Any, int]:
        eff = Send("a")
        yield eff
        eff = Send("b")  # the first one dies here, after it was yielded
        yield eff
        x = yield from State.get()
        yield State.put(x + 1)
        y = yield from sub(2)
        later = sub(3)
        z = yield from later
        assert Send("q") == Send("q")
        str(Send("p"))
        for effect in [Send("l1"), Send("l2")]:
            yield effect
        yield from Ping()
        return x + y + z


    def bad() -> Generator[Any, Any, int]:
        State.put(5)                    # dropped
        sub(4)                          # dropped
        State.get()                     # dropped
        Ping()                          # dropped
        [Send("l1"), Send("l2")]        # dropped
        Call(print, "hi")               # dropped
        yield Send("ok")
        return 1


    handlers = (State(0), handler({Send: lambda e: None, Ping: lambda e: None}))
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["good"] = run(good(), *handlers)
        report["good_warnings"] = [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["bad"] = run(bad(), *handlers)
        report["bad_warnings"] = [
            [w.lineno, w.category.__name__, str(w.message)] for w in caught
        ]
    json.dump(report, sys.stdout)
    """
)


def _run_script(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    script = tmp_path / "script.py"
    script.write_text(DEBUG_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        env={"PYTHONPATH": str(SRC), **env},
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )
    assert done.stderr == ""
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_debug_mode_warns_about_effects_and_computations_never_run(tmp_path: Path) -> None:
    report = _run_script(tmp_path, {"EFFECTS_DEBUG": "1"})
    assert report["good"] == 5
    assert report["good_warnings"] == []  # yielded, stored, compared, printed: no warning
    assert report["bad"] == 1
    warned = report["bad_warnings"]
    assert {category for _, category, _ in warned} == {"RuntimeWarning"}
    dropped = [n for n, line in enumerate(DEBUG_SCRIPT.splitlines(), 1) if "# dropped" in line]
    assert len(dropped) == 6
    put, sub, get, ping, listed, call = dropped
    assert sorted(line for line, _, _ in warned) == [put, sub, get, ping, listed, listed, call]
    messages = {line: message for line, _, message in warned}
    assert messages[put] == (
        "State.put(value=5) was created and dropped without being run: write "
        "`yield State.put(value=5)`, or remove it (EFFECTS_DEBUG is on)"
    )
    assert "write `yield from __main__.sub(4)`" in messages[sub]
    assert "State.get()" in messages[get]
    assert "Ping()" in messages[ping]
    assert "Send(to='l" in messages[listed]
    assert "Call(print, 'hi')" in messages[call]


def test_without_debug_mode_nothing_is_tracked(tmp_path: Path) -> None:
    """Off (the default), effects have no `__del__` and no recording `__init__`."""
    report = _run_script(tmp_path, {})
    assert (report["good"], report["good_warnings"]) == (5, [])
    assert (report["bad"], report["bad_warnings"]) == (1, [])
    # This process runs without EFFECTS_DEBUG: the classes are as fast as before.
    assert not effects._diagnostics.DEBUG
    assert "__del__" not in vars(Effect)
    assert "__del__" not in vars(effects.Comp)
    assert "_note" not in Send.__init__.__code__.co_names
