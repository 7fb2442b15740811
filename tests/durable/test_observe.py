"""Observability of durable runs (src/effects/durable/_observe.py): log records with structured
fields for every step and external effect, and OpenTelemetry spans (the SDK's in-memory
exporter), on real SQLite files."""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from effects import Effect, MissingHandlerError, Yield, computation, handler
from effects.durable import DurableRunner, RunStatus, _observe

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async drivers (aiosqlite) run on asyncio only."""
    return "asyncio"


class Reserve(Effect[str]):
    """An external effect performed before the question."""

    sku: str


class Charge(Effect[str]):
    """An external effect performed after the answer."""

    amount: int


class Note(Effect[None]):
    """A handled effect that is not external: never observed."""

    text: str


def reserve(effect: Reserve) -> str:
    return f"r-{effect.sku}"


async def charge(effect: Charge) -> str:
    if effect.amount < 0:
        raise ValueError("negative amount")
    return f"c-{effect.amount}"


HANDLERS = [
    handler({Reserve: reserve, Charge: charge}, name="shop", external=True),
    handler({Note: lambda effect: None}, name="notes"),
]


@computation(name="observe.order")
def order(amount: int) -> Generator[Any, Any, str]:
    reservation = yield Reserve("tea")
    yield Note("reserved")
    ok = yield Yield("pay?", input=bool)
    if not ok:
        return reservation
    return (yield Charge(amount))


def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def test_steps_and_external_effects_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each step logs when it begins and ends, and each external effect it performs, with
    `run_id`, `computation`, `step`, `status` as record attributes; replayed effects are not
    logged again (a new runner resumes the run cold)."""
    caplog.set_level(logging.DEBUG, logger="effects.durable")
    async with DurableRunner(url(tmp_path), handlers=HANDLERS, owner="a") as runner:
        run = await runner.start(order(12))
    async with DurableRunner(url(tmp_path), handlers=HANDLERS, owner="b") as runner:
        done = await runner.resume(run.id, True)
    assert done.status == RunStatus.DONE

    steps = records(caplog, "effects.durable.runs")
    assert [(r.step, getattr(r, "status", None)) for r in steps] == [  # type: ignore[attr-defined]
        ("start", None),
        ("start", "suspended"),
        ("resume", None),
        ("resume", "done"),
    ]
    for record in steps:
        assert record.run_id == run.id  # type: ignore[attr-defined]
        assert record.computation == "observe.order"  # type: ignore[attr-defined]
        assert record.version == 1  # type: ignore[attr-defined]
    began, suspended, _, ended = steps
    assert began.levelno == logging.INFO  # a run's first step
    assert suspended.levelno == logging.INFO
    assert suspended.duration >= 0  # type: ignore[attr-defined]
    assert ended.revision > suspended.revision  # type: ignore[attr-defined]
    assert f"run {run.id} (observe.order) ended after its resume step" in ended.getMessage()

    effects = records(caplog, "effects.durable.effects")
    assert [r.effect for r in effects] == [  # type: ignore[attr-defined]
        f"{__name__}.Reserve",
        f"{__name__}.Charge",
    ]
    assert [r.step for r in effects] == ["start", "resume"]  # type: ignore[attr-defined]
    assert all(r.run_id == run.id for r in effects)  # type: ignore[attr-defined]


async def test_failures_are_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failed run is a WARNING with status `failed`; the effect that raised says so."""
    caplog.set_level(logging.DEBUG, logger="effects.durable")
    async with DurableRunner(url(tmp_path), handlers=HANDLERS) as runner:
        run = await runner.start(order(-1))
        failed = await runner.resume(run.id, True)
    assert failed.status == RunStatus.FAILED
    last = records(caplog, "effects.durable.runs")[-1]
    assert last.levelno == logging.WARNING
    assert last.status == "failed"  # type: ignore[attr-defined]
    raised = records(caplog, "effects.durable.effects")[-1]
    assert raised.error == "ValueError"  # type: ignore[attr-defined]
    assert "raised ValueError" in raised.getMessage()


async def test_spans_per_step_and_external_effect(tmp_path: Path) -> None:
    """With `tracing=provider`, each step is a span and each external effect it performs a
    child span; an effect replayed from the log (the cold resume) gets no second span, and a
    handled effect that is not external gets none."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with DurableRunner(url(tmp_path), handlers=HANDLERS, tracing=provider) as runner:
        run = await runner.start(order(12))
    async with DurableRunner(url(tmp_path), handlers=HANDLERS, tracing=provider) as runner:
        await runner.resume(run.id, True)
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    names = [s.name for s in spans]
    assert names == [
        "effects.effect Reserve",
        "effects.step observe.order",
        "effects.effect Charge",
        "effects.step observe.order",
    ]
    reserve_span, first, charge_span, second = spans
    assert reserve_span.parent is not None
    assert first.context is not None
    assert reserve_span.parent.span_id == first.context.span_id
    assert charge_span.parent is not None
    assert second.context is not None
    assert charge_span.parent.span_id == second.context.span_id
    assert first.context.trace_id != second.context.trace_id  # two steps, two traces
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["effects.run_id"] == run.id
    assert first.attributes["effects.step"] == "start"
    assert first.attributes["effects.status"] == "suspended"
    assert second.attributes["effects.step"] == "resume"
    assert second.attributes["effects.status"] == "done"
    assert charge_span.attributes is not None
    assert charge_span.attributes["effects.effect"] == f"{__name__}.Charge"


async def test_failed_effect_span(tmp_path: Path) -> None:
    """An effect that raises ends its span with an error status and the exception."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with DurableRunner(url(tmp_path), handlers=HANDLERS, tracing=provider) as runner:
        run = await runner.start(order(-5))
        await runner.resume(run.id, True)
    charge_span, step = exporter.get_finished_spans()[-2:]
    assert charge_span.status.status_code == StatusCode.ERROR
    assert [e.name for e in charge_span.events] == ["exception"]
    assert step.status.status_code == StatusCode.ERROR
    assert step.attributes is not None
    assert step.attributes["effects.status"] == "failed"


def test_nothing_is_installed_when_nobody_listens(caplog: pytest.LogCaptureFixture) -> None:
    """Off (no tracing, loggers above DEBUG/INFO), a step installs no observer and records
    nothing: the cost is two level checks per step."""
    caplog.set_level(logging.WARNING, logger="effects.durable")

    class Row:
        id, name, version, revision, status = "r", "c", 1, 0, "running"

    assert _observe.effect_observers(None, object()) == ()
    assert _observe.begin_step(None, Row(), "start") is None
    caplog.set_level(logging.DEBUG, logger="effects.durable.effects")
    assert len(_observe.effect_observers(None, object())) == 1


async def test_a_step_stopped_by_an_error_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process without a handler the run needs: its step is stopped (the run is not
    failed, another process may run it) and the record says by what."""
    caplog.set_level(logging.INFO, logger="effects.durable")
    async with DurableRunner(url(tmp_path), handlers=HANDLERS[1:]) as runner:
        with pytest.raises(MissingHandlerError):
            await runner.start(order(3), run_id="no-shop")
        assert (await runner.get("no-shop")).status != RunStatus.FAILED
    stopped = records(caplog, "effects.durable.runs")[-1]
    assert stopped.levelno == logging.WARNING
    assert stopped.run_id == "no-shop"  # type: ignore[attr-defined]
    assert stopped.error == "MissingHandlerError"  # type: ignore[attr-defined]
    assert "start step stopped by MissingHandlerError" in stopped.getMessage()


async def test_a_live_app_traces_its_runs(tmp_path: Path, live_client: Any) -> None:
    """`wizard_app(..., tracing=provider)` opens its runner with it: the steps the pages drive
    are traced (served by real uvicorn, through the package's own `live_client` fixture)."""
    from bridges.live import wizard_app

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = wizard_app(
        order(7), secret="s" * 32, url=url(tmp_path), handlers=HANDLERS, tracing=provider
    )
    async with live_client(app) as client:
        path = await client.start()
        page = await client.answer(path, {"value": "true"})
        assert "c-7" in page
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("effects.step observe.order") == 2
    assert "effects.effect Reserve" in names
    assert "effects.effect Charge" in names
