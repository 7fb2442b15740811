"""In-memory, replayable effect families: `State`, `Reader`, `Writer`, `EventAccumulator`.

Each family is a handler class that carries its operations as constructors (`State.get()`,
`State.put(v)`). `Family.tagged("name")` makes an independent family with effect classes of its
own, so two States coexist without the untagged hot path checking any tag.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Generator
from typing import Any, ClassVar, TypeVar, cast

from .._effect import Effect, EffectMeta
from .._handler import Handler, with_handler

T = TypeVar("T")
H = TypeVar("H", bound=Handler)


def _effect_class(family: str, op: str, fields: dict[str, Any]) -> type[Effect[Any]]:
    ns: dict[str, Any] = {"__annotations__": fields, "__qualname__": f"{family}.{op}"}
    cls = cast("type[Effect[Any]]", EffectMeta(op, (Effect,), ns))
    cls.__module__ = "effects"
    return cls


def _tag(base: type[H], tag: str, ops: dict[str, dict[str, Any]]) -> type[H]:
    family = f"{base.__name__}[{tag}]"
    classes = {op: _effect_class(family, op, fields) for op, fields in ops.items()}
    sub: Any = type(family, (base,), {"__qualname__": family, "tag": tag})
    sub.__module__ = base.__module__
    sub._bind_family(classes)
    return cast("type[H]", sub)


class State(Handler):
    """A mutable cell for its scope: `State.get()`, `State.put(v)`, `State.modify(fn)`.

    `State(initial, output=True)` makes the scope return `(result, final_state)`.
    """

    pure = True
    replayable = True
    tag: ClassVar[str | None] = None
    # The operations are the effect classes themselves (or, for `get`, a C-level callable
    # returning the one shared instance): building an effect costs no extra Python call.
    get: ClassVar[Callable[[], Effect[Any]]]
    put: ClassVar[Callable[[Any], Effect[None]]]
    modify: ClassVar[Callable[[Callable[[Any], Any]], Effect[Any]]]

    def __init__(self, initial: Any = None, *, output: bool = False) -> None:
        self.value = initial
        self.with_output = output

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        cls.get = itertools.repeat(classes["get"]()).__next__
        cls.put = classes["put"]
        cls.modify = classes["modify"]
        cls._handled = {
            classes["get"]: "_get",
            classes["put"]: "_put",
            classes["modify"]: "_modify",
        }

    @classmethod
    def tagged(cls, tag: str) -> type[State]:
        """An independent State family: `Counter = State.tagged("counter")`."""
        return _tag(cls, tag, _STATE_OPS)

    def _get(self, effect: Any) -> Any:
        return self.value

    def _put(self, effect: Any) -> None:
        self.value = effect._value

    def _modify(self, effect: Any) -> Any:
        self.value = value = effect._fn(self.value)
        return value

    def output(self, value: Any) -> Any:
        return (value, self.value) if self.with_output else value

    def decorate(self, data: dict[Any, Any]) -> None:
        data[type(self)] = self.value

    def snapshot(self) -> Any:
        """The current value (`transaction` restores it if the transaction fails)."""
        return self.value

    def restore(self, snapshot: Any) -> None:
        """Put back a value taken by `snapshot`."""
        self.value = snapshot

    def branch(self, path: str, group: object) -> State:
        """The State a `Parallel` branch sees: the current value, changed only in the branch."""
        inst = copy.copy(self)
        inst.with_output = False
        return inst

    def joined(self, branch: Handler) -> list[Effect[Any]]:
        """A branch's changes stay in the branch: nothing to merge back."""
        return []


_STATE_OPS: dict[str, dict[str, Any]] = {
    "get": {},
    "put": {"value": Any},
    "modify": {"fn": Callable[[Any], Any]},
}
State._bind_family({op: _effect_class("State", op, f) for op, f in _STATE_OPS.items()})


class Reader(Handler):
    """A read-only value for its scope: `Reader.ask()`; `Reader.local(fn, comp)` runs `comp`
    seeing `fn(value)` and restores the value afterwards. On suspension the value is in
    `Suspend.data[Reader]`."""

    pure = True
    replayable = True
    tag: ClassVar[str | None] = None
    ask: ClassVar[Callable[[], Effect[Any]]]

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        cls.ask = itertools.repeat(classes["ask"]()).__next__
        cls._handled = {classes["ask"]: "_ask"}

    @classmethod
    def local(cls, fn: Callable[[Any], Any], comp: Any) -> Generator[Any, Any, Any]:
        """Run `comp` with the value replaced by `fn(value)` for its extent."""
        current = yield cls.ask()
        return (yield from with_handler(comp, cls(fn(current))))

    @classmethod
    def tagged(cls, tag: str) -> type[Reader]:
        """An independent Reader family."""
        return _tag(cls, tag, {"ask": {}})

    def _ask(self, effect: Any) -> Any:
        return self.value

    def install(self) -> Reader:
        return self  # immutable: nothing to copy

    def decorate(self, data: dict[Any, Any]) -> None:
        data[type(self)] = self.value


Reader._bind_family({"ask": _effect_class("Reader", "ask", {})})


class Writer(Handler):
    """Collects what `Writer.tell(x)` sends. By default the scope returns `(result, items)`;
    with `output=False` the items are only visible in `Suspend.data[Writer]`."""

    pure = True
    replayable = True
    tag: ClassVar[str | None] = None
    tell: ClassVar[Callable[[Any], Effect[None]]]

    def __init__(self, *, output: bool = True) -> None:
        self.with_output = output
        self.items: list[Any] = []

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        cls.tell = classes["tell"]
        cls._handled = {classes["tell"]: "_tell"}

    @classmethod
    def tagged(cls, tag: str) -> type[Writer]:
        """An independent Writer family."""
        return _tag(cls, tag, {"tell": {"item": Any}})

    def install(self) -> Writer:
        inst = super().install()
        inst.items = []
        return inst

    def _tell(self, effect: Any) -> None:
        self.items.append(effect._item)

    def output(self, value: Any) -> Any:
        return (value, self.items) if self.with_output else value

    def snapshot(self) -> int:
        """How many items were told so far (`transaction` drops later ones on failure)."""
        return len(self.items)

    def restore(self, snapshot: int) -> None:
        """Drop the items told after `snapshot` was taken."""
        del self.items[snapshot:]

    def branch(self, path: str, group: object) -> Writer:
        """A `Parallel` branch collects its own items (merged back in branch order)."""
        inst = copy.copy(self)
        inst.with_output = False
        return inst

    def joined(self, branch: Handler) -> list[Effect[Any]]:
        """The branch's items, told again in the parent's scope."""
        assert isinstance(branch, Writer)
        return [type(self).tell(item) for item in branch.items]

    def decorate(self, data: dict[Any, Any]) -> None:
        data[type(self)] = list(self.items)


Writer._bind_family({"tell": _effect_class("Writer", "tell", {"item": Any})})


class EventAccumulator(Handler):
    """Collects domain events in emission order: `EventAccumulator.emit(event)`.

    `output=True` makes the scope return `(result, events)`. `on_event(event)` streams each event
    as it is emitted, but never while a durable run is being replayed (those events were
    streamed the first time).
    """

    pure = True
    replayable = True
    tag: ClassVar[str | None] = None
    emit: ClassVar[Callable[[Any], Effect[None]]]

    def __init__(
        self, *, output: bool = False, on_event: Callable[[Any], None] | None = None
    ) -> None:
        self.with_output = output
        self.on_event = on_event
        self.events: list[Any] = []

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        cls.emit = classes["emit"]
        cls._handled = {classes["emit"]: "_emit"}

    @classmethod
    def tagged(cls, tag: str) -> type[EventAccumulator]:
        """An independent EventAccumulator family."""
        return _tag(cls, tag, {"emit": {"event": Any}})

    def install(self) -> EventAccumulator:
        inst = super().install()
        inst.events = []
        return inst

    def _emit(self, effect: Any) -> None:
        self.events.append(effect._event)
        if self.on_event is not None:
            self.on_event(effect._event)

    def replay(self, effect: Any) -> None:
        """Used instead of the handler while a durable run replays: collect, don't stream."""
        self.events.append(effect._event)

    def output(self, value: Any) -> Any:
        return (value, list(self.events)) if self.with_output else value

    def snapshot(self) -> int:
        """How many events were emitted so far (`transaction` drops later ones on failure;
        events already streamed by `on_event` stay streamed)."""
        return len(self.events)

    def restore(self, snapshot: int) -> None:
        """Drop the events emitted after `snapshot` was taken."""
        del self.events[snapshot:]

    def branch(self, path: str, group: object) -> EventAccumulator:
        """A `Parallel` branch collects its own events; they are emitted (and streamed) in the
        parent's scope when the branches end, in branch order."""
        inst = copy.copy(self)
        inst.with_output = False
        inst.on_event = None
        return inst

    def joined(self, branch: Handler) -> list[Effect[Any]]:
        """The branch's events, emitted again in the parent's scope."""
        assert isinstance(branch, EventAccumulator)
        return [type(self).emit(event) for event in branch.events]

    def decorate(self, data: dict[Any, Any]) -> None:
        data[type(self)] = list(self.events)


EventAccumulator._bind_family({"emit": _effect_class("EventAccumulator", "emit", {"event": Any})})
