"""Computations: generators that yield effects, and `@computation` re-startable functions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from types import GeneratorType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from . import _diagnostics
from ._exceptions import ConfigurationError

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
P = ParamSpec("P")


class Computation(Protocol[R_co]):
    """Anything `yield from` can run to a result of type `R_co`: a generator, a `Comp`,
    an `Effect`, a `with_handler(...)` scope."""

    def __iter__(self) -> Generator[Any, Any, R_co]: ...


class Comp(Generic[R]):
    """A computation function bound to its arguments: re-startable, so each `iter()` (each run,
    each cold resume) starts a fresh generator. `yield from comp` runs it inline."""

    __slots__ = ("args", "function", "kwargs")

    def __init__(
        self, function: ComputationFunction[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __iter__(self) -> Generator[Any, Any, R]:
        gen = self.function.fn(*self.args, **self.kwargs)
        if type(gen) is not GeneratorType:
            # Not a generator function: run what a wrapper returned, or say what is wrong (a
            # plain function returning a value would fail later as "iter() returned non-iterator").
            return _diagnostics.not_a_generator(self.function.fn, gen)
        return gen

    @property
    def name(self) -> str:
        """The registered name of the computation function."""
        return self.function.name

    @property
    def version(self) -> int:
        """The version of the computation function."""
        return self.function.version

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.function.name}({', '.join(parts)})"


class ComputationFunction(Generic[P, R]):
    """What `@computation` returns: calling it builds a `Comp` (nothing runs yet)."""

    def __init__(self, fn: Callable[P, Generator[Any, Any, R]], name: str, version: int) -> None:
        self.fn = fn
        self.name = name
        self.version = version
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Comp[R]:
        return Comp(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<computation {self.name} v{self.version}>"


if _diagnostics.DEBUG:  # decided at import; without it a Comp costs one plain __init__

    def _debug_init(
        self: Comp[Any],
        function: ComputationFunction[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.function, self.args, self.kwargs = function, args, kwargs
        _diagnostics.note_created(self, 2)  # the caller of ComputationFunction.__call__

    def _debug_del(self: Comp[Any]) -> None:
        what = repr(self)
        _diagnostics.check_dropped(self, what, f"yield from {what}")

    Comp.__init__ = _debug_init  # type: ignore[method-assign]
    Comp.__del__ = _debug_del  # type: ignore[attr-defined]


_registry: dict[str, ComputationFunction[Any, Any]] = {}


def registered(name: str) -> ComputationFunction[Any, Any]:
    """The computation function registered under `name` (raises `LookupError` if none)."""
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(
            f"no computation registered as {name!r}; import the module that defines it "
            f"(registered: {', '.join(sorted(_registry)) or 'none'})"
        ) from None


def registered_names() -> list[str]:
    """The names of every registered computation (a snapshot)."""
    return list(_registry)


@overload
def computation(fn: Callable[P, Generator[Any, Any, R]], /) -> ComputationFunction[P, R]: ...
@overload
def computation(
    *, name: str | None = None, version: int = 1
) -> Callable[[Callable[P, Generator[Any, Any, R]]], ComputationFunction[P, R]]: ...
def computation(
    fn: Callable[P, Generator[Any, Any, R]] | None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
) -> Any:
    """Mark a generator function as a computation; calling it returns a re-startable `Comp`.

    `name` (default: `module.qualname`) and `version` identify it in durable runs, which find
    it again by name after a restart.
    """

    def wrap(f: Callable[P, Generator[Any, Any, R]]) -> ComputationFunction[P, R]:
        _diagnostics.check_computation_function(f)
        cname = name or f"{f.__module__}.{f.__qualname__}"
        cf = ComputationFunction(f, cname, version)
        old = _registry.get(cname)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (
            f.__module__,
            f.__qualname__,
        ):
            raise ConfigurationError(
                f"computation name {cname!r} is already used by "
                f"{old.fn.__module__}.{old.fn.__qualname__}"
            )
        _registry[cname] = cf
        return cf

    if fn is not None:
        return wrap(fn)
    return wrap
