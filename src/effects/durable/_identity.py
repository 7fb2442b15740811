"""The identity of an effect's arguments: the canonical JSON form a log stores and a fingerprint
hashes, so that replay tells "the same request" from "another request".

Two rules make the form canonical:

- **Sets are sorted.** A `set` or `frozenset` iterates in an order that depends on the
  process's hash seed (`PYTHONHASHSEED`), so its items are stored sorted by their own encoded
  JSON text: the same set gives the same JSON in every process.
- **A callable is identified by what it does**, not only by its name:

  | callable | identity |
  | --- | --- |
  | a function reachable by its module and name (decorated ones too) | `"module.qualname"` |
  | a lambda | `{"function": name, "code": digest of its code, "state": digest}` |
  | a nested function (`f.<locals>.g`) | `{"function": name, "state": digest}` |
  | `partial(f, *args, **kw)` | `{"partial": identity of f, "args": [...], "kwargs": {...}}` |
  | a bound method whose object has a JSON form | `{"method": name, "self": digest}` |
  | any other bound method, a class, a builtin | `"module.qualname"` |

  `state` covers the closure's cells and the default values; `code` the bytecode, the constants
  and the names a lambda uses. A value without a JSON form (a client, a lock) counts by its
  type only. Editing a *named* function's body is a deploy, not another request: it keeps its
  identity. A lambda's code digest depends on the Python minor version (bytecode changes between
  versions), so a run that `Call`s a lambda diverges, loudly, when replayed by another Python
  minor version; `Call` a named function where runs outlive such an upgrade.

Logs written before these rules stored every callable by name (a partial as
`"partial(module.qualname)"`) and sets in iteration order. `legacy_args` rebuilds that older
form; replay accepts an entry whose fingerprint matches it, which only an entry written in the
older form can (the two forms differ exactly where a callable gained information). Such an
entry is checked with the older precision only.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import types
from typing import Any

import pydantic_core
from pydantic_core import SchemaSerializer, core_schema

__all__ = ["encode", "legacy_encode", "type_name"]


def _public_module(module: str) -> str:
    # The library's own classes are named by the package that exports them, not by the
    # private module that defines them: stored logs must survive a reorganisation of private
    # modules (`effects._std.control.Yield` is logged as `effects.Yield`).
    if module.startswith("effects.durable._"):
        return "effects.durable"
    if module.startswith("effects._"):
        return "effects"
    return module


def type_name(obj: Any) -> str:
    """`module.qualname` of a class or function: how logs name effects and errors."""
    return f"{_public_module(obj.__module__)}.{obj.__qualname__}"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# -- the canonical form -----------------------------------------------------------------------

# Python-mode serialization keeps sets as sets (and models, dataclasses as dicts), in the same
# shape as the JSON-mode output: walking both side by side finds the lists that were sets.
_PYTHON = SchemaSerializer(core_schema.any_schema())


def encode(value: Any) -> Any:
    """The canonical JSON form of an argument value (raises `TypeError`, `ValueError` or
    `PydanticSerializationError` when it has none)."""
    try:
        return _plain(value)
    except (_NotPlain, RecursionError):  # (a list holding itself: pydantic names the cycle)
        pass
    out = pydantic_core.to_jsonable_python(value, fallback=_symbol)
    if _has_list(out):
        out = _sort_sets(_PYTHON.to_python(value), out)
    return out


class _NotPlain(Exception):
    """A value `_plain` leaves to pydantic."""


_LEAVES = (str, int, bool, type(None))
_CALLABLES = (types.FunctionType, types.MethodType, functools.partial)


def _plain(value: Any) -> Any:
    # The common case, without pydantic: builtin containers of plain values and callables,
    # giving exactly what pydantic would (tuples as lists), with sets sorted.
    t = type(value)
    if t in _LEAVES:
        return value
    if t is float:
        if value - value == 0:  # finite (nan and inf are pydantic's to decide)
            return value
        raise _NotPlain
    if t is list or t is tuple:
        for v in value:
            if type(v) not in _LEAVES:
                return [_plain(v) for v in value]
        return list(value)  # a copy, as pydantic's: the caller may change its list later
    if t is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NotPlain
            out[k] = v if type(v) in _LEAVES else _plain(v)
        return out
    if t is set or t is frozenset:
        return sorted((_plain(v) for v in value), key=_key)
    if isinstance(value, _CALLABLES):
        return _symbol(value)
    raise _NotPlain


def sort_sets(value: Any, js: Any) -> Any:
    """`js`, the JSON form of `value` by any pydantic serializer, with the lists that were sets
    in `value` sorted (a no-op when it holds no list)."""
    if not _has_list(js):
        return js
    py = value if type(value) in (set, frozenset, list, tuple, dict) else _PYTHON.to_python(value)
    return _sort_sets(py, js)


def _has_list(js: Any) -> bool:
    t = type(js)
    if t is list:
        return True
    if t is dict:
        return any(_has_list(v) for v in js.values())
    return False


def _key(js: Any) -> bytes:
    return pydantic_core.to_json(js)


def _sort_sets(py: Any, js: Any) -> Any:
    """`js` with every list that `py` holds as a set sorted by the items' JSON text."""
    t = type(js)
    if t is list:
        if isinstance(py, set | frozenset) and len(py) == len(js):
            # Both iterate the same set object: item i of one is item i of the other.
            return sorted((_sort_sets(p, j) for p, j in zip(py, js, strict=True)), key=_key)
        if isinstance(py, list | tuple) and len(py) == len(js):
            return [_sort_sets(p, j) for p, j in zip(py, js, strict=True)]
        return js
    if t is dict and type(py) is dict and len(py) == len(js):
        return {k: _sort_sets(p, j) for p, (k, j) in zip(py.values(), js.items(), strict=True)}
    return js


# -- callables --------------------------------------------------------------------------------

_local = threading.local()


def _lenient(value: Any) -> Any:
    """The canonical form of a value a callable carries, or its type's name when it has none."""
    try:
        return encode(value)
    except (TypeError, ValueError, RecursionError, pydantic_core.PydanticSerializationError):
        return {"unencodable": type_name(type(value))}


def _state_digest(parts: list[Any]) -> str:
    return _digest(pydantic_core.to_json([_lenient(p) for p in parts]))


def _const(value: Any) -> Any:
    if isinstance(value, types.CodeType):
        return _code_digest(value)
    if isinstance(value, frozenset):  # `x in {"a", "b"}` compiles to a frozenset constant
        return sorted(repr(_const(v)) for v in value)
    if isinstance(value, tuple):
        return [_const(v) for v in value]
    return repr(value)


def _code_digest(code: types.CodeType) -> str:
    # co_code is the unspecialised bytecode (stable for one Python version); constants hold
    # nested code objects, whose repr carries an address, so they are digested in turn.
    text = pydantic_core.to_json([code.co_names, [_const(c) for c in code.co_consts]])
    return _digest(code.co_code + b"\0" + text)


def _function(fn: types.FunctionType) -> Any:
    name = type_name(fn)
    qualname = fn.__qualname__
    is_lambda = qualname.endswith("<lambda>")
    if not is_lambda and "<locals>" not in qualname:
        return name
    active: set[int] = getattr(_local, "active", None) or set()
    _local.active = active
    if id(fn) in active:  # a nested function whose closure holds itself
        return name
    active.add(id(fn))
    try:
        identity: dict[str, Any] = {"function": name}
        if is_lambda:
            identity["code"] = _code_digest(fn.__code__)
        parts: list[Any] = []
        for cell in fn.__closure__ or ():
            try:
                parts.append(cell.cell_contents)
            except ValueError:  # an empty cell (a name assigned after the function)
                parts.append(None)
        parts.extend(fn.__defaults__ or ())
        parts.extend(sorted((fn.__kwdefaults__ or {}).items()))
        if parts:
            identity["state"] = _state_digest(parts)
        return identity
    finally:
        active.discard(id(fn))


def _method(method: types.MethodType) -> Any:
    name = type_name(method.__func__)
    owner = method.__self__
    if isinstance(owner, type | types.ModuleType):
        return name
    try:
        state = encode(owner)
    except (TypeError, ValueError, RecursionError, pydantic_core.PydanticSerializationError):
        return name  # an object without a JSON form (a client, a service): its method's name
    return {"method": name, "self": _digest(pydantic_core.to_json(state))}


def _partial(p: functools.partial[Any]) -> Any:
    return {
        "partial": _symbol(p.func),
        "args": [_lenient(a) for a in p.args],
        "kwargs": {k: _lenient(v) for k, v in p.keywords.items()},
    }


def _symbol(value: Any) -> Any:
    """pydantic's fallback for argument values it cannot serialize by itself: callables by
    their identity, typing constructs (`list[int]`) by their repr. Anything else is refused."""
    if isinstance(value, types.FunctionType):
        return _function(value)
    if isinstance(value, types.MethodType):
        return _method(value)
    if isinstance(value, functools.partial):
        return _partial(value)
    return _legacy_symbol(value)


# -- the form of logs written before the canonical rules -------------------------------------


def _legacy_symbol(value: Any) -> Any:
    if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        return type_name(value)
    if isinstance(value, types.MethodType):
        return type_name(value.__func__)
    if isinstance(value, functools.partial):
        return f"partial({_legacy_symbol(value.func)})"
    if isinstance(value, types.GenericAlias | types.UnionType):
        return repr(value)
    if type(value).__module__ == "typing":
        return repr(value)
    raise TypeError(f"cannot serialize {type(value).__qualname__} as JSON")


def legacy_encode(value: Any) -> Any:
    """How the previous format stored an argument value: callables by name only, sets in
    iteration order."""
    return pydantic_core.to_jsonable_python(value, fallback=_legacy_symbol)
