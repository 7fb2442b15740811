"""Handlers, handler scopes (`with_handler`) and reusable stacks (`Stack`)."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeAlias, overload

from typing_extensions import TypeVar

from ._computation import Computation
from ._effect import Effect

if TYPE_CHECKING:
    from typing import Self

R = TypeVar("R", default=Any)
S = TypeVar("S")
T = TypeVar("T")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])

HandlerResult: TypeAlias = T | Awaitable[T] | Computation[T] | BaseException
"""What a handler of an `Effect[T]` may return: the result, an awaitable of it (async runners),
a computation returning it (run outside the handler), or an exception to throw at the `yield`."""

HandlerFn = Callable[[Any], Any]
# A handler table maps an effect type to (function, home, owner). `home` is where a
# computation returned by the function runs (the scope outside the handler's installation; an
# opaque interpreter object); None marks a *pure* handler whose results are always plain
# values, which lets the interpreter skip classifying them.
Entry = tuple[HandlerFn, Any, "Handler"]
Table = dict[type, Entry]


@overload
def handles(
    effect_type: type[Effect[T]], /
) -> Callable[[Callable[P, HandlerResult[T]]], Callable[P, HandlerResult[T]]]: ...
@overload
def handles(*effect_types: type[Effect[Any]]) -> Callable[[F], F]: ...
def handles(*effect_types: type[Effect[Any]]) -> Callable[[F], F]:
    """Mark a `Handler` method as the handler of the given effect types.

    With one effect type, type checkers check the method's result against the effect's declared
    result type (`@handles(GetUser)` on a method returning `str` when `GetUser` is an
    `Effect[User]` is an error). The result may be the value, an awaitable of it, a computation
    returning it, or an exception to throw (see `Handler`).
    """

    def mark(fn: F) -> F:
        fn.__effects_handles__ = effect_types  # type: ignore[attr-defined]
        return fn

    return mark


class Handler:
    """Base class of handlers: interprets one or more effect types.

    Methods marked with `@handles(EffectType)` receive the effect and return one of:
    a plain value (the computation resumes with it), an awaitable (the async runner awaits it),
    a computation (run in the scope *outside* this handler, so it may use outer handlers' effects)
    or an exception instance (thrown into the computation at its `yield`).

    Every installation works on a shallow copy of the handler (see `install`), so attributes set
    in `__init__` are per-scope state. Override `output` to transform the scope's result,
    `cleanup` to run code on every exit path, and `decorate` to add to `Suspend.data`.

    Class flags read by the runtime:

    - `pure`: results are always plain values (never computations, awaitables or exceptions).
    - `replayable`: in-memory and deterministic; the effect logger re-executes it on replay
      instead of recording its results.
    - `external`: its effects touch the outside world; durable runs checkpoint after each one.
    """

    pure: ClassVar[bool] = False
    replayable: ClassVar[bool] = False
    external: ClassVar[bool] = False
    _handled: ClassVar[dict[type, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handled = dict(cls._handled)
        for name, member in vars(cls).items():
            for effect_type in getattr(member, "__effects_handles__", ()):
                handled[effect_type] = name
        cls._handled = handled

    def install(self) -> Self:
        """Return the per-scope instance used for one installation (a shallow copy)."""
        return copy.copy(self)

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        """The effect types this handler interprets, mapped to their functions."""
        return {t: getattr(self, name) for t, name in self._handled.items()}

    def intercept(self, table: Table) -> None:
        """Rewrite entries of the enclosing scope's table before this scope's own are added.

        Used by handlers that observe effects handled further out (the effect logger). `table`
        maps each effect type to `(function, home, owner)`. `home` is `None` for a *pure*
        entry (its results are plain values, never classified); otherwise it is the handler
        scope where computations returned by `function` run. Replace an entry with
        `(wrapper, home, owner)`: a wrapper of a general entry (non-`None` home) has its
        results classified like a handler's, and a computation it returns runs *outside this
        interceptor* (where the original entry still answers). To run a computation where the
        original handler would have run it, return `effects.InScope(comp, home)`.
        """

    def output(self, value: Any) -> Any:
        """Transform the scope's result on normal exit (identity by default)."""
        return value

    def cleanup(self) -> None:
        """Run when the scope exits, on every path (return, exception, cancellation, or its
        suspension dropped without being resumed)."""

    def decorate(self, data: dict[Any, Any]) -> None:
        """Add entries to `Suspend.data` when a computation in this scope suspends."""

    def __repr__(self) -> str:
        return type(self).__qualname__


class FunctionHandler(Handler):
    """A handler made of plain functions, one per effect type (see `handler`)."""

    def __init__(self, functions: Mapping[type, HandlerFn], name: str | None = None) -> None:
        self.functions = dict(functions)
        self.name = name

    def effect_handlers(self) -> Mapping[type, HandlerFn]:
        return self.functions

    def install(self) -> Self:
        return self  # stateless: nothing to copy

    def __repr__(self) -> str:
        if self.name:
            return self.name
        return "handler({" + ", ".join(t.__qualname__ for t in self.functions) + "})"


def handler(
    functions: Mapping[type, HandlerFn],
    *,
    name: str | None = None,
    external: bool = False,
) -> Handler:
    """Build a handler from plain functions: `handler({GetUser: lambda e: users[e.user_id]})`.

    `external=True` declares that the functions touch the outside world, so durable runs
    checkpoint after each completed effect (see the durable guide).
    """
    h = FunctionHandler(functions, name)
    if external:
        h.external = True  # type: ignore[misc]
    return h


def flatten(handlers: Handler | Stack | Iterable[Handler | Stack]) -> tuple[Handler, ...]:
    """One handler, one stack, or any iterable of them, as a flat tuple (first innermost).

    Package-internal (shared by the runners, `AsyncComputation` and `DurableRunner`)."""
    if isinstance(handlers, Handler):
        return (handlers,)
    out: list[Handler] = []
    for h in handlers:
        if isinstance(h, Stack):
            out.extend(h.handlers)
        elif isinstance(h, Handler):
            out.append(h)
        else:
            raise TypeError(f"expected a Handler or a Stack, got {h!r}")
    return tuple(out)


class Stack:
    """A reusable, composable handler stack; the first handler listed is the innermost.

    `Stack(a, b) + Stack(c)` is `Stack(a, b, c)`; `stack(comp)` is `with_handler(comp, stack)`.
    """

    __slots__ = ("handlers",)

    def __init__(self, *handlers: Handler | Stack) -> None:
        self.handlers = flatten(handlers)

    def __add__(self, other: Stack | Handler) -> Stack:
        return Stack(self, other)

    def __iter__(self) -> Iterator[Handler]:
        return iter(self.handlers)

    def __len__(self) -> int:
        return len(self.handlers)

    def __call__(self, comp: Computation[T]) -> WithHandler[T]:
        """`with_handler(comp, *self)`: run `comp` with this stack installed."""
        return WithHandler(comp, self.handlers)

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.handlers))})"


class WithHandler(Generic[R]):
    """A computation run with handlers installed for its extent (built by `with_handler`).

    It is a scope object the interpreter enters directly, without an extra generator layer.
    """

    __slots__ = ("comp", "handlers")

    def __init__(self, comp: Computation[Any], handlers: tuple[Handler, ...]) -> None:
        self.comp = comp
        self.handlers = handlers

    def __iter__(self) -> Generator[Any, Any, R]:
        return (yield self)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"with_handler({self.comp!r}, {', '.join(map(repr, self.handlers))})"


class PairedOutput(Handler, Generic[S]):
    """A handler whose scope returns `(result, S)` instead of `result`, for type checkers.

    `State(initial, output=True)`, `Writer()` and `EventAccumulator(output=True)` are typed as
    one, so `run(comp, Writer())` is typed `tuple[R, list[Any]]`. Subclass it (and override
    `output`) to have your own pairing handler typed the same way. `with_handler`, `run` and
    `start` recognise one such handler among the first three passed. A handler whose `output`
    changes the result in another way is not seen by the checkers: annotate its result.
    """


@overload
def with_handler(
    comp: Computation[T], h: PairedOutput[S], /, *handlers: Handler | Stack
) -> WithHandler[tuple[T, S]]: ...
@overload
def with_handler(
    comp: Computation[T], h1: Handler | Stack, h: PairedOutput[S], /, *handlers: Handler | Stack
) -> WithHandler[tuple[T, S]]: ...
@overload
def with_handler(
    comp: Computation[T],
    h1: Handler | Stack,
    h2: Handler | Stack,
    h: PairedOutput[S],
    /,
    *handlers: Handler | Stack,
) -> WithHandler[tuple[T, S]]: ...
@overload
def with_handler(comp: Computation[T], *handlers: Handler | Stack) -> WithHandler[T]: ...
def with_handler(comp: Computation[Any], *handlers: Handler | Stack) -> WithHandler[Any]:
    """Run `comp` with `handlers` installed; the first listed is the innermost.

    `with_handler(comp, a, b)` is `with_handler(with_handler(comp, a), b)`. Inner installations
    shadow outer ones for their extent and are restored afterwards; a handler for a base effect
    type also shadows outer handlers of its subclasses (the innermost one that interprets an
    effect answers it).
    """
    return WithHandler(comp, flatten(handlers))
