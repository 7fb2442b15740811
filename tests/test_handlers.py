"""Handlers, scopes and stacks: shadowing, per-scope state, hooks, computations as results."""

from __future__ import annotations

import sys
from collections.abc import Generator
from types import GeneratorType
from typing import Any

import anyio.lowlevel
import pytest

from effects import (
    Done,
    Effect,
    Handler,
    InScope,
    Reader,
    Stack,
    State,
    Suspend,
    Throw,
    Yield,
    arun,
    catch,
    handler,
    handles,
    run,
    start,
    with_handler,
)


class Ask(Effect[str]):
    question: str


class Log(Effect[None]):
    line: str


class Base(Effect[str]):
    pass


class Derived(Base):
    pass


def test_function_handler() -> None:
    """handler({Type: fn}) answers with fn's return value."""
    assert run(Ask("q"), handler({Ask: lambda e: e.question + "!"})) == "q!"


def test_inner_shadows_outer_and_is_restored() -> None:
    """An inner installation shadows the outer one for its extent only."""
    outer = handler({Ask: lambda e: "outer"})
    inner = handler({Ask: lambda e: "inner"})

    def comp() -> Generator[Any, Any, list[str]]:
        a = yield Ask("")
        b = yield from with_handler(Ask(""), inner)
        c = yield Ask("")
        return [a, b, c]

    assert run(comp(), outer) == ["outer", "inner", "outer"]


def test_shadowing_restored_after_throw() -> None:
    """After an inner scope raises, the outer handler is in effect again."""
    outer = handler({Ask: lambda e: "outer"})

    def failing() -> Generator[Any, Any, str]:
        yield Ask("")
        raise RuntimeError("x")

    def comp() -> Generator[Any, Any, str]:
        try:
            yield from with_handler(failing(), handler({Ask: lambda e: "inner"}))
        except RuntimeError:
            pass
        return (yield Ask(""))

    assert run(comp(), outer) == "outer"


def test_first_listed_is_innermost() -> None:
    """with_handler(c, a, b) is with_handler(with_handler(c, a), b), for run and Stack too."""
    a = handler({Ask: lambda e: "a"})
    b = handler({Ask: lambda e: "b"})
    assert run(Ask(""), a, b) == "a"
    assert run(with_handler(Ask(""), a, b)) == "a"
    assert run(Ask(""), Stack(b) + Stack(a)) == "b"
    assert run(Stack(a, b)(Ask(""))) == "a"


def test_stack_composition() -> None:
    """Stacks flatten and compose with +, first listed innermost."""
    s = Stack(State(1)) + Stack(Reader("r"))
    assert len(s) == 2

    def comp() -> Generator[Any, Any, tuple[Any, Any]]:
        return ((yield State.get()), (yield Reader.ask()))

    assert run(comp(), s) == (1, "r")


class Counter(Handler):
    """Counts Log effects per scope and returns (result, count) on exit."""

    def __init__(self) -> None:
        self.count = 0
        self.cleaned: list[int] = []

    @handles(Log)
    def log(self, effect: Log) -> None:
        self.count += 1

    def output(self, value: Any) -> Any:
        return (value, self.count)

    def cleanup(self) -> None:
        self.cleaned.append(self.count)

    def decorate(self, data: dict[Any, Any]) -> None:
        data[Counter] = self.count


def test_per_scope_state_and_output() -> None:
    """Each installation has its own state; output transforms the scope's result."""
    h = Counter()

    def comp() -> Generator[Any, Any, str]:
        yield Log("a")
        yield Log("b")
        return "done"

    assert run(comp(), h) == ("done", 2)
    assert run(comp(), h) == ("done", 2)  # a fresh count per run
    assert h.count == 0


def test_cleanup_on_every_exit_path() -> None:
    """cleanup runs on return, on exception and on cancellation."""
    h = Counter()
    h.cleaned = shared = []

    def ok() -> Generator[Any, Any, str]:
        yield Log("")
        return "x"

    def bad() -> Generator[Any, Any, str]:
        yield Log("")
        raise ValueError

    def waits() -> Generator[Any, Any, str]:
        yield Log("")
        yield Yield("?")
        return "x"

    run(ok(), h)
    assert isinstance(start(bad(), h), Throw)
    s = start(waits(), h)
    assert isinstance(s, Suspend)
    s.cancel("stop")
    assert shared == [1, 1, 1]


def test_decorations_on_suspend() -> None:
    """Handlers in scope add their decorations to Suspend.data."""

    def comp() -> Generator[Any, Any, None]:
        yield Log("")
        yield State.put(5)
        yield Yield("?")

    s = start(comp(), Counter(), State(0))
    assert isinstance(s, Suspend)
    assert s.data[Counter] == 1
    assert s.data[State] == 5


def test_handler_written_as_computation_uses_outer_handlers() -> None:
    """A handler may return a computation; it runs in the handler's own (outer) scope."""

    def ask_via_state(e: Ask) -> Generator[Any, Any, str]:
        prefix = yield State.get()
        yield State.put(prefix + "+")
        return f"{prefix}{e.question}"

    def comp() -> Generator[Any, Any, tuple[str, str]]:
        a = yield Ask("x")
        b = yield Ask("y")
        return a, b

    assert run(comp(), handler({Ask: ask_via_state}), State("p")) == ("px", "p+y")


def test_handler_computation_does_not_see_inner_handlers() -> None:
    """Effects of a handler's computation skip handlers installed inside the handler."""

    def ask(e: Ask) -> Generator[Any, Any, str]:
        return (yield Reader.ask())

    comp = with_handler(Ask("q"), Reader("inner"))
    assert run(comp, handler({Ask: ask}), Reader("outer")) == "outer"


def test_handler_exception_catchable_in_computation() -> None:
    """An exception raised or returned by a handler is thrown at the yield."""

    def comp() -> Generator[Any, Any, list[str]]:
        out = []
        for q in ("raise", "return"):
            try:
                yield Ask(q)
            except LookupError as err:
                out.append(str(err))
        return out

    def ask(e: Ask) -> Any:
        if e.question == "raise":
            raise LookupError("raised")
        return LookupError("returned")

    assert run(comp(), handler({Ask: ask})) == ["raised", "returned"]


def test_subclass_lookup() -> None:
    """A handler for a base effect type handles subclasses; an inner one for the base wins."""

    def comp() -> Generator[Any, Any, list[str]]:
        a = yield Derived()
        b = yield from with_handler(Derived(), handler({Base: lambda e: "inner"}))
        c = yield Derived()
        return [a, b, c]

    assert run(comp(), handler({Base: lambda e: "base"})) == ["base", "inner", "base"]


def test_state_and_reader_overrides_across_suspension() -> None:
    """Scoped overrides survive a suspension and are restored after it."""

    def inner() -> Generator[Any, Any, tuple[Any, Any]]:
        yield Yield("inside")
        return ((yield Reader.ask()), (yield State.get()))

    def comp() -> Generator[Any, Any, list[Any]]:
        r = yield from with_handler(inner(), Reader("local"), State("s-local"))
        after = ((yield Reader.ask()), (yield State.get()))
        return [r, after]

    s = start(comp(), Reader("global"), State("s-global"))
    assert isinstance(s, Suspend)
    assert s.resume(None) == Done([("local", "s-local"), ("global", "s-global")])


def test_deep_stack_of_200_handlers() -> None:
    """A 200-deep nesting of scopes neither recurses nor slows lookup."""
    effects = [type(f"E{i}", (Effect,), {"__annotations__": {}}) for i in range(200)]

    def nested(depth: int) -> Any:
        comp: Any = State.get()
        for i in range(depth):
            comp = with_handler(comp, handler({effects[i]: lambda e: 0}))
        return comp

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)  # far below the depth: any recursion per scope would fail
    try:
        assert run(nested(200), State(42)) == 42
        hs = [handler({e: lambda eff: 0}) for e in effects]
        assert run(State.get(), *hs, State(7)) == 7
    finally:
        sys.setrecursionlimit(old)


def test_million_effect_loop() -> None:
    """A 1,000,000-effect loop runs without recursion."""

    def loop(n: int) -> Generator[Any, Any, int]:
        for _ in range(n // 2):
            x = yield State.get()
            yield State.put(x + 1)
        return (yield State.get())  # type: ignore[no-any-return]

    assert run(loop(1_000_000), State(0)) == 500_000


def test_catch_inside_handler_scope() -> None:
    """catch composes with scopes: recovery sees state changed before the throw."""

    def risky() -> Generator[Any, Any, str]:
        yield State.put("changed")
        raise ValueError("x")

    def recover(err: Exception) -> Generator[Any, Any, str]:
        return f"recovered with {(yield State.get())}"

    assert run(catch(risky(), recover), State("initial")) == "recovered with changed"


# -- InScope: the interceptor hook -----------------------------------------------------------


class Observe(Handler):
    """An interceptor recording the answer of every computation an outer handler returns."""

    def __init__(self, seen: list[Any], in_scope: bool = True) -> None:
        self.seen = seen
        self.in_scope = in_scope

    def intercept(self, table: Any) -> None:
        for t, (fn, home, owner) in list(table.items()):
            if home is None:
                continue  # a pure entry: plain values only

            def wrapper(effect: Any, fn: Any = fn, home: Any = home) -> Any:
                result = fn(effect)
                if type(result) is GeneratorType:
                    watched = self.watch(effect, result)
                    return InScope(watched, home) if self.in_scope else watched
                return result

            table[t] = (wrapper, home, owner)

    def watch(self, effect: Any, comp: Any) -> Generator[Any, Any, Any]:
        value = yield from comp
        self.seen.append((effect, value))
        return value


def refine(effect: Ask) -> Generator[Any, Any, str]:
    """A handler written as a computation that asks the next handler out."""
    answer = yield Ask(effect.question + "!")
    return f"refined({answer})"


def asks() -> Generator[Any, Any, str]:
    return (yield Ask("q"))


def test_in_scope_runs_a_wrapped_computation_where_its_handler_would() -> None:
    """An interceptor returning `InScope(comp, home)` keeps the handler's computation in the
    handler's home: its own `Ask` reaches the outer handler, and the interceptor sees the
    answer."""
    seen: list[Any] = []
    outer = handler({Ask: lambda e: f"outer:{e.question}"})
    inner = handler({Ask: refine})
    out = run(with_handler(asks(), Observe(seen)), inner, outer)
    assert out == "refined(outer:q!)"
    assert seen == [(Ask("q"), "refined(outer:q!)")]


@pytest.mark.anyio
async def test_in_scope_under_the_async_runner() -> None:
    """The same under `arun`, with the handler computation awaiting on the way."""

    def slow_refine(effect: Ask) -> Generator[Any, Any, str]:
        yield from sleep_a_little()
        return (yield from refine(effect))

    def sleep_a_little() -> Generator[Any, Any, None]:
        yield Nap()

    class Nap(Effect[None]):
        pass

    seen: list[Any] = []
    outer = handler(
        {Ask: lambda e: f"outer:{e.question}", Nap: lambda e: anyio.lowlevel.checkpoint()}
    )
    inner = handler({Ask: slow_refine})
    out = await arun(with_handler(asks(), Observe(seen)), inner, outer)
    assert out == "refined(outer:q!)"
    assert seen == [(Ask("q"), "refined(outer:q!)")]


def test_without_in_scope_the_computation_runs_outside_the_interceptor() -> None:
    """What `InScope` is for: a computation the wrapper returns as such runs outside the
    interceptor, where the wrapped handler answers its `Ask` again (not the outer one)."""
    seen: list[Any] = []
    calls: list[str] = []

    def counting_refine(effect: Ask) -> Any:
        calls.append(effect.question)
        if len(calls) > 1:
            return "again"  # the handler was reached a second time
        return refine(effect)

    outer = handler({Ask: lambda e: f"outer:{e.question}"})
    inner = handler({Ask: counting_refine})
    out = run(with_handler(asks(), Observe(seen, in_scope=False)), inner, outer)
    assert calls == ["q", "q!"]
    assert out == "refined(again)"


def test_in_scope_needs_a_handler_home() -> None:
    """`InScope`'s scope is a `home` from a handler table; anything else is a TypeError."""
    with pytest.raises(TypeError, match="home"):
        InScope(asks(), object())


def test_inner_base_handler_shadows_outer_subclass_handler() -> None:
    """Inner shadows outer across subclasses too: an inner handler for `Base` answers a
    `Derived` even when an outer handler was installed for `Derived` itself (innermost match
    wins, as with nested `except` clauses); the outer one is back after the inner scope."""

    def comp() -> Generator[Any, Any, list[str]]:
        inside = yield from with_handler(Derived(), handler({Base: lambda e: "inner base"}))
        after = yield Derived()
        return [inside, after]

    outer = handler({Derived: lambda e: "outer derived"})
    assert run(comp(), outer) == ["inner base", "outer derived"]
    # The same order given to one runner: the first listed is innermost.
    assert run(Derived(), handler({Base: lambda e: "a"}), outer) == "a"
    # The outer one still answers what the inner one does not interpret.
    assert run(Derived(), handler({Ask: lambda e: "ask"}), outer) == "outer derived"
