"""Typed JSON for effect arguments, results and errors (pydantic; no pickle anywhere).

Results are dumped and loaded with a `TypeAdapter` of the effect's declared result type
(`Effect[User]` -> `User`), cached per type, so a model, a datetime, a UUID or an enum comes back
as itself. Two effects carry their result type on the instance: `Yield(input=Model)` (the
validated answer is a `Model`) and `Call(fn)` (the return annotation of `fn`).

An undeclared result type (`Any`, or a bare `dict`/`list`/`tuple`) accepts plain JSON values
only: anything else could not be rebuilt as itself on replay, so it fails at the effect instead
of coming back silently as a string or a list.
"""

from __future__ import annotations

import hashlib
import math
import sys
import typing
from collections.abc import Callable
from typing import Any, NoReturn

import pydantic
import pydantic_core

from .._effect import result_type
from .._exceptions import EffectsError, SerializationError
from .._outcome import Throw
from .._std.call import Call
from .._std.control import Yield
from .._std.world import Sleep
from ._effects import needs_outside
from ._identity import encode, legacy_encode, sort_sets, type_name
from ._log import ErrorInfo


class ReplayedError(EffectsError):
    """A recorded exception whose type could not be rebuilt on replay.

    Replay rebuilds builtin exceptions and exception classes of already imported modules as
    themselves (`cls(*args)`, or `cls(message)`); any other recorded error comes back as a
    `ReplayedError` carrying the original `type_name` (`module.qualname`) and `message`.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


_PRIMITIVE = (str, int, float, bool, type(None))
_UNTYPED = (Any, object, dict, list, tuple, set, frozenset)


_names: dict[type, str] = {}


def effect_name(effect_type: type) -> str:
    """The name an effect type is logged under (cached per type)."""
    try:
        return _names[effect_type]
    except KeyError:
        name = _names[effect_type] = type_name(effect_type)
        return name


# -- arguments --------------------------------------------------------------------------------

# Options that change how an effect is carried out, not what it asks for, stay out of its
# identity: a new retry policy must not make old runs diverge.
_ARG_FIELDS: dict[type, tuple[str, ...]] = {Call: ("fn", "args", "kwargs")}


def register_arg_fields(effect_type: type, fields: tuple[str, ...]) -> None:
    """Log only `fields` of `effect_type` as its arguments."""
    _ARG_FIELDS[effect_type] = fields
    _fields_cache.clear()
    _dumpers.clear()
    _infos.clear()


_fields_cache: dict[type, tuple[str, ...]] = {}


def _arg_fields(effect_type: type) -> tuple[str, ...]:
    try:
        return _fields_cache[effect_type]
    except KeyError:
        pass
    fields: tuple[str, ...] = getattr(effect_type, "__effect_fields__", ())
    for cls in effect_type.__mro__:
        if cls in _ARG_FIELDS:
            fields = _ARG_FIELDS[cls]
            break
    _fields_cache[effect_type] = fields
    return fields


def _dump_field(effect: Any, f: str) -> Any:
    v = getattr(effect, "_" + f)
    if type(v) in _PRIMITIVE:
        data = v
    else:
        try:
            data = encode(v)
        except (TypeError, ValueError, pydantic_core.PydanticSerializationError) as err:
            raise SerializationError(
                f"{effect_name(type(effect))}: argument {f!r} ({type(v).__qualname__}) cannot "
                f"be stored as JSON: {err}"
            ) from None
    problem = json_problem(data)
    if problem is not None:
        raise SerializationError(
            f"{effect_name(type(effect))}: argument {f!r} cannot be stored as JSON: {problem}"
        )
    return data


def _dump_slow(effect: Any) -> dict[str, Any]:
    return {f: _dump_field(effect, f) for f in _arg_fields(type(effect))}


ArgDumper = Callable[[Any], dict[str, Any]]


def _no_args(effect: Any) -> dict[str, Any]:
    return {}


# JSON values as they are: nothing to check, nothing to copy.
_RAW: frozenset[type] = frozenset({int, bool, type(None)})


def scalar_checks(fields: tuple[str, ...], indent: str) -> tuple[str, str]:
    """Source text reading each field's slot of `effect` (`v0`, `t0`, ...) and the condition
    that holds when every one is a JSON scalar needing no further check (ASCII text, a finite
    float, an int, a bool, None): such values are stored as they are."""
    reads = "".join(
        f"{indent}v{i} = effect._{f}\n{indent}t{i} = type(v{i})\n" for i, f in enumerate(fields)
    )
    checks = " and ".join(
        f"(t{i} in _RAW or (t{i} is str and v{i}.isascii())"
        f" or (t{i} is float and v{i} - v{i} == 0))"  # NaN and infinities are not finite
        for i in range(len(fields))
    )
    return reads, checks or "True"


def _make_dumper(effect_type: type) -> ArgDumper:
    fields = _arg_fields(effect_type)
    if not fields:
        return _no_args
    # Generated per type, as `Effect` generates its `__init__`: each slot read directly and
    # each scalar checked inline costs about half of a generic loop over an `attrgetter`
    # tuple. Anything else takes the general path, which encodes and checks it.
    reads, checks = scalar_checks(fields, "    ")
    items = ", ".join(f"{f!r}: v{i}" for i, f in enumerate(fields))
    source = (
        f"def dump_args(effect):\n{reads}"
        f"    if {checks}:\n        return {{{items}}}\n    return _dump_slow(effect)\n"
    )
    env: dict[str, Any] = {"_RAW": _RAW, "_dump_slow": _dump_slow}
    exec(source, env)
    dumper: ArgDumper = env["dump_args"]
    return dumper


_dumpers: dict[type, ArgDumper] = {}


def _dumper(effect_type: type) -> ArgDumper:
    try:
        return _dumpers[effect_type]
    except KeyError:
        dumper = _dumpers[effect_type] = _make_dumper(effect_type)
        return dumper


def dump_args(effect: Any) -> dict[str, Any]:
    """The effect's arguments as JSON values; raises `SerializationError` naming the field."""
    return _dumper(type(effect))(effect)


def legacy_fingerprint(effect: Any) -> str | None:
    """The fingerprint a log written before the canonical argument form (see `_identity`)
    holds for `effect`; None when that form cannot express its arguments."""
    out: dict[str, Any] = {}
    for f in _arg_fields(type(effect)):
        try:
            out[f] = legacy_encode(getattr(effect, "_" + f))
        except (TypeError, ValueError, pydantic_core.PydanticSerializationError):
            return None
    return fingerprint(out)


_SHORT = 40


def fingerprint(args: dict[str, Any]) -> str:
    """A stable identity of an effect's JSON arguments: their compact JSON text when it is at
    most 40 bytes (readable, and no hashing on the common path), else a 64-bit BLAKE2b of it
    in hex."""
    text = pydantic_core.to_json(args)
    if len(text) <= _SHORT:
        return text.decode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


# -- results ----------------------------------------------------------------------------------


class Codec:
    """Dumps and loads values of one declared type."""

    __slots__ = ("adapter", "kind", "tp")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        if tp in _PRIMITIVE or tp is None:
            self.kind = "primitive"
            self.tp = type(None) if tp is None else tp
        elif tp in _UNTYPED:
            self.kind = "untyped"
        else:
            self.kind = "typed"
        self.adapter: pydantic.TypeAdapter[Any] | None = None

    def _adapt(self) -> pydantic.TypeAdapter[Any]:
        if self.adapter is None:
            self.adapter = pydantic.TypeAdapter(self.tp)
        return self.adapter

    def dump(self, value: Any, where: str) -> Any:
        """`value` as JSON; raises `SerializationError` naming `where`."""
        kind = self.kind
        if kind == "primitive" and type(value) is self.tp:
            return value if _plain(value) else _no_json(where, value)
        if kind == "untyped":
            top = self.tp
            if top in (tuple, set, frozenset) and type(value) is top:
                items = list(value)
                if _native(items):
                    return items
            elif (top is dict and type(value) is dict) or (top is list and type(value) is list):
                if _native(value):
                    return value
            elif top not in (dict, list, tuple, set, frozenset) and _native(value):
                return value
            problem = json_problem(list(value) if type(value) in (set, frozenset) else value)
            if problem is not None:  # JSON-shaped, but text or a number it cannot hold
                raise SerializationError(f"{where}: cannot be stored as JSON: {problem}")
            raise SerializationError(
                f"{where}: {_describe(value)} is not plain JSON and the declared type "
                f"({_type_repr(top)}) does not say how to rebuild it on replay; declare a precise "
                "type (`Effect[T]`, a return annotation, `Yield(input=T)`, `state_type=T`)"
            )
        try:
            data = self._adapt().dump_python(value, mode="json", warnings="error")
        except pydantic_core.PydanticSerializationError as err:
            message = str(err)
            if "Expected" in message:
                raise SerializationError(
                    f"{where}: {_describe(value)} does not match the declared type "
                    f"{_type_repr(self.tp)}, so it could not be rebuilt on replay"
                ) from None
            raise SerializationError(f"{where}: cannot be stored as JSON: {message}") from None
        except (TypeError, ValueError) as err:
            raise SerializationError(f"{where}: cannot be stored as JSON: {err}") from None
        problem = json_problem(data)
        if problem is not None:
            raise SerializationError(f"{where}: cannot be stored as JSON: {problem}")
        return data

    def dump_sorted(self, value: Any, where: str) -> Any:
        """`dump`, with sets sorted: the same text for the same value in every process (for
        stored forms that are compared as text, such as a run's arguments)."""
        out = self.dump(value, where)
        if self.kind == "typed":
            return sort_sets(self._adapt().dump_python(value, mode="python"), out)
        return sort_sets(value, out)

    def load(self, data: Any) -> Any:
        """Rebuild a value from its JSON form (raises `pydantic.ValidationError`)."""
        kind = self.kind
        if kind == "primitive":
            if type(data) is self.tp:
                return data
        elif kind == "untyped":
            top = self.tp
            if top in (tuple, set, frozenset):
                return top(data)
            return data
        return self._adapt().validate_python(data)


def _no_json(where: str, value: Any) -> NoReturn:
    problem = json_problem(value) or f"{value!r} has no JSON form"
    raise SerializationError(f"{where}: cannot be stored as JSON: {problem}")


def _utf8(text: str) -> bool:
    # A lone surrogate (what `os.fsdecode` makes of a non-UTF-8 file name) has no UTF-8 form:
    # the store could not write it, so the value must fail where it is produced.
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any) -> bool:
    """Whether a primitive value has a JSON form (finite numbers, UTF-8 encodable text)."""
    t = type(value)
    if t is str:
        return _utf8(value)
    if t is float:
        return math.isfinite(value)
    return True


def json_problem(value: Any, path: str = "") -> str | None:
    """Why a JSON value (as `dump_python(mode="json")` makes it) cannot be stored, or None:
    text with a lone surrogate, or a number that is not finite (NaN, infinity)."""
    t = type(value)
    if t is str or t is float:
        if _plain(value):
            return None
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        at = f" at {path}" if path else ""
        if t is float:
            return f"{text}{at} is not a finite number"
        return (
            f"the text {text}{at} holds a lone surrogate (as os.fsdecode makes of a name that "
            "is not UTF-8) and has no UTF-8 form; decode it explicitly (e.g. errors='replace')"
        )
    if t is list or t is tuple:
        for i, v in enumerate(value):
            problem = json_problem(v, f"{path}[{i}]")
            if problem is not None:
                return problem
    elif t is dict:
        for k, v in value.items():
            problem = json_problem(k, path + "(a key)") if type(k) is str else None
            if problem is None:
                problem = json_problem(v, f"{path}[{k!r}]")
            if problem is not None:
                return problem
    return None


def _native(value: Any) -> bool:
    t = type(value)
    if t is str:
        return _utf8(value)
    if t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)
    if t is list:
        return all(_native(v) for v in value)
    if t is dict:
        return all(type(k) is str and _native(v) for k, v in value.items())
    return False


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__qualname__})"


def _type_repr(tp: Any) -> str:
    if tp is Any:
        return "Any"
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp)


_codecs: dict[Any, Codec] = {}


def codec(tp: Any) -> Codec:
    """The codec of a declared type (cached: one TypeAdapter per type)."""
    try:
        return _codecs[tp]
    except KeyError:
        c = _codecs[tp] = Codec(tp)
        return c
    except TypeError:  # an unhashable annotation: build one each time
        return Codec(tp)


_declared: dict[type, Codec] = {}


def _declared_codec(effect_type: type) -> Codec:
    try:
        return _declared[effect_type]
    except KeyError:
        c = _declared[effect_type] = codec(result_type(effect_type))
        return c


_call_returns: dict[Any, Codec] = {}


def _call_codec(fn: Any) -> Codec:
    key = getattr(fn, "__func__", fn)
    try:
        return _call_returns[key]
    except KeyError:
        pass
    except TypeError:
        return codec(Any)
    try:
        hints = typing.get_type_hints(key)
    except Exception:
        # Unresolvable annotations (forward references to names that do not exist at run
        # time) leave the result untyped: plain JSON only.
        hints = {}
    c = codec(hints.get("return", Any))
    try:
        _call_returns[key] = c
    except TypeError:
        pass
    return c


def result_codec(effect: Any) -> Codec:
    """The codec for an effect's result: its declared type, or the instance's own for `Yield`
    (`input`) and `Call` (the function's return annotation)."""
    t = type(effect)
    if t is Call:
        return _call_codec(effect._fn)
    if isinstance(effect, Yield):  # a `Receive` too
        wanted = effect.input
        return codec(wanted) if wanted is not None else _declared_codec(t)
    return _declared_codec(t)


class EffectInfo:
    """What recording needs to know about one effect type, computed once.

    `raw`: the result types stored as they are, with nothing to check (what the declared type
    keeps unchanged: `int` for `Effect[int]`, any JSON scalar but a float for an undeclared
    one); `text`: whether ASCII text is, too (other text is checked for lone surrogates)."""

    __slots__ = (
        "codec",
        "dump_args",
        "factory",
        "fields",
        "handling",
        "name",
        "outside",
        "raw",
        "text",
        "where",
    )

    def __init__(self, effect_type: type) -> None:
        self.name = effect_name(effect_type)
        # Whether the logger runs it outside itself (a Yield, an at-most-once effect).
        self.outside = needs_outside(effect_type)
        # What the logger does with an entry for it (then by the entry's handler): leave it
        # ("throw": raising an error is deterministic), run it outside itself ("outside": a
        # sleep records its wake-up time first), or record it on the fast path ("record").
        self.handling = (
            "throw"
            if issubclass(effect_type, Throw)
            else "outside"
            if self.outside or issubclass(effect_type, Sleep)
            else "record"
        )
        self.where = f"{self.name}: result"
        self.dump_args = _dumper(effect_type)
        self.fields = _arg_fields(effect_type)
        # None: the result type depends on the instance (Yield's input, Call's function).
        self.codec: Codec | None = (
            None
            if effect_type is Call or issubclass(effect_type, Yield)
            else _declared_codec(effect_type)
        )
        c = self.codec
        self.raw: frozenset[type] = frozenset()
        self.text = False
        if c is not None and c.kind == "primitive":
            self.raw = _RAW & {c.tp}
            self.text = c.tp is str
        elif c is not None and c.kind == "untyped" and c.tp in (Any, object):
            self.raw = _RAW
            self.text = True
        # The factories of the logger's recording functions for this type (without and with
        # replay), generated on first use (`_recorder`).
        self.factory: Any = None

    def recorded_args(self, kept: Any) -> dict[str, Any]:
        """The arguments of an entry the recording fast path kept (`_recorder`): a dict as it
        is; else the value of the lone argument, or the effect itself."""
        if type(kept) is dict:
            return kept
        fields = self.fields
        if len(fields) == 1:
            return {fields[0]: kept}
        return self.dump_args(kept)


_infos: dict[type, EffectInfo] = {}


def effect_info(effect_type: type) -> EffectInfo:
    """The cached `EffectInfo` of an effect type."""
    try:
        return _infos[effect_type]
    except KeyError:
        info = _infos[effect_type] = EffectInfo(effect_type)
        return info


# -- errors -----------------------------------------------------------------------------------


def storable_text(text: str) -> str:
    """`text` as it can be stored: a lone surrogate (an error message naming a file whose
    name is not UTF-8) becomes a backslash escape."""
    return text if _utf8(text) else text.encode("utf-8", "backslashreplace").decode()


def dump_error(err: BaseException) -> ErrorInfo:
    """The recorded form of an exception."""
    info: ErrorInfo = {"type": type_name(type(err)), "message": storable_text(str(err))}
    args = list(err.args)
    if _native(args):
        info["args"] = args
    return info


def _lookup(name: str) -> Any:
    # Only modules already imported: replaying a log must never import code named by it.
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj: Any = module
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
                if obj is None:
                    return None
            return obj
    return None


def load_error(info: ErrorInfo) -> Exception:
    """Rebuild a recorded exception: the class itself when it is a builtin or defined in an
    imported module and accepts its recorded arguments, else a `ReplayedError`."""
    cls = _lookup(info["type"])
    if isinstance(cls, type) and issubclass(cls, Exception):
        args = info.get("args")
        try:
            err = cls(*args) if args is not None else cls(info["message"])
        except Exception:
            pass
        else:
            if isinstance(err, Exception):
                return err
    return ReplayedError(info["type"], info["message"])
