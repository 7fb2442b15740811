"""effects.testing: scripted handler and deterministic doubles."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import pytest

from effects import Clock, Effect, Fresh, Random, run
from effects.testing import (
    DeterministicFresh,
    FixedClock,
    FixedRandom,
    Scripted,
    ScriptMismatch,
    SeededRandom,
)


class GetUser(Effect[str]):
    user_id: int


class Send(Effect[None]):
    to: str
    text: str


def onboard(user_id: int) -> Generator[Any, Any, str]:
    name = yield GetUser(user_id)
    yield Send(name, "welcome")
    return name


def test_scripted_answers_in_order() -> None:
    """A script answers matching effects in order and can assert it was used up."""
    script = Scripted((GetUser(1), "ada"), (Send("ada", "welcome"), None))
    assert run(onboard(1), script) == "ada"
    script.assert_done()


def test_scripted_reports_diff_on_unexpected_effect() -> None:
    """The first unexpected effect fails with expected vs got."""
    script = Scripted((GetUser(1), "ada"), (Send("ada", "hello"), None))
    with pytest.raises(ScriptMismatch) as info:
        run(onboard(1), script)
    assert "step 1" in str(info.value)
    assert "Send(to='ada', text='hello')" in str(info.value)
    assert "Send(to='ada', text='welcome')" in str(info.value)


def test_scripted_unused_steps_fail_assert_done() -> None:
    """Steps left over make assert_done fail."""
    script = Scripted((GetUser(1), "ada"), (Send("ada", "welcome"), None), (GetUser(2), "x"))
    run(onboard(1), script)
    with pytest.raises(ScriptMismatch, match="never performed"):
        script.assert_done()


def test_scripted_exception_result_is_raised() -> None:
    """An exception as a scripted result is raised at the yield."""
    with pytest.raises(LookupError):
        run(onboard(1), Scripted((GetUser(1), LookupError("no user"))))


def test_deterministic_doubles() -> None:
    """Fixed clock, seeded and fixed random, counting uuids."""
    at = datetime(2030, 5, 1, tzinfo=UTC)
    assert run(Clock.now(), FixedClock(at)) == at

    def ids() -> Generator[Any, Any, list[uuid.UUID]]:
        return [(yield Fresh.uuid()), (yield Fresh.uuid())]

    assert run(ids(), DeterministicFresh()) == [uuid.UUID(int=1), uuid.UUID(int=2)]
    assert run(Random.randint(1, 100), SeededRandom(3)) == run(
        Random.randint(1, 100), SeededRandom(3)
    )

    def rolls() -> Generator[Any, Any, list[Any]]:
        return [(yield Random.randint(1, 6)), (yield Random.choice("xyz")), (yield Random.random())]

    assert run(rolls(), FixedRandom([4, 2, 0.5])) == [4, "z", 0.5]
    with pytest.raises(ValueError, match="outside"):
        run(Random.randint(1, 3), FixedRandom([9]))
