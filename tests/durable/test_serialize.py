"""Typed JSON for logged arguments, results and errors: values come back as themselves."""

from __future__ import annotations

import ast
import dataclasses
import enum
from collections.abc import Callable, Generator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pydantic
import pytest

import effects.durable
from effects import (
    Call,
    Done,
    Effect,
    SerializationError,
    Suspend,
    Throw,
    Yield,
    handler,
    start,
    with_handler,
)
from effects.durable import EffectLogger, Log, ReplayedError


class User(pydantic.BaseModel):
    """A pydantic model result."""

    name: str
    born: datetime
    tags: list[str] = []


class Color(enum.Enum):
    """An enum result."""

    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Point:
    """A dataclass result."""

    x: int
    y: int


class GetUser(Effect[User]):
    uid: int


class GetTime(Effect[datetime]):
    pass


class GetId(Effect[UUID]):
    pass


class GetColor(Effect[Color]):
    pass


class GetMisc(Effect[tuple[date, Decimal, timedelta, Point, list[User], User | None]]):
    pass


class GetAnything(Effect[Any]):
    pass


class Lookup(Effect[int]):
    key: Any


class Oops(Exception):
    """A custom exception importable from this module."""


class Rejected(Exception):
    """A custom exception whose constructor takes two arguments."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


BORN = datetime(1990, 5, 17, 8, 30, tzinfo=UTC)
UID = UUID("12345678-1234-5678-1234-567812345678")
ALICE = User(name="alice", born=BORN, tags=["admin"])
MISC = (date(2024, 2, 29), Decimal("12.50"), timedelta(hours=2), Point(1, 2), [ALICE], None)


def replay_twice(comp: Callable[[], Generator[Any, Any, Any]], *handlers: Any) -> tuple[Any, Any]:
    """Run `comp` until its final Yield, then cold-resume it from the JSON of its log; return
    both prompts."""
    out = start(with_handler(comp(), EffectLogger()), *handlers)
    assert isinstance(out, Suspend), out
    text = out.data[EffectLogger].model_dump_json()
    again = start(with_handler(comp(), EffectLogger(Log.model_validate_json(text))), *handlers)
    assert isinstance(again, Suspend), again
    return out.value, again.value


def test_typed_results_come_back_as_themselves() -> None:
    """A model, a datetime, a UUID, an enum and nested typed values replay as themselves."""
    calls: list[str] = []

    def counted(name: str, value: Any) -> Callable[[Any], Any]:
        def fn(e: Any) -> Any:
            calls.append(name)
            return value

        return fn

    hs = handler(
        {
            GetUser: counted("user", ALICE),
            GetTime: counted("time", BORN),
            GetId: counted("id", UID),
            GetColor: counted("color", Color.BLUE),
            GetMisc: counted("misc", MISC),
        }
    )

    def comp() -> Generator[Any, Any, Any]:
        got = (
            (yield GetUser(1)),
            (yield GetTime()),
            (yield GetId()),
            (yield GetColor()),
            (yield GetMisc()),
        )
        return (yield Yield(got))

    first, replayed = replay_twice(comp, hs)
    assert calls == ["user", "time", "id", "color", "misc"]
    assert replayed == first == (ALICE, BORN, UID, Color.BLUE, MISC)
    user, when, uid, color, misc = replayed
    assert type(user) is User
    assert type(user.born) is datetime
    assert type(when) is datetime
    assert when.utcoffset() == timedelta(0)
    assert type(uid) is UUID
    assert color is Color.BLUE
    assert [type(v) for v in misc[:4]] == [date, Decimal, timedelta, Point]
    assert type(misc[4][0]) is User


def test_results_are_stored_as_json() -> None:
    """The log holds the JSON form of results (a model as an object, a datetime as text)."""

    def comp() -> Generator[Any, Any, Any]:
        yield GetUser(1)
        return (yield Yield("?"))

    out = start(with_handler(comp(), EffectLogger()), handler({GetUser: lambda e: ALICE}))
    assert isinstance(out, Suspend)
    entry = out.data[EffectLogger].entries[0]
    assert entry.result == {"name": "alice", "born": "1990-05-17T08:30:00Z", "tags": ["admin"]}


class Answer(pydantic.BaseModel):
    """A Yield input model."""

    amount: int
    when: date


def test_yield_answer_typed_by_input() -> None:
    """The answer to `Yield(input=Model)` is stored as JSON and replays as a `Model`."""

    def comp() -> Generator[Any, Any, Any]:
        a = yield Yield("how much?", input=Answer)
        return (yield Yield(a))

    out = start(with_handler(comp(), EffectLogger()))
    assert isinstance(out, Suspend)
    out2 = out.resume({"amount": "3", "when": "2024-01-02"})
    assert isinstance(out2, Suspend)
    log = out2.data[EffectLogger]
    assert log.entries[0].result == {"amount": 3, "when": "2024-01-02"}
    assert log.entries[0].args["input"] == f"{__name__}.Answer"
    again = start(
        with_handler(comp(), EffectLogger(Log.model_validate_json(log.model_dump_json())))
    )
    assert isinstance(again, Suspend)
    assert again.value == Answer(amount=3, when=date(2024, 1, 2))


def fetch_user(uid: int) -> User:
    return User(name=f"user{uid}", born=BORN)


def fetch_time() -> datetime:
    return BORN


def untyped_time():  # type: ignore[no-untyped-def]  # deliberately unannotated
    return BORN


def test_call_result_typed_by_return_annotation() -> None:
    """`Call(fn)` results are typed by `fn`'s return annotation."""

    def comp() -> Generator[Any, Any, Any]:
        got = ((yield Call(fetch_user, 7)), (yield Call(fetch_time)))
        return (yield Yield(got))

    first, replayed = replay_twice(comp)
    assert replayed == first == (User(name="user7", born=BORN), BORN)
    assert type(replayed[0]) is User


def test_untyped_result_must_be_plain_json() -> None:
    """A result typed `Any` that is not plain JSON could not be rebuilt: it fails at the
    effect, naming it, instead of coming back as a string or a list."""

    def comp(effect: Any) -> Generator[Any, Any, Any]:
        return (yield effect)

    out = start(with_handler(comp(Call(untyped_time)), EffectLogger()))
    assert isinstance(out, Throw)
    assert isinstance(out.error, SerializationError)
    assert "effects.Call(untyped_time): result" in str(out.error)
    assert "datetime" in str(out.error)

    anything = handler({GetAnything: lambda e: (1, 2)})
    out = start(with_handler(comp(GetAnything()), EffectLogger()), anything)
    assert isinstance(out, Throw)
    assert isinstance(out.error, SerializationError)
    assert f"{__name__}.GetAnything: result" in str(out.error)

    plain = handler({GetAnything: lambda e: {"a": [1, 2.5, None, True, "x"]}})
    assert start(with_handler(comp(GetAnything()), EffectLogger()), plain) == Done(
        {"a": [1, 2.5, None, True, "x"]}
    )


def test_result_not_matching_its_declared_type() -> None:
    """A result that does not match the declared type fails at the effect."""

    def comp() -> Generator[Any, Any, Any]:
        return (yield GetUser(1))

    out = start(with_handler(comp(), EffectLogger()), handler({GetUser: lambda e: {"x": 1}}))
    assert isinstance(out, Throw)
    assert isinstance(out.error, SerializationError)
    assert "GetUser: result" in str(out.error)
    assert "User" in str(out.error)


def test_unserializable_argument_names_effect_and_field() -> None:
    """An argument without a JSON form fails at the effect, before its handler runs."""
    calls: list[Any] = []

    def comp() -> Generator[Any, Any, Any]:
        try:
            yield Lookup(object())
        except SerializationError as err:
            return str(err)

    out = start(with_handler(comp(), EffectLogger()), handler({Lookup: calls.append}))
    assert isinstance(out, Done)
    assert f"{__name__}.Lookup" in out.value
    assert "argument 'key'" in out.value
    assert calls == []


def test_callables_and_types_are_named_in_arguments() -> None:
    """Functions, methods and classes in arguments are logged by qualified name."""

    def comp() -> Generator[Any, Any, Any]:
        yield Lookup(fetch_user)
        yield Lookup(User)
        yield Lookup(list[int])
        return (yield Yield("?"))

    out = start(with_handler(comp(), EffectLogger()), handler({Lookup: lambda e: 1}))
    assert isinstance(out, Suspend)
    keys = [e.args["key"] for e in out.data[EffectLogger].entries[:3]]
    assert keys == [f"{__name__}.fetch_user", f"{__name__}.User", "list[int]"]


def test_errors_replay_as_themselves_or_as_replayed_error() -> None:
    """Builtin exceptions and exception classes of imported modules are rebuilt as themselves
    (with their arguments); anything else becomes a ReplayedError with type name and
    message."""

    class Local(Exception):
        pass

    class Odd(Exception):
        def __init__(self, thing: object) -> None:
            super().__init__(thing)

    errors: dict[int, Exception] = {
        1: KeyError("missing"),
        2: Oops("custom"),
        3: Rejected(402, "card declined"),
        4: Local("nowhere to import from"),
        5: Odd(object()),
    }

    raised: list[int] = []

    def raise_(e: Lookup) -> int:
        raised.append(e.key)
        raise errors[e.key]

    seen: list[Exception] = []

    def comp() -> Generator[Any, Any, Any]:
        seen.clear()
        for k in sorted(errors):
            try:
                yield Lookup(k)
            except Exception as err:
                seen.append(err)
        return (yield Yield("done"))

    replay_twice(comp, handler({Lookup: raise_}))
    assert raised == [1, 2, 3, 4, 5]  # the replay raised them without calling the handler
    key_error, oops, rejected, local, odd = seen
    assert type(key_error) is KeyError
    assert key_error.args == ("missing",)
    assert type(oops) is Oops
    assert str(oops) == "custom"
    assert type(rejected) is Rejected
    assert (rejected.code, rejected.reason) == (402, "card declined")
    assert type(local) is ReplayedError
    assert local.type_name.endswith("Local")
    assert local.message == "nowhere to import from"
    assert type(odd) is ReplayedError
    assert odd.type_name.endswith("Odd")


def test_log_json_round_trip_is_exact() -> None:
    """`Log.model_validate_json(log.model_dump_json())` equals the log, and dumps the same."""

    def comp() -> Generator[Any, Any, Any]:
        yield GetUser(1)
        yield GetMisc()
        try:
            yield Lookup(3)
        except Oops:
            pass
        return (yield Yield({"q": [1.5, "x", None]}))

    def oops(e: Lookup) -> int:
        raise Oops("x")

    hs = handler({GetUser: lambda e: ALICE, GetMisc: lambda e: MISC, Lookup: oops})
    out = start(with_handler(comp(), EffectLogger()), hs)
    assert isinstance(out, Suspend)
    log = out.data[EffectLogger]
    text = log.model_dump_json()
    back = Log.model_validate_json(text)
    assert back == log
    assert back.model_dump_json() == text


def test_no_pickle_anywhere() -> None:
    """No module of effects.durable imports pickle or a relative of it."""
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "copyreg"}
    package = Path(effects.durable.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & banned, f"{path.name} imports {names & banned}"


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_floats_have_no_json_form(bad: float) -> None:
    """inf and nan cannot be stored as JSON: they fail at the effect."""

    class Measure(Effect[float]):
        pass

    def comp() -> Generator[Any, Any, Any]:
        return (yield Measure())

    out = start(with_handler(comp(), EffectLogger()), handler({Measure: lambda e: bad}))
    assert isinstance(out, Throw)
    assert isinstance(out.error, SerializationError)
