"""How the effect logger records in-memory effects: the fast path keeps what the general path
would store (and refuses what it would refuse), entries are built when the log is read, and
interceptors installed inside a logger see ordinary results."""

from __future__ import annotations

import gc
import math
from collections.abc import Generator
from types import GeneratorType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from effects import (
    Done,
    Effect,
    Handler,
    InScope,
    SerializationError,
    State,
    Suspend,
    Yield,
    handler,
    start,
    with_handler,
)
from effects.durable import EffectLogger, Log, LogEntry, LoopDone, durable_loop
from effects.durable._serialize import _dump_slow, codec, fingerprint


class Probe(Effect[Any]):
    """An effect with an undeclared result type (plain JSON only)."""

    value: Any


class Count(Effect[int]):
    """An effect with a declared `int` result."""

    value: Any


class Text(Effect[str]):
    """An effect with a declared `str` result."""

    value: Any


class Pair(Effect[float]):
    """Two fields, a declared `float` result."""

    a: Any
    b: Any


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
    st.text(alphabet=st.characters(codec="ascii")),
)


def expected_args(effect: Any) -> dict[str, Any] | None:
    """What the general path stores as `effect`'s arguments (None: it refuses them)."""
    try:
        return _dump_slow(effect)
    except SerializationError:
        return None


def expected_result(effect_type: type, value: Any) -> Any:
    """What the general path stores as a result of `effect_type` (a SerializationError if it
    refuses it)."""
    c = codec(effect_type.__effect_result__)  # type: ignore[attr-defined]
    try:
        return c.dump(value, "probe")
    except SerializationError as err:
        return err


def record_one(effect: Any, answer: Any) -> tuple[Any, Log]:
    """Run one effect under a logger, answered with `answer`; its outcome and the log."""

    def comp() -> Generator[Any, Any, Any]:
        try:
            got = yield effect
        except SerializationError as err:
            got = err
        yield Yield("end")
        return got

    out = start(with_handler(comp(), EffectLogger()), handler({type(effect): lambda e: answer}))
    assert isinstance(out, Suspend)
    log: Log = out.data[EffectLogger]
    return out.resume(None), log


@settings(max_examples=300, deadline=None)
@given(value=scalars, answer=scalars, kind=st.sampled_from([Probe, Count, Text]))
@example(value="caf\xe9", answer="\udce9", kind=Text)
@example(value=float("nan"), answer=1, kind=Count)
@example(value=1, answer=float("inf"), kind=Probe)
@example(value=True, answer=True, kind=Count)
def test_the_fast_path_stores_what_the_general_path_would(
    value: Any, answer: Any, kind: Any
) -> None:
    """Any scalar argument and result: the entry holds exactly what the general path (the
    argument encoder, the declared type's codec) stores, with the same fingerprint; what it
    refuses (NaN, infinities, lone surrogates, a value the declared type does not hold) fails
    at the effect with SerializationError and records no result."""
    effect = kind(value)
    args = expected_args(effect)
    result = expected_result(kind, answer)
    outcome, log = record_one(effect, answer)
    assert isinstance(outcome, Done)
    got = outcome.value
    if args is None:
        assert isinstance(got, SerializationError)
        assert "argument 'value'" in str(got)
        assert [e.effect for e in log.entries] == ["effects.Yield"]
        return
    entry = log.entries[0]
    assert entry.args == args
    assert entry.fingerprint == fingerprint(args)
    if isinstance(result, SerializationError):
        assert isinstance(got, SerializationError)
        assert entry.status == "error"
        assert entry.error is not None
        assert entry.error["type"] == "effects.SerializationError"
    else:
        assert got is answer or (isinstance(got, float) and math.isnan(got) is False)
        assert entry.status == "done"
        assert entry.result == result
        assert type(entry.result) is type(result)
    # What was stored reads back as stored.
    assert Log.model_validate_json(log.model_dump_json()) == log


@settings(max_examples=150, deadline=None)
@given(a=scalars, b=scalars)
def test_several_fields_are_checked_each(a: Any, b: Any) -> None:
    """An effect with two fields: stored as the general path would, or refused at the effect
    naming the field that cannot be stored."""
    effect = Pair(a, b)
    args = expected_args(effect)
    outcome, log = record_one(effect, 0.5)
    assert isinstance(outcome, Done)
    if args is None:
        assert isinstance(outcome.value, SerializationError)
        return
    assert outcome.value == 0.5
    assert log.entries[0].args == args
    assert log.entries[0].fingerprint == fingerprint(args)


class Score(Effect[int]):
    n: int


def _log_entries_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is LogEntry)


def test_entries_are_built_when_the_log_is_read() -> None:
    """Recording an in-memory effect builds no `LogEntry` (nor its fingerprint): a run holds
    its entries in a compact form until a checkpoint, a suspension or `logger.log` reads
    them; then each is built once."""

    def comp() -> Generator[Any, Any, Any]:
        total = 0
        for i in range(1000):
            total += yield Score(i)
        return total

    logger = EffectLogger()
    before = _log_entries_alive()
    assert run_logged(comp(), logger) == sum(2 * i for i in range(1000))
    assert _log_entries_alive() <= before  # nothing built: nobody read the log
    first = logger.log
    assert len(first.entries) == 1000
    assert all(type(e) is LogEntry for e in first.entries)
    assert logger.log.entries == first.entries
    assert all(a is b for a, b in zip(logger.log.entries, first.entries, strict=True))


def run_logged(comp: Any, logger: EffectLogger) -> Any:
    out = start(with_handler(comp, logger), handler({Score: lambda e: 2 * e.n}))
    assert isinstance(out, Done)
    return out.value


def test_entries_read_mid_run_stay_in_order_through_loop_pruning() -> None:
    """Entries built at one suspension and those recorded after it, across loop iterations
    that prune the log: every snapshot is the log in order, entries built once."""

    def step(i: int) -> Generator[Any, Any, Any]:
        if i == 3:
            return LoopDone(i)
        yield Score(i)
        yield Yield(f"at {i}")
        yield Score(10 + i)
        yield Score(20 + i)
        return i + 1

    def comp() -> Generator[Any, Any, Any]:
        done = yield from durable_loop(step, 0, key="steps")
        yield Score(99)
        return done

    def names(log: Log) -> list[str]:
        return [f"{e.effect.rsplit('.', 1)[1]}:{e.result}" for e in log.entries]

    out = start(with_handler(comp(), EffectLogger()), handler({Score: lambda e: e.n}))
    snapshots = []
    while isinstance(out, Suspend):
        log = out.data[EffectLogger]
        snapshots.append(names(log))
        seqs = [e.seq for e in log.entries]
        assert seqs == sorted(set(seqs))
        out = out.resume(None)
    assert out == Done(3)
    state = "LoopState:{'iteration': %d, 'state': %d}"
    assert snapshots == [
        [state % (0, 0), "Score:0", "Yield:None"],
        [state % (1, 1), "Score:1", "Yield:None"],
        [state % (2, 2), "Score:2", "Yield:None"],
    ]


# -- interceptors inside a logger --------------------------------------------------------------


class Ask(Effect[str]):
    question: str


def refine(effect: Ask) -> Generator[Any, Any, str]:
    """A handler written as a computation that asks the next handler out."""
    answer = yield Ask(effect.question + "!")
    return f"refined({answer})"


class Observe(Handler):
    """An interceptor that records every result it sees, computations by their answer."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def intercept(self, table: Any) -> None:
        for t, (fn, home, owner) in list(table.items()):
            if home is None or t is not Ask:
                continue

            def wrapper(effect: Any, fn: Any = fn, home: Any = home) -> Any:
                result = fn(effect)
                if type(result) is InScope:
                    return InScope(self.watch(effect, result.comp), result.scope)
                if type(result) is GeneratorType:
                    return InScope(self.watch(effect, result), home)
                self.seen.append((effect, result))
                return result

            table[t] = (wrapper, home, owner)

    def watch(self, effect: Any, comp: Any) -> Generator[Any, Any, Any]:
        value = yield from comp
        self.seen.append((effect, value))
        return value


def asks() -> Generator[Any, Any, str]:
    first = yield Ask("q")
    yield State.put(first)
    return first + "/" + (yield Ask("p"))


def test_an_interceptor_inside_a_logger_sees_its_results_as_values() -> None:
    """The logger's entries are called directly by the hot loop; an interceptor installed
    inside it still sees ordinary results: plain values, and the handler computations it
    hands over (which still run where their handler would)."""
    seen: list[Any] = []
    inner = handler({Ask: refine})
    outer = handler({Ask: lambda e: f"outer:{e.question}"})
    logs: list[Log] = []
    comp = with_handler(with_handler(asks(), Observe(seen)), EffectLogger(on_log=logs.append))
    out = start(comp, State(""), inner, outer)
    assert out == Done("refined(outer:q!)/refined(outer:p!)")
    assert seen == [(Ask("q"), "refined(outer:q!)"), (Ask("p"), "refined(outer:p!)")]
    assert [(e.args, e.result) for e in logs[0].entries] == [
        ({"question": "q"}, "refined(outer:q!)"),
        ({"question": "p"}, "refined(outer:p!)"),
    ]


@pytest.mark.parametrize("answer_with", ["value", "computation"])
def test_nested_loggers_record_the_same_entries(answer_with: str) -> None:
    """A logger inside another: both record every effect, and a replay of the outer log
    (the inner logger recording afresh) gives the same run and the same inner log."""
    answer: Any = refine if answer_with == "computation" else (lambda e: f"plain:{e.question}")
    outer_logs: list[Log] = []
    inner_logs: list[Log] = []

    def comp() -> Generator[Any, Any, Any]:
        first = yield from asks()
        more = yield Yield("more?")
        return f"{first}+{more}"

    def nested(outer_log: Log | None = None, inner_log: Log | None = None) -> Any:
        inner = EffectLogger(inner_log, on_log=inner_logs.append)
        outer = EffectLogger(outer_log, on_log=outer_logs.append)
        body = with_handler(with_handler(comp(), inner), outer)
        return start(body, State(""), handler({Ask: answer}), handler({Ask: lambda e: "o"}))

    out = nested()
    assert isinstance(out, Suspend)
    done = out.resume("yes")
    assert isinstance(done, Done)
    outer_log, inner_log = outer_logs[-1], inner_logs[-1]
    assert [(e.effect, e.args, e.result) for e in outer_log.entries] == [
        (e.effect, e.args, e.result) for e in inner_log.entries
    ]
    assert len(outer_log.entries) == 3
    assert nested(outer_log) == done  # the whole run, Yield included, from the outer log
    assert [(e.effect, e.args, e.result) for e in inner_logs[-1].entries] == [
        (e.effect, e.args, e.result) for e in inner_log.entries
    ]


def test_a_ci_replay_stops_before_an_in_memory_effect_past_the_log() -> None:
    """`replay` (the CI check) wraps the logger's recording wrappers: an in-memory effect the
    log does not hold yet ends the replay instead of reaching its handler."""
    from effects import computation
    from effects.durable import replay

    calls: list[int] = []

    @computation(name="t.recording.two_scores")
    def two_scores() -> Generator[Any, Any, Any]:
        first = yield Score(1)
        return first + (yield Score(2))

    def score(e: Score) -> int:
        calls.append(e.n)
        return e.n

    logs: list[Log] = []
    comp = two_scores()
    assert start(
        with_handler(comp, EffectLogger(on_log=logs.append)), handler({Score: score})
    ) == Done(3)
    cut = Log(
        computation=logs[0].computation,
        version=logs[0].version,
        run_id=logs[0].run_id,
        entries=logs[0].entries[:1],
    )
    calls.clear()
    found = replay(cut, two_scores(), handler({Score: score}))
    assert found.end == "in progress"
    assert found.entries == 1
    assert calls == []


class Base(Effect[int]):
    n: int


class Derived(Base):
    extra: str


def test_a_subclass_answered_by_its_bases_handler_is_recorded_as_itself() -> None:
    """The recording function of a handled type is generated for that type; a subclass the
    interpreter resolves to the same handler is recorded under its own name with its own
    fields, and replays from them."""

    def comp() -> Generator[Any, Any, Any]:
        a = yield Base(1)
        b = yield Derived(2, "x")
        c = yield Derived(3, "y")
        return [a, b, c, (yield Yield("end"))]

    handlers = handler({Base: lambda e: e.n * 10})
    out = start(comp(), EffectLogger(), handlers)
    assert isinstance(out, Suspend)
    log: Log = out.data[EffectLogger]
    assert [(e.effect.rsplit(".", 1)[1], e.args, e.result) for e in log.entries[:3]] == [
        ("Base", {"n": 1}, 10),
        ("Derived", {"n": 2, "extra": "x"}, 20),
        ("Derived", {"n": 3, "extra": "y"}, 30),
    ]
    calls: list[Any] = []
    again = start(comp(), EffectLogger(log), handler({Base: lambda e: calls.append(e) or 0}))
    assert isinstance(again, Suspend)
    assert calls == []  # replayed, not performed
    assert again.resume("z") == Done([10, 20, 30, "z"])


def test_a_ci_replay_stops_before_a_subclass_effect_past_the_log() -> None:
    """The CI replay's guard holds for a subclass answered by its base's handler too."""
    from effects import computation
    from effects.durable import replay

    calls: list[Any] = []

    @computation(name="t.recording.base_then_derived")
    def base_then_derived() -> Generator[Any, Any, Any]:
        first = yield Base(1)
        return first + (yield Derived(2, "x"))

    handlers = handler({Base: lambda e: calls.append(e) or e.n})
    logs: list[Log] = []
    out = start(base_then_derived(), EffectLogger(on_log=logs.append), handlers)
    assert out == Done(3)
    cut = Log(
        computation=logs[0].computation,
        version=logs[0].version,
        run_id=logs[0].run_id,
        entries=logs[0].entries[:1],
    )
    calls.clear()
    found = replay(cut, base_then_derived(), handlers)
    assert (found.end, found.entries) == ("in progress", 1)
    assert calls == []


class Tags(Effect[int]):
    tags: list[str]


def test_a_mutable_argument_is_stored_as_it_was_at_the_effect() -> None:
    """Only effects whose arguments are all scalars are kept as they are until the log is
    read; a list argument is stored at the effect, so changing the list afterwards does not
    change the log."""

    def comp() -> Generator[Any, Any, Any]:
        tags = ["a"]
        n = yield Tags(tags)
        tags.append("b")
        return n

    logs: list[Log] = []
    answer = handler({Tags: lambda e: len(e.tags)})
    assert start(comp(), EffectLogger(on_log=logs.append), answer) == Done(1)
    assert logs[0].entries[0].args == {"tags": ["a"]}


def test_two_loggers_in_one_handler_list_record_the_same_entries() -> None:
    """Two interceptors installed together: the inner one is shown ordinary entries of the
    outer one's recording functions (made for it when it is installed), and both record."""
    inner_logs: list[Log] = []
    outer_logs: list[Log] = []
    inner = EffectLogger(on_log=inner_logs.append)
    outer = EffectLogger(on_log=outer_logs.append)
    out = start(asks(), inner, outer, State(""), handler({Ask: refine}), handler({Ask: str}))
    assert out == Done("refined(Ask(question='q!'))/refined(Ask(question='p!'))")
    assert [(e.effect, e.args, e.result) for e in inner_logs[0].entries] == [
        (e.effect, e.args, e.result) for e in outer_logs[0].entries
    ]
    assert [e.args for e in outer_logs[0].entries] == [{"question": "q"}, {"question": "p"}]
