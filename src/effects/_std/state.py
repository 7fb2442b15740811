"""In-memory, replayable effect families: `State`, `Reader`, `Writer`, `EventAccumulator`.

Each family is a handler class that carries its operations as constructors (`State.get()`,
`State.put(v)`). `Family.tagged("name")` makes an independent family with effect classes of its
own, so two States coexist without the untagged hot path checking any tag.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, overload

from .. import _diagnostics
from .._computation import Computation
from .._effect import Effect, EffectMeta
from .._handler import Handler, PairedOutput, with_handler

if TYPE_CHECKING:
    from typing import Self

T = TypeVar("T")
S = TypeVar("S")
H = TypeVar("H", bound=Handler)


def _effect_class(family: str, op: str, fields: dict[str, Any]) -> type[Effect[Any]]:
    ns: dict[str, Any] = {"__annotations__": fields, "__qualname__": f"{family}.{op}"}
    cls = cast("type[Effect[Any]]", EffectMeta(op, (Effect,), ns))
    cls.__module__ = "effects"
    return cls


def _shared_instance(cls: type[Effect[Any]]) -> Callable[[], Effect[Any]]:
    # A C-level callable returning the one instance of a field-less effect: `State.get()`
    # costs no Python frame and no allocation. The debug mode makes one per call instead, to
    # notice a `State.get()` that is dropped without being yielded.
    if _diagnostics.DEBUG:
        return cls
    return itertools.repeat(cls()).__next__


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
    value: Any
    with_output: bool
    # The operations are the effect classes themselves (or, for `get`, a C-level callable
    # returning the one shared instance): building an effect costs no extra Python call. Type
    # checkers see them as static methods (set by `_bind_family`).
    if TYPE_CHECKING:

        @staticmethod
        def get() -> Effect[Any]:
            """The current value."""

        @staticmethod
        def put(value: Any) -> Effect[None]:
            """Replace the value."""

        @staticmethod
        def modify(fn: Callable[[Any], Any]) -> Effect[Any]:
            """Replace the value with `fn(value)`; returns the new value."""

        @overload
        def __new__(cls, initial: S, *, output: Literal[True]) -> _PairedState[S]: ...
        @overload
        def __new__(cls, initial: Any = None, *, output: bool = False) -> Self: ...
        def __new__(cls, initial: Any = None, *, output: bool = False) -> Any: ...

    else:  # hidden from mypy, which reads `__init__` instead of the overloads when both exist

        def __init__(self, initial: Any = None, *, output: bool = False) -> None:
            self.value = initial
            self.with_output = output

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        setattr(cls, "get", _shared_instance(classes["get"]))  # noqa: B010 - a method to mypy
        setattr(cls, "put", classes["put"])  # noqa: B010
        setattr(cls, "modify", classes["modify"])  # noqa: B010
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


if TYPE_CHECKING:

    class _PairedState(State, PairedOutput[S]):
        """`State(initial, output=True)` to type checkers: the scope returns `(result, S)`."""


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

    if TYPE_CHECKING:

        @staticmethod
        def ask() -> Effect[Any]:
            """The value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        setattr(cls, "ask", _shared_instance(classes["ask"]))  # noqa: B010 - a method to mypy
        cls._handled = {classes["ask"]: "_ask"}

    @classmethod
    def local(cls, fn: Callable[[Any], Any], comp: Computation[T]) -> Generator[Any, Any, T]:
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
    with_output: bool
    items: list[Any]

    if TYPE_CHECKING:

        @staticmethod
        def tell(item: Any) -> Effect[None]:
            """Collect `item`."""

        @overload
        def __new__(cls, *, output: Literal[True] = True) -> _PairedWriter: ...
        @overload
        def __new__(cls, *, output: bool) -> Self: ...
        def __new__(cls, *, output: bool = True) -> Any: ...

    else:  # hidden from mypy (see State)

        def __init__(self, *, output: bool = True) -> None:
            self.with_output = output
            self.items = []

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        setattr(cls, "tell", classes["tell"])  # noqa: B010 - a method to mypy
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


if TYPE_CHECKING:

    class _PairedWriter(Writer, PairedOutput[list[Any]]):
        """`Writer()` to type checkers: the scope returns `(result, items)`."""


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
    with_output: bool
    on_event: Callable[[Any], None] | None
    events: list[Any]

    if TYPE_CHECKING:

        @staticmethod
        def emit(event: Any) -> Effect[None]:
            """Record `event`."""

        @overload
        def __new__(
            cls, *, output: Literal[True], on_event: Callable[[Any], None] | None = None
        ) -> _PairedEvents: ...
        @overload
        def __new__(
            cls, *, output: bool = False, on_event: Callable[[Any], None] | None = None
        ) -> Self: ...
        def __new__(
            cls, *, output: bool = False, on_event: Callable[[Any], None] | None = None
        ) -> Any: ...

    else:  # hidden from mypy (see State)

        def __init__(
            self, *, output: bool = False, on_event: Callable[[Any], None] | None = None
        ) -> None:
            self.with_output = output
            self.on_event = on_event
            self.events = []

    @classmethod
    def _bind_family(cls, classes: dict[str, type[Effect[Any]]]) -> None:
        setattr(cls, "emit", classes["emit"])  # noqa: B010 - a method to mypy
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


if TYPE_CHECKING:

    class _PairedEvents(EventAccumulator, PairedOutput[list[Any]]):
        """`EventAccumulator(output=True)` to type checkers: the scope returns
        `(result, events)`."""


EventAccumulator._bind_family({"emit": _effect_class("EventAccumulator", "emit", {"event": Any})})
