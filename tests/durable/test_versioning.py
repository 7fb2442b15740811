"""Versioning: a changed computation replays old runs or fails loudly; `patched` branches."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from effects import (
    Call,
    ComputationFunction,
    DivergenceError,
    Done,
    Effect,
    LogError,
    Suspend,
    Throw,
    Yield,
    computation,
    handler,
    start,
    with_handler,
)
from effects.durable import EffectLogger, Log, patched

NAME = "tests.durable.versioning.signup"


class CreateUser(Effect[int]):
    email: str


class SendWelcome(Effect[None]):
    uid: int


class Side:
    """Handlers recording the side effects they perform."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def handlers(self) -> Any:
        def create(e: CreateUser) -> int:
            self.done.append(f"create {e.email}")
            return 42

        def welcome(e: SendWelcome) -> None:
            self.done.append(f"welcome {e.uid}")

        return handler({CreateUser: create, SendWelcome: welcome})


def audit(uid: int) -> str:
    return f"audited {uid}"


def signup_version(version: int, body: str) -> ComputationFunction[Any, Any]:
    """The `signup` computation as deployed at `version`: each one has the same name and the same
    qualified name, as a redeployed module would."""

    def make() -> ComputationFunction[Any, Any]:
        @computation(name=NAME, version=version)
        def signup(email: str) -> Generator[Any, Any, Any]:
            uid = yield CreateUser(email)
            if body == "reordered":
                yield SendWelcome(uid)
            plan = yield Yield("which plan?")
            if body == "patched" and (yield from patched("welcome-mail")):
                yield SendWelcome(uid)
            if body == "patched-twice":
                if (yield from patched("welcome-mail")):
                    yield SendWelcome(uid)
                if (yield from patched("audit")):
                    yield Call(audit, uid)
            if body == "deprecated":
                # The "welcome-mail" patch is now unconditional: every run still in flight
                # went through it.
                yield SendWelcome(uid)
            confirm = yield Yield(f"confirm {plan}?")
            return (uid, plan, confirm)

        return signup

    return make()


def suspended_log(fn: ComputationFunction[Any, Any], side: Side, *answers: Any) -> Log:
    out = start(with_handler(fn("a@b.c"), EffectLogger(computation=fn)), side.handlers())
    for a in answers:
        assert isinstance(out, Suspend)
        out = out.resume(a)
    assert isinstance(out, Suspend), out
    log: Log = out.data[EffectLogger]
    return Log.model_validate_json(log.model_dump_json())


def resume(fn: ComputationFunction[Any, Any], log: Log, side: Side) -> Any:
    return start(with_handler(fn("a@b.c"), EffectLogger(log, computation=fn)), side.handlers())


def test_compatible_new_version_replays() -> None:
    """A run started on version 1 resumes under version 2 when the code replays the same
    effects; the new log says which version wrote it last."""
    side = Side()
    log = suspended_log(signup_version(1, "plain"), side)
    assert (log.computation, log.version) == (NAME, 1)
    out = resume(signup_version(2, "plain"), log, side)
    assert isinstance(out, Suspend)
    assert out.data[EffectLogger].version == 2
    out = out.resume("pro")
    assert isinstance(out, Suspend)
    assert out.resume(True) == Done((42, "pro", True))
    assert side.done == ["create a@b.c"]


def test_incompatible_new_version_fails_loudly() -> None:
    """A version whose effects differ where the old run already went raises DivergenceError:
    never a silently wrong replay."""
    side = Side()
    log = suspended_log(signup_version(1, "plain"), side)
    out = resume(signup_version(2, "reordered"), log, side)
    assert isinstance(out, Throw)
    assert isinstance(out.error, DivergenceError)
    assert out.error.position == 1
    assert "SendWelcome" in out.error.got
    assert side.done == ["create a@b.c"]


def test_older_code_cannot_replay_a_newer_log() -> None:
    """A log last written by version 2 is refused by version 1 code."""
    side = Side()
    log = suspended_log(signup_version(2, "plain"), side)
    with pytest.raises(LogError, match="written by version 2"):
        EffectLogger(log, computation=signup_version(1, "plain"))


def test_patched_is_true_for_new_runs_and_recorded() -> None:
    """A new run takes the patched path; the decision is an entry of its log and replays."""
    side = Side()
    v2 = signup_version(2, "patched")
    log = suspended_log(v2, side, "basic")
    assert side.done == ["create a@b.c", "welcome 42"]
    patch = [e for e in log.entries if e.effect == "effects.durable.Patched"]
    assert [(p.args, p.result) for p in patch] == [({"patch_id": "welcome-mail"}, True)]
    out = resume(v2, log, side)
    assert isinstance(out, Suspend)
    assert out.value == "confirm basic?"
    assert side.done == ["create a@b.c", "welcome 42"]


def test_patched_is_false_for_runs_recorded_before_the_patch() -> None:
    """A run that passed the patch point under the old code replays the old path."""
    side = Side()
    log = suspended_log(signup_version(1, "plain"), side, "basic")  # waits at "confirm"
    assert side.done == ["create a@b.c"]
    v2 = signup_version(2, "patched")
    for _ in range(2):  # the decision is the same on every cold resume
        out = resume(v2, log, side)
        assert isinstance(out, Suspend)
        assert out.value == "confirm basic?"
        log = Log.model_validate_json(out.data[EffectLogger].model_dump_json())
    assert side.done == ["create a@b.c"]  # no welcome mail for the old run
    assert out.resume(True) == Done((42, "basic", True))


def test_patched_is_true_when_an_old_run_reaches_it_live() -> None:
    """An old run that had not reached the patch point yet takes the new path."""
    side = Side()
    log = suspended_log(signup_version(1, "plain"), side)  # waits at "which plan?"
    out = resume(signup_version(2, "patched"), log, side)
    assert isinstance(out, Suspend)
    out = out.resume("pro")
    assert isinstance(out, Suspend)
    assert side.done == ["create a@b.c", "welcome 42"]
    new = out.data[EffectLogger]
    assert [e.effect.rsplit(".", 1)[1] for e in new.entries] == [
        "CreateUser",
        "Yield",
        "Patched",
        "SendWelcome",
        "Yield",
    ]


def test_two_patches_in_a_row() -> None:
    """A log recorded with the first patch only: the first replays True, the second (added
    later) is False on replay."""
    side = Side()
    log = suspended_log(signup_version(2, "patched"), side, "basic")
    v3 = signup_version(3, "patched-twice")
    out = resume(v3, log, side)
    assert isinstance(out, Suspend)
    assert out.value == "confirm basic?"
    assert side.done == ["create a@b.c", "welcome 42"]
    entries = out.data[EffectLogger].entries
    assert not [e for e in entries if e.effect.endswith(".Call")]  # no audit for this run
    patches = [e.args for e in entries if e.effect.endswith("Patched")]
    assert patches == [{"patch_id": "welcome-mail"}]


def test_removed_patch_call_still_replays() -> None:
    """Once every old run is done, the patch check can go: its markers in newer logs are
    skipped on replay."""
    side = Side()
    log = suspended_log(signup_version(2, "patched"), side, "basic")
    side.done.clear()
    out = resume(signup_version(3, "deprecated"), log, side)
    assert isinstance(out, Suspend)
    assert out.value == "confirm basic?"
    assert side.done == []
    assert out.resume(False) == Done((42, "basic", False))


def test_patched_without_a_logger_is_true() -> None:
    """Outside a durable run, every patch is in effect."""

    def comp() -> Generator[Any, Any, Any]:
        return (yield from patched("anything"))

    assert start(comp()) == Done(True)


def test_computation_identity_is_recorded() -> None:
    """The log of a run names its computation and version."""
    fn = signup_version(5, "plain")
    out = start(with_handler(fn("x@y.z"), EffectLogger(computation=fn)), Side().handlers())
    assert isinstance(out, Suspend)
    log = out.data[EffectLogger]
    assert (log.computation, log.version) == (NAME, 5)
