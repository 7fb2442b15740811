"""What a `DurableRunner` tells the outside about its runs: log records and trace spans.

Logging (the standard library's): every step of a run is logged on `effects.durable.runs` when
it ends (INFO; WARNING for a failed run or a step that could not run) and when it begins
(DEBUG; INFO for a run's first step), and every external effect a step performs on
`effects.durable.effects` (DEBUG). Each record carries structured fields, for a JSON formatter or
a log shipper: `run_id`, `computation` (the run's registered name; a record's `name` is its
logger's), `version`, `step` (`start`, `resume`, `continue` after a restart or a timer,
`cancel`), `status` and `revision` once known, `duration` (seconds), and for an effect `effect`
(its type) and `error` (its exception type, if it raised).

Tracing (OpenTelemetry, optional: `pip install effects-live[otel]`): with
`DurableRunner(tracing=True)` (the global tracer provider) or `tracing=provider`, each step is a
span `effects.step <computation>` and each external effect it performs (not the ones replayed
from the log) a child span `effects.effect <Type>`, with the same fields as attributes
(`effects.run_id`...).

Nothing is paid for what is off: a step looks at two booleans, and the effect observer is only
installed in a step when its logger is enabled for DEBUG or tracing is on. The interpreter's
dispatch is never touched.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from types import GeneratorType
from typing import Any

from .._handler import Handler, Table
from .._interpreter import InScope

runs_log = logging.getLogger("effects.durable.runs")
effects_log = logging.getLogger("effects.durable.effects")

_FINAL = frozenset({"done", "failed", "cancelled"})


def make_tracer(tracing: Any) -> Any:
    """The OpenTelemetry tracer for `DurableRunner(tracing=...)`: None when off, the global
    provider's for True, else `tracing` is a tracer provider."""
    if tracing is None or tracing is False:
        return None
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "DurableRunner(tracing=...) needs opentelemetry-api: pip install 'effects-live[otel]'"
        ) from None
    provider = None if tracing is True else tracing
    return trace.get_tracer("effects.durable", tracer_provider=provider)


class StepObservation:
    """One step being observed: its fields, start time and span (if tracing)."""

    __slots__ = ("context", "fields", "span", "started", "tracer")

    def __init__(self, tracer: Any, fields: dict[str, Any]) -> None:
        self.tracer = tracer
        self.fields = fields
        self.started = time.monotonic()
        self.span: Any = None
        self.context: Any = None
        if tracer is not None:
            from opentelemetry import trace

            # Not made current: a step's awaits interleave with other steps' in one task group,
            # so the span is handed to its effects explicitly, never through a context variable.
            self.span = tracer.start_span(
                f"effects.step {fields['computation']}", attributes=_attributes(fields)
            )
            self.context = trace.set_span_in_context(self.span)


def _attributes(fields: dict[str, Any]) -> dict[str, Any]:
    return {f"effects.{k}": v for k, v in fields.items() if v is not None}


def step_kind(*, resumed: bool, cancelling: bool, recovering: bool) -> str:
    """What a step does: `resume`, `cancel`, `continue` (after a restart or a timer) or
    `start`."""
    if resumed:
        return "resume"
    if cancelling:
        return "cancel"
    return "continue" if recovering else "start"


def begin_step(tracer: Any, row: Any, kind: str) -> StepObservation | None:
    """Called when a step begins; None (and nothing done) when nobody listens."""
    if tracer is None and not runs_log.isEnabledFor(logging.INFO):
        return None
    fields = {
        "run_id": row.id,
        "computation": row.name,
        "version": row.version,
        "step": kind,
        "revision": row.revision,
    }
    observation = StepObservation(tracer, fields)
    level = logging.INFO if kind == "start" else logging.DEBUG
    if runs_log.isEnabledFor(level):
        runs_log.log(
            level, "run %s (%s): %s step began", row.id, row.name, kind, extra=dict(fields)
        )
    return observation


def end_step(observation: StepObservation | None, row: Any, error: BaseException | None) -> None:
    """Called when a step ends, with the run's row as the step left it and the exception the
    step raised (a conflict, a missing handler, the runner shutting down), if any."""
    if observation is None:
        return
    duration = time.monotonic() - observation.started
    status = str(row.status)
    fields = {
        **observation.fields,
        "status": status,
        "revision": row.revision,
        "duration": round(duration, 6),
    }
    if error is not None:
        fields["error"] = type(error).__qualname__
    if runs_log.isEnabledFor(logging.INFO):
        if error is not None:
            runs_log.warning(
                "run %s (%s): %s step stopped by %s: %s",
                row.id, row.name, fields["step"], type(error).__qualname__, error,
                extra=fields,
            )  # fmt: skip
        else:
            level = logging.WARNING if status == "failed" else logging.INFO
            what = "ended" if status in _FINAL else "is " + status
            runs_log.log(
                level,
                "run %s (%s) %s after its %s step (revision %s, %.3f s)",
                row.id, row.name, what, fields["step"], row.revision, duration,
                extra=fields,
            )  # fmt: skip
    span = observation.span
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes(_attributes(fields))
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        elif status == "failed":
            span.set_status(Status(StatusCode.ERROR, "the run failed"))
        span.end()


def effect_observers(tracer: Any, step: Any) -> tuple[Handler, ...]:
    """The handlers a step installs to observe its external effects: none unless tracing is
    on or `effects.durable.effects` logs DEBUG (decided once per step)."""
    if tracer is None and not effects_log.isEnabledFor(logging.DEBUG):
        return ()
    return (_EffectObserver(tracer, step),)


class _EffectObserver(Handler):
    """Wraps the external handlers outside it: each effect they perform is timed, logged and
    (when tracing) a span under the step's span. Installed just inside the runner's handlers,
    hence outside the effect logger: replayed effects never reach it."""

    def __init__(self, tracer: Any, step: Any) -> None:
        self.tracer = tracer
        self.step = step

    def intercept(self, table: Table) -> None:
        for effect_type, (fn, home, owner) in list(table.items()):
            if getattr(owner, "external", False):
                table[effect_type] = (self._wrap(fn, home), home, owner)

    def _wrap(self, fn: Callable[[Any], Any], home: Any) -> Callable[[Any], Any]:
        def observed(effect: Any) -> Any:
            watch = _Watch(self, effect)
            try:
                result = fn(effect)
            except BaseException as err:
                watch.end(err)
                raise
            if inspect.isawaitable(result):
                return watch.awaiting(result)
            if isinstance(result, GeneratorType) and home is not None:
                return InScope(watch.running(result), home)
            watch.end(None)
            return result

        return observed

    def __repr__(self) -> str:
        return "DurableRunner.effect_observer"


class _Watch:
    """One external effect being performed."""

    __slots__ = ("effect", "fields", "span", "started")

    def __init__(self, observer: _EffectObserver, effect: Any) -> None:
        step = observer.step
        observation: StepObservation | None = getattr(step, "observation", None)
        self.effect = effect
        self.fields: dict[str, Any] = {
            "run_id": step.row.id,
            "computation": step.row.name,
            "effect": f"{type(effect).__module__}.{type(effect).__qualname__}",
        }
        if observation is not None:
            self.fields["step"] = observation.fields["step"]
        self.span: Any = None
        if observer.tracer is not None:
            self.span = observer.tracer.start_span(
                f"effects.effect {type(effect).__qualname__}",
                context=observation.context if observation is not None else None,
                attributes=_attributes(self.fields),
            )
        self.started = time.monotonic()

    async def awaiting(self, awaitable: Awaitable[Any]) -> Any:
        try:
            value = await awaitable
        except BaseException as err:
            self.end(err)
            raise
        self.end(None)
        return value

    def running(self, comp: GeneratorType[Any, Any, Any]) -> Any:
        try:
            value = yield from comp
        except BaseException as err:
            self.end(err)
            raise
        self.end(None)
        return value

    def end(self, error: BaseException | None) -> None:
        duration = time.monotonic() - self.started
        fields = {**self.fields, "duration": round(duration, 6)}
        if error is not None:
            fields["error"] = type(error).__qualname__
        if effects_log.isEnabledFor(logging.DEBUG):
            effects_log.debug(
                "run %s: external effect %s %s (%.3f s)",
                fields["run_id"], fields["effect"],
                "raised " + fields["error"] if error is not None else "done", duration,
                extra=fields,
            )  # fmt: skip
        span = self.span
        if span is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("effects.duration", fields["duration"])
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
            span.end()
