"""The guide "a multi-step wizard without a web framework" runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from effects import Cancelled, Done, Suspend

pytestmark = pytest.mark.anyio

GUIDE = Path(__file__).parent.parent / "docs" / "guides" / "wizard-without-web.md"


@pytest.fixture
def guide() -> dict[str, Any]:
    """The guide's Python blocks, executed in order as one module."""
    text = GUIDE.read_text()
    source = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    namespace: dict[str, Any] = {"__name__": "wizard_guide"}
    exec(compile(source, str(GUIDE), "exec"), namespace)
    return namespace


async def test_terminal_owner_matches_the_transcript(
    guide: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The `_sync` owner reaches Done, re-asking after each invalid answer as shown."""
    answers = ["Ada", "gold", "pro", "500", "12", "yes"]
    with anyio.fail_after(10):
        out = await guide["run_wizard"](guide["scripted"](answers))
    assert out == Done({"created": True, "id": 1})
    assert guide["ACCOUNTS"] == {1: {"name": "Ada", "plan": "pro", "seats": 12}}
    printed = capsys.readouterr().out.splitlines()
    transcript = re.findall(r"^  invalid: .*$", GUIDE.read_text(), re.M)
    assert printed == transcript


async def test_event_driven_owner(guide: dict[str, Any]) -> None:
    """The message-driven owner finishes, or cancels when input runs out or is invalid."""
    with anyio.fail_after(10):
        seen = await guide["chat"](["Bob", "free", "no"])
        assert [type(m.outcome) for m in seen] == [Suspend, Suspend, Suspend, Done]
        assert [m.outcome.data[guide["State"]] for m in seen[:3]] == [
            "step 1 of 4",
            "step 2 of 4",
            "step 4 of 4",
        ]
        assert seen[-1].outcome == Done({"created": False})
        seen = await guide["chat"](["Bob"])
        assert seen[-1].outcome == Cancelled("no more input")
        seen = await guide["chat"](["Bob", "gold"])
        assert seen[-1].outcome == Cancelled("cannot understand the answer")
        assert all(m.tag == "chat" for m in seen)
