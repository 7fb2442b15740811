"""JSON forms of what a durable run stores besides its log: the computation's arguments (typed
by its parameters' hints), its result (typed by its return hint), prompts and errors."""

from __future__ import annotations

import collections.abc
import inspect
import json
import typing
from typing import Any

import pydantic
import pydantic_core

from .._computation import Comp, ComputationFunction
from .._exceptions import ConfigurationError, LogError
from ._serialize import Codec, codec

_P = inspect.Parameter


def dumps(value: Any) -> str:
    """Compact JSON text of a JSON value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loose_json(value: Any) -> Any:
    """A JSON form of anything (for display only: prompts, cancel reasons)."""
    return pydantic_core.to_jsonable_python(value, fallback=repr)


def input_schema(input_type: Any) -> dict[str, Any] | None:
    """The JSON schema of a `Yield(input=...)` type, if pydantic can describe it."""
    if input_type is None:
        return None
    try:
        schema: dict[str, Any] = pydantic.TypeAdapter(input_type).json_schema()
    except Exception:
        return None
    return schema


def _result_hint(ret: Any) -> Any:
    origin = typing.get_origin(ret)
    if origin in (collections.abc.Generator, typing.Generator):
        args = typing.get_args(ret)
        if len(args) == 3:
            return args[2]
    return Any


class Signature:
    """How one computation function's arguments and result are stored."""

    def __init__(self, function: ComputationFunction[Any, Any]) -> None:
        self.function = function
        fn = function.fn
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception as err:
            raise ConfigurationError(
                f"computation {function.name!r}: its type hints cannot be resolved ({err}); "
                "durable runs store arguments and results through them"
            ) from None
        self.params: list[tuple[str, Any, Codec]] = []
        for p in self.signature.parameters.values():
            hint = hints.get(p.name, Any)
            if p.kind is _P.VAR_POSITIONAL:
                c = codec(tuple if hint is Any else tuple[hint, ...])  # type: ignore[valid-type]
            elif p.kind is _P.VAR_KEYWORD:
                c = codec(dict if hint is Any else dict[str, hint])  # type: ignore[valid-type]
            else:
                c = codec(hint)
            self.params.append((p.name, p.kind, c))
        self.result = codec(_result_hint(hints.get("return", Any)))

    def dump_args(self, comp: Comp[Any]) -> str:
        """The arguments of `comp` as JSON text, keyed by parameter name."""
        name = self.function.name
        try:
            bound = self.signature.bind(*comp.args, **comp.kwargs)
        except TypeError as err:
            raise ConfigurationError(f"{comp!r}: {err}") from None
        out: dict[str, Any] = {}
        for pname, _, c in self.params:
            if pname in bound.arguments:
                # Sorted sets: `start` with the id of an existing run compares the text.
                out[pname] = c.dump_sorted(bound.arguments[pname], f"{name}: argument {pname!r}")
        return dumps(out)

    def load_args(self, run_id: str, text: str) -> Comp[Any]:
        """Rebuild the `Comp` of a stored run, validating each argument."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise LogError(f"run {run_id!r}: stored arguments are corrupted ({err})") from None
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        positional = True
        for pname, kind, c in self.params:
            if pname not in data:
                positional = False  # later parameters must go by keyword
                continue
            try:
                value = c.load(data[pname])
            except pydantic.ValidationError as err:
                raise LogError(
                    f"run {run_id!r}: stored argument {pname!r} does not fit "
                    f"{self.function.name} v{self.function.version}: "
                    f"{err.errors(include_url=False)[0]['msg']}"
                ) from None
            if kind is _P.VAR_POSITIONAL:
                args.extend(value)
            elif kind is _P.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is _P.POSITIONAL_ONLY or (kind is _P.POSITIONAL_OR_KEYWORD and positional):
                args.append(value)
            else:
                kwargs[pname] = value
        unknown = set(data) - {p for p, _, _ in self.params}
        if unknown:
            raise LogError(
                f"run {run_id!r}: stored arguments {sorted(unknown)} are not parameters of "
                f"{self.function.name} v{self.function.version}"
            )
        return self.function(*args, **kwargs)

    def dump_result(self, value: Any) -> str:
        """The computation's result as JSON text (`SerializationError` if it has none)."""
        return dumps(self.result.dump(value, f"{self.function.name}: result"))

    def load_result(self, text: str) -> Any:
        """Rebuild a stored result through the return type hint."""
        return self.result.load(json.loads(text))


_signatures: dict[ComputationFunction[Any, Any], Signature] = {}


def signature(function: ComputationFunction[Any, Any]) -> Signature:
    """The (cached) `Signature` of a computation function."""
    try:
        return _signatures[function]
    except KeyError:
        s = _signatures[function] = Signature(function)
        return s
