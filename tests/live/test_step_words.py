"""What a wizard's user reads: step progress from the prompt, choices with descriptions, runs
listed in words (src/bridges/live: Prompt, build_form, run_words)."""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from bridges.live import FormField, Prompt, build_form
from bridges.live._runs import run_words
from effects import Yield, start
from effects.durable import Run, RunStatus

CHOICES = {"free": "0 €", "pro": {"label": "Pro", "description": "12 €"}}
PlanName = Annotated[Literal["free", "pro"], Field(json_schema_extra={"choices": CHOICES})]


class OnField(BaseModel):
    plan: Literal["a", "b", "c", "d", "e"] = Field(
        json_schema_extra={"choices": {"a": {"label": "Alpha", "description": "first"}}}
    )


class OnType(BaseModel):
    plan: PlanName
    extras: list[PlanName] = []


def test_prompt_step_progress() -> None:
    """`step` / `steps` in a prompt dict say where the wizard is; nonsense is ignored."""
    assert Prompt.of({"title": "Name?", "step": 2, "steps": 3}).progress == "Step 2 of 3"
    assert Prompt.of({"title": "Name?", "step": 2}).progress == "Step 2"
    assert Prompt.of({"title": "Name?"}).progress == ""
    assert Prompt.of({"title": "Name?", "step": "2", "steps": True}).progress == ""
    assert Prompt.of("Name?").progress == ""


def fields(model: type[BaseModel]) -> dict[str, FormField]:
    return {f.name: f for f in build_form(model).fields}


def test_choices_with_descriptions() -> None:
    """`choices` on the field or on a reusable type give labels and descriptions, for radios,
    selects (more than four choices) and checkbox groups."""
    select = fields(OnField)["plan"]
    assert select.kind == "select"
    assert [(o.value, o.label, o.description) for o in select.options][:2] == [
        ("a", "Alpha", "first"),
        ("b", "b", ""),
    ]
    form = fields(OnType)
    radios = form["plan"]
    assert radios.kind == "radio"
    assert [(o.label, o.description) for o in radios.options] == [("free", "0 €"), ("Pro", "12 €")]
    boxes = form["extras"]
    assert boxes.kind == "checkboxes"
    assert [(o.label, o.description) for o in boxes.options] == [("free", "0 €"), ("Pro", "12 €")]


def _asking(prompt: Any) -> Generator[Any, Any, None]:
    yield Yield(prompt)


def _run(status: RunStatus, created: datetime, prompt: Any = None) -> Run:
    outcome = start(_asking(prompt)) if status is RunStatus.SUSPENDED else None
    return Run(
        id="01a2057c-9d4a-7ffc-b2f9-ead53e580c5d",
        name="onboarding",
        version=1,
        status=status,
        outcome=outcome,
        revision=3,
        created_at=created,
        updated_at=created,
        args={},
    )


def test_runs_in_words() -> None:
    """A listed run reads as what it is to its user: no status code, no id."""
    now = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    waiting = _run(RunStatus.SUSPENDED, now - timedelta(minutes=5), {"step": 2, "steps": 3})
    label, state = run_words(waiting, title="Onboarding", owner=True, now=now)
    assert label == "Onboarding, started today at 15:25 UTC"
    assert state == "Step 2 of 3: waiting for your answer"
    _, state = run_words(waiting, title="Onboarding", owner=False, now=now)
    assert state == "Step 2 of 3: waiting for its owner's answer"
    old = _run(RunStatus.DONE, now - timedelta(days=2))
    assert run_words(old, title="", owner=True, now=now) == (
        "Run, started on 29 Nov 2026 at 15:30 UTC",
        "Finished",
    )
    plain = _run(RunStatus.SUSPENDED, now, "Your name?")
    assert run_words(plain, title="X", owner=True, now=now)[1] == "Waiting for your answer"
    for status, words in [
        (RunStatus.RUNNING, "In progress…"),
        (RunStatus.FAILED, "Stopped by an error"),
        (RunStatus.CANCELLED, "Cancelled"),
    ]:
        assert run_words(_run(status, now), title="X", owner=True, now=now)[1] == words
