"""The `Effect` base class: frozen, slotted, value-equal requests with a declared result type."""

from __future__ import annotations

import sys
import typing
from collections.abc import Generator
from typing import Any, ClassVar, Generic, TypeVar, dataclass_transform, get_args, get_origin

from . import _diagnostics

R = TypeVar("R", covariant=True)

_MISSING: Any = object()


def _is_classvar(annotation: object) -> bool:
    if isinstance(annotation, str):
        # `from __future__ import annotations` leaves annotations as text; evaluating them here
        # would fail for forward references, so recognise ClassVar by its spelling.
        head = annotation.split("[", 1)[0].strip()
        return head in ("ClassVar", "typing.ClassVar", "t.ClassVar")
    return annotation is ClassVar or get_origin(annotation) is ClassVar


@dataclass_transform(frozen_default=True, eq_default=True)
class EffectMeta(type):
    """Metaclass of `Effect`: turns annotated fields into private slots behind read-only properties.

    Why a metaclass: `__slots__` must exist when the class is created, which `__init_subclass__`
    is too late for. Why private slots plus properties instead of a frozen dataclass: a raising
    `__setattr__` disables CPython's fast slot store, and effect construction is the hot path.
    """

    __effect_fields__: tuple[str, ...]
    __effect_defaults__: dict[str, Any]
    __effect_result__: Any

    def __new__(
        mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kwargs: Any
    ) -> EffectMeta:
        inherited: tuple[str, ...] = ()
        defaults: dict[str, Any] = {}
        for base in reversed(bases):
            if isinstance(base, EffectMeta):
                inherited = base.__effect_fields__
                defaults.update(base.__effect_defaults__)
        annotations: dict[str, Any] = ns.get("__annotations__", {})
        new_fields = [
            f for f, ann in annotations.items() if not _is_classvar(ann) and f not in inherited
        ]
        for f in new_fields:
            if f in ns:
                defaults[f] = ns.pop(f)
        fields = inherited + tuple(new_fields)
        seen_default = False
        for f in fields:
            if f in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{name}: field {f!r} without a default follows a field with one")
        if "__slots__" not in ns:
            ns["__slots__"] = tuple("_" + f for f in new_fields)
        cls = super().__new__(mcls, name, bases, ns, **kwargs)
        cls.__effect_fields__ = fields
        cls.__effect_defaults__ = defaults
        cls.__match_args__ = fields  # type: ignore[attr-defined,misc]
        for f in new_fields:
            slot = cls.__dict__["_" + f]
            # The slot descriptor's own __get__ is a C callable: reading a field costs no
            # Python-level frame.
            setattr(cls, f, property(slot.__get__, doc=f"The effect's `{f}` field."))
        if new_fields:
            _install_methods(cls, fields, defaults, custom=set(ns))
        elif _diagnostics.DEBUG and not fields:
            _note_init(cls, custom=set(ns))
        cls.__effect_result__ = _result_type(cls, ns)
        return cls


def _install_methods(
    cls: type, fields: tuple[str, ...], defaults: dict[str, Any], custom: set[str]
) -> None:
    params = ", ".join(f"{f}=_d_{f}" if f in defaults else f for f in fields)
    body = "\n".join(f"    self._{f} = {f}" for f in fields)
    if _diagnostics.DEBUG:  # decided at import: without it, `__init__` only stores the fields
        body += "\n    _note(self, 1)"
    env: dict[str, Any] = {f"_d_{f}": v for f, v in defaults.items()}
    env["_note"] = _diagnostics.note_created
    exec(f"def __init__(self, {params}):\n{body}\n", env)
    if "__init__" not in custom:
        init = env["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = init  # type: ignore[misc]
    elif _diagnostics.DEBUG:
        _note_custom_init(cls)
    attrs = ", ".join(f"self._{f}" for f in fields)
    others = ", ".join(f"other._{f}" for f in fields)
    env = {}
    exec(
        f"def __eq__(self, other):\n"
        f"    if type(other) is not type(self):\n"
        f"        return NotImplemented\n"
        f"    return ({attrs},) == ({others},)\n"
        f"def __hash__(self):\n"
        f"    return hash((type(self), {attrs}))\n",
        env,
    )
    for name in ("__eq__", "__hash__"):
        if name not in custom:
            setattr(cls, name, env[name])


def _note_init(cls: type, custom: set[str]) -> None:
    """Debug mode: a field-less effect records where it is created too."""
    if "__init__" in custom:
        _note_custom_init(cls)
        return

    def __init__(self: Any) -> None:
        _diagnostics.note_created(self, 1)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__  # type: ignore[misc]


def _note_custom_init(cls: type) -> None:
    """Debug mode: a hand-written `__init__` (like `Call`'s) also records where it is called."""
    original = cls.__dict__["__init__"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _diagnostics.note_created(self, 1)

    __init__.__qualname__ = original.__qualname__
    __init__.__doc__ = original.__doc__
    cls.__init__ = __init__  # type: ignore[misc]


def _result_type(cls: type, ns: dict[str, Any]) -> Any:
    for base in ns.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, EffectMeta):
            args = get_args(base)
            if args:
                arg = args[0]
                if isinstance(arg, str):
                    module = sys.modules.get(cls.__module__)
                    try:
                        arg = eval(arg, vars(module) if module else {}, vars(typing))
                    except Exception:
                        return Any
                return Any if isinstance(arg, TypeVar) else arg
    for base in cls.__mro__[1:]:
        if isinstance(base, EffectMeta):
            return base.__effect_result__
    return Any


class Effect(Generic[R], metaclass=EffectMeta):
    """A request for something to be done, answered by a handler.

    Declare fields as annotations and the result type as the generic parameter::

        class GetUser(Effect[User]):
            user_id: int

    Instances are immutable, compare and hash by value, and cost one plain `__init__` to build.
    `x = yield eff` works in any generator; `x = yield from eff` does the same and lets type
    checkers see `x: User`.
    """

    __slots__ = ()

    def __iter__(self) -> Generator[Effect[R], Any, R]:
        return (yield self)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, '_' + f)!r}" for f in type(self).__effect_fields__)
        return f"{type(self).__qualname__}({args})"

    def fields(self) -> dict[str, Any]:
        """The effect's fields as a dict, in declaration order."""
        return {f: getattr(self, "_" + f) for f in type(self).__effect_fields__}

    if _diagnostics.DEBUG:  # only then: a `__del__` costs every effect's deallocation

        def __del__(self) -> None:
            what = _describe(self)
            _diagnostics.check_dropped(self, what, f"yield {what}")


def _describe(effect: Effect[Any]) -> str:
    try:
        return repr(effect)
    except Exception:
        return type(effect).__qualname__


def result_type(effect_type: type[Effect[Any]]) -> Any:
    """The result type an effect class declares (`Any` when it declares none)."""
    return effect_type.__effect_result__
