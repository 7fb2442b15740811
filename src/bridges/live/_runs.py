"""The ready-made views that bind durable runs to pages, and the apps built from them.

`RunView` shows one run at `/runs/{run_id}`: a suspended run renders its prompt with a form
generated from the `Yield`'s input (or a template chosen for that step), a running one its
progress, a failed one an alert, a cancelled or finished one its state. `IndexView` at `/`
starts runs and lists them. `wizard_app` and `progress_app` assemble both with a
`DurableRunner` into a Starlette app.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pydantic
from markupsafe import Markup
from starlette.applications import Starlette

from effects import (
    Comp,
    ComputationFunction,
    ConflictError,
    Handler,
    InvalidInput,
    ResumeError,
    RunNotFound,
    Stack,
)
from effects.durable import DurableRunner, Queue, Run, RunWatch, TaskWatch
from effects.tasks import TaskSnapshot

from ._app import LiveApp
from ._forms import Form, build_form, parse_form, validation_errors
from ._limits import RateLimit, retry_after
from ._page import Page
from ._session import Session
from ._tasks_view import TasksHub, acting_on, progress_of, task_context
from ._view import Event, LiveView, NotFound, Reply

log = logging.getLogger("bridges.live")

Authorize = Callable[[Session, Run], "bool | Awaitable[bool]"]
"""`authorize(session, run)`: may this session (not the run's owner) act on the run?"""

DEFAULT_URL = "sqlite+aiosqlite:///runs.db"
_PENDING = frozenset({"running", "queued", "sleeping"})  # work to do, no answer awaited
_CANCEL_RETRIES = 20  # a cancel meeting a step being set up retries, a bounded number of times
_RESUME_ATTEMPTS = 10  # an answer meeting the previous step being put away retries (~1 s)


# -- messages the views receive -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunChanged:
    """`handle_info` message: a committed snapshot of the run."""

    run: Run


@dataclass(frozen=True, slots=True)
class TasksChanged:
    """`handle_info` message: the run's task tree changed."""

    run_id: str
    tasks: TaskSnapshot


# -- configuration --------------------------------------------------------------------------


@dataclass(slots=True)
class Prompt:
    """A suspended run's prompt, as templates see it. The `Yield` value may be a string (the
    title) or a dict with `title`, `text`, `submit` (the button), `template` (the step's
    template) and `step` / `steps` (where the wizard is: "Step 2 of 3", also in the tab's
    title); anything else is shown as text."""

    value: Any
    title: str
    text: str | None = None
    submit: str = "Continue"
    template: str | None = None
    step: int | None = None
    steps: int | None = None

    @property
    def progress(self) -> str:
        """ "Step 2 of 3" (or "Step 2"), or "" when the prompt does not say."""
        if self.step is None:
            return ""
        return f"Step {self.step} of {self.steps}" if self.steps else f"Step {self.step}"

    @classmethod
    def of(cls, value: Any) -> Prompt:
        """Read a prompt from a `Yield` value (as stored: JSON)."""
        if value is None:
            return cls(value, "Your answer")
        if isinstance(value, str):
            return cls(value, value)
        if isinstance(value, dict):
            title = (
                value.get("title") or value.get("question") or value.get("prompt") or "Your answer"
            )
            text = value.get("text") or value.get("description")
            template = value.get("template")
            return cls(
                value,
                str(title),
                str(text) if text is not None else None,
                str(value.get("submit") or "Continue"),
                str(template) if template else None,
                _count(value.get("step")),
                _count(value.get("steps")),
            )
        return cls(value, str(value))


def _count(value: Any) -> int | None:
    # A stored prompt is JSON from a computation: anything but a positive int is ignored.
    return value if type(value) is int and value > 0 else None


@dataclass(slots=True)
class RunsConfig:
    """What the run views share: the computation, the runner, the hub and the options.
    `start_limit` bounds the runs a session may start (keyed by session id; `run_app` sets
    it from the app's `Limits.starts_per_minute`). With a `queue`, runs are enqueued on it
    for workers instead of started in the web process."""

    computation: ComputationFunction[..., Any] | Comp[Any]
    hub: TasksHub
    shared: bool = False
    authorize: Authorize | None = None
    templates: dict[str, str] = field(default_factory=dict)
    start_input: type[pydantic.BaseModel] | None = None
    runner: DurableRunner | None = None
    list_limit: int = 50
    output_limit: int = 200
    start_limit: RateLimit | None = None
    queue: str | Queue | None = None

    @property
    def name(self) -> str:
        """The computation's registered name (runs of other computations are not shown)."""
        return self.computation.name

    def the_runner(self) -> DurableRunner:
        """The app's runner (only while the app runs)."""
        if self.runner is None:
            raise RuntimeError("the run app's DurableRunner is not open (lifespan not started)")
        return self.runner

    def make(self, answers: pydantic.BaseModel | None) -> Comp[Any]:
        """The `Comp` to start, with the start form's answers as keyword arguments."""
        comp = self.computation
        if isinstance(comp, Comp):
            return comp
        if answers is None:
            return comp()
        return comp(**{name: getattr(answers, name) for name in type(answers).model_fields})

    async def allowed(self, session: Session, run: Run) -> bool:
        """Whether `session` may act on `run` (answer, cancel): its owner, or authorized."""
        if session.owns(run.id):
            return True
        if self.authorize is None:
            return False
        verdict = self.authorize(session, run)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)


def _error_text(run: Run) -> str:
    if run.error:
        kind = str(run.error.get("type", "")).rsplit(".", 1)[-1]
        message = str(run.error.get("message", ""))
        return f"{kind}: {message}" if kind and message else kind or message
    outcome = run.outcome
    error = getattr(outcome, "error", None)
    if error is not None:
        return f"{type(error).__name__}: {error}"
    return "the run failed"


# -- the run page ---------------------------------------------------------------------------


class RunView(LiveView):
    """One durable run as a page, at a path with a `{run_id}` parameter.

    Regions: `status` (a polite live region), `main` (the step's form, the running notice,
    the result, the alert or the cancelled state), `tasks` (the task tree with progress bars),
    `output` (output lines) and `controls` (the cancel button, shown only to those allowed to
    cancel while the run can be cancelled). Events: `answer` (the form; its key is the step's
    revision, so an answer to a step that is no longer current is a no-op) and `cancel`.
    """

    region_attrs: ClassVar[Mapping[str, Mapping[str, str]]] = {
        "status": {"role": "status", "aria-live": "polite", "aria-atomic": "true"},
        "output": {"aria-live": "off"},
    }

    def __init__(self, config: RunsConfig) -> None:
        self.config = config
        self.run: Run | None = None
        self.tasks: TaskSnapshot | None = None
        self.allowed = False
        self.values: dict[str, list[str]] | None = None
        self.errors: list[dict[str, Any]] = []
        self.notice: str | None = None
        self._waiters: list[tuple[int, anyio.Event]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def mount(self, page: Page) -> None:
        run_id = str(page.params.get("run_id", ""))
        if not run_id or (not self.config.shared and not page.session.owns(run_id)):
            raise NotFound(run_id)
        runner = self.config.the_runner()
        # Followed with callbacks, not tasks (a page holds none): registered before the run
        # and its tree are read, so that nothing committed in between is missed.
        status: list[str | None] = [None]

        def on_run(run: Run) -> None:
            # A step that ends shows at once; checkpoints while it runs are throttled.
            page.send_info(RunChanged(run), key="run", urgent=run.status != status[0])
            status[0] = run.status

        def on_tree(tree: TaskSnapshot) -> None:
            page.send_info(TasksChanged(run_id, tree), key="tasks")

        # The runner's trees come from whichever process runs the run (PostgreSQL NOTIFY);
        # trees published to the hub by a `TaskTree` of your own (a runner passed with
        # `runner=` that has `hub.handler()` installed) arrive through the hub.
        watch = runner.watch(run_id, on_run)
        page.on_close(watch.close)
        page.on_close(runner.watch_tasks(run_id, on_tree).close)
        page.on_close(self.config.hub.listen(run_id, lambda _rid, tree: on_tree(tree)))
        try:
            run = await runner.get(run_id)
        except RunNotFound:
            raise NotFound(run_id) from None
        if run.name != self.config.name:
            raise NotFound(run_id)
        self.allowed = await self.config.allowed(page.session, run)
        # The runner's tree: live if a step of the run runs here, else its stored copy (a run
        # running in another process, or finished before a restart).
        self.tasks = await runner.task_tree(run_id)
        if self.tasks is None:
            self.tasks = self.config.hub.latest(run_id)
        status[0] = run.status
        self._take(run)
        watch.offer(run)

    async def refresh(self, page: Page) -> None:
        assert self.run is not None
        try:
            self._take(await self.config.the_runner().get(self.run.id))
        except RunNotFound:
            pass

    async def handle_info(self, message: Any, page: Page) -> None:
        if isinstance(message, RunChanged):
            self._take(message.run)
        elif isinstance(message, TasksChanged):
            self.tasks = message.tasks

    def _release_waiters(self, done: Callable[[int], bool]) -> None:
        keep = []
        for revision, event in self._waiters:
            if done(revision):
                event.set()
            else:
                keep.append((revision, event))
        self._waiters = keep

    def _take(self, run: Run) -> None:
        old = self.run
        if old is not None and run.revision < old.revision:
            return  # older than the snapshot shown
        if old is not None and run.revision != old.revision:
            # The run moved: the previous step's answer, errors and notice no longer apply.
            self.values, self.errors, self.notice = None, [], None
        self.run = run
        if run.finished:
            # The tree's root is the run: it ends the way the run did.
            self.tasks = self.config.hub.end(run) or self.tasks
        if run.status != "running":
            self._release_waiters(lambda revision: run.revision > revision)

    def _settle_after(self, revision: int) -> anyio.Event:
        event = anyio.Event()
        self._waiters.append((revision, event))
        return event

    # -- commands ----------------------------------------------------------------------------

    async def handle_event(self, event: Event, page: Page) -> Reply | None:
        if event.name == "answer":
            return await self._answer(event, page)
        if event.name == "cancel":
            return await self._cancel(page)
        return await super().handle_event(event, page)

    async def _answer(self, event: Event, page: Page) -> Reply:
        run = self.run
        assert run is not None
        if not self.allowed:
            return Reply(ok=False, errors=[{"loc": (), "msg": "you may not answer this run"}])
        try:
            revision = int(event.key.rpartition(":")[2])
        except ValueError:
            return Reply(ok=False, errors=[{"loc": (), "msg": "the form has no valid step key"}])
        runner = self.config.the_runner()
        if run.status != "suspended" or run.revision != revision:
            # This process's view may be behind the store: the form was rendered by another
            # process that already saw the step this answer is for (the change is on its way
            # here through a notification, or was never sent, on SQLite). The store decides.
            self._take(await runner.get(run.id))
            run = self.run
            assert run is not None
            if run.status != "suspended" or run.revision != revision:
                return self._stale()
        schema = getattr(run.outcome, "input", None)
        answer = parse_form(schema, event.params) if schema else None
        try:
            new = await self._resume(runner, run.id, answer, revision)
        except InvalidInput as err:
            self.values = {k: list(v) for k, v in event.params.items()}
            self.errors = list(err.errors)
            return Reply(ok=False, errors=self.errors)
        if new is None:
            return self._stale()
        self.values, self.errors, self.notice = None, [], None
        self._take(new)
        return Reply(settle=self._settle_after(new.revision))

    async def _resume(
        self, runner: DurableRunner, run_id: str, answer: Any, revision: int
    ) -> Run | None:
        """Resume the run at `revision` with `answer`; None if that step is no longer there
        to answer (another answer was taken first). `InvalidInput` propagates."""
        for attempt in range(1, _RESUME_ATTEMPTS + 1):
            try:
                with acting_on(run_id):
                    return await runner.resume(run_id, answer, revision=revision, wait=False)
            except (ConflictError, ResumeError):
                current = await runner.get(run_id)
                if current.status != "suspended" or current.revision != revision:
                    self._take(current)
                    return None
                # Nobody answered this step: the step that led to it is still being put away
                # in this process (its suspension is committed, and another process's page
                # may show it before this one is done). Try again, a bounded number of times.
                if attempt == _RESUME_ATTEMPTS:
                    log.warning("run %s: the answer met a busy step %d times", run_id, attempt)
                    return None
                await anyio.sleep(0.02 * attempt)
        return None

    def _stale(self) -> Reply:
        self.notice = "That step was already answered; this is where the run is now."
        return Reply(duplicate=True)

    async def _cancel(self, page: Page) -> Reply:
        run = self.run
        assert run is not None
        if not self.allowed:
            return Reply(ok=False, errors=[{"loc": (), "msg": "you may not cancel this run"}])
        if run.finished:
            return Reply(duplicate=True)
        settle = anyio.Event()
        page.spawn(self._do_cancel, page, run.id, settle)
        self.notice = "Cancelling…"
        return Reply(settle=settle)

    async def _do_cancel(self, page: Page, run_id: str, settle: anyio.Event) -> None:
        runner = self.config.the_runner()
        try:
            for _ in range(_CANCEL_RETRIES):
                try:
                    with acting_on(run_id):
                        run = await runner.cancel(run_id, "cancelled from the page")
                    break
                except ConflictError:
                    # A step is being set up or torn down right now: try again once it is.
                    await anyio.sleep(0.05)
            else:
                run = await runner.get(run_id)
            page.send_info(RunChanged(run), key="run")
            await page.flush()
        finally:
            settle.set()

    # -- rendering ---------------------------------------------------------------------------

    def busy(self, page: Page) -> bool:
        return self.run is not None and self.run.status in _PENDING

    def title(self, page: Page) -> str:
        run = self.run
        if run is not None and run.status == "suspended":
            prompt = Prompt.of(run.prompt)
            title = f"{prompt.progress}: {prompt.title}" if prompt.progress else prompt.title
            return f"{title} — {page.app.title}" if page.app.title else title
        return page.app.title or "Run"

    def render(self, page: Page) -> Mapping[str, str]:
        run = self.run
        assert run is not None
        tasks = task_context(self.tasks, self.config.output_limit)
        return {
            "status": self._status(page, run),
            "main": self._main(page, run),
            "tasks": page.render_template("live/tasks.html", **tasks),
            "output": page.render_template("live/output.html", **tasks),
            "controls": page.render_template(
                "live/controls.html",
                can_cancel=self.allowed and not run.finished,
                cancel_key=f"cancel:{run.id}",
                shared=self.config.shared,
                owner=page.session.owns(run.id),
                run=run,
            ),
        }

    def _status(self, page: Page, run: Run) -> Markup:
        status = str(run.status)
        if status in _PENDING and run.cancel_requested:
            text = "Cancelling…"
        elif status == "running":
            text = "Working…"
        elif status == "queued":
            text = "Queued: waiting for a worker…"
        elif status == "sleeping":
            text = "Waiting for its timer…"
        elif status == "suspended":
            text = "Waiting for your answer." if self.allowed else "Waiting for the owner's answer."
        elif status == "done":
            text = "Finished."
        elif status == "failed":
            text = "Failed."
        else:
            text = "Cancelled."
        return page.render_template(
            "live/run_status.html", status=status, text=text, notice=self.notice, run=run
        )

    def _template(self, key: str, default: str) -> str:
        return self.config.templates.get(key, default)

    def _main(self, page: Page, run: Run) -> Markup:
        status = str(run.status)
        outcome = run.outcome
        if status == "suspended":
            prompt = Prompt.of(run.prompt)
            schema = getattr(outcome, "input", None)
            form = build_form(schema, self.values, self.errors) if schema else Form([])
            template = (
                prompt.template
                or (form.title and self.config.templates.get(form.title))
                or self._template("step", "live/step.html")
            )
            return page.render_template(
                template,
                run=run,
                prompt=prompt,
                form=form,
                key=f"answer:{run.revision}",
                readonly=not self.allowed,
            )
        if status in _PENDING:
            return page.render_template(self._template("running", "live/run_running.html"), run=run)
        if status == "done":
            result = getattr(outcome, "value", None)
            return page.render_template(
                self._template("done", "live/run_done.html"), run=run, result=result
            )
        if status == "failed":
            return page.render_template(
                self._template("failed", "live/run_failed.html"), run=run, error=_error_text(run)
            )
        reason = getattr(outcome, "reason", None)
        return page.render_template(
            self._template("cancelled", "live/run_cancelled.html"), run=run, reason=reason
        )


# -- the start page -------------------------------------------------------------------------


@dataclass(slots=True)
class RunItem:
    """A run as the index lists it: `label` ("Onboarding, started today at 14:05 UTC") and
    `state` ("Step 2 of 3: waiting for your answer") are in words for its user."""

    run: Run
    label: str
    owner: bool
    fraction: float | None
    state: str = ""


def run_words(run: Run, *, title: str, owner: bool, now: datetime) -> tuple[str, str]:
    """The label and state of a run in a list of runs, in words its user understands (no
    status codes, no ids)."""
    created = run.created_at.astimezone(UTC)
    day = "today" if created.date() == now.astimezone(UTC).date() else f"on {created:%d %b %Y}"
    label = f"{title or 'Run'}, started {day} at {created:%H:%M} UTC"
    status = str(run.status)
    if status in _PENDING and run.cancel_requested:
        state = "Cancelling…"
    elif status == "suspended":
        progress = Prompt.of(run.prompt).progress
        waiting = "waiting for your answer" if owner else "waiting for its owner's answer"
        state = f"{progress}: {waiting}" if progress else waiting.capitalize()
    else:
        state = _STATE_WORDS.get(status, status.capitalize())
    return label, state


_STATE_WORDS = {
    "running": "In progress…",
    "queued": "Waiting to start…",
    "sleeping": "Paused until later",
    "done": "Finished",
    "failed": "Stopped by an error",
    "cancelled": "Cancelled",
}


class IndexView(LiveView):
    """The start page: a start form (generated from `start_input`, or a single button) and
    the runs this session may see — its own, or every run of the computation when shared —
    with their status and progress, kept current.

    Event `start` starts a run owned by the session and redirects to its page.
    """

    def __init__(self, config: RunsConfig) -> None:
        self.config = config
        self.runs: list[Run] = []
        self.values: dict[str, list[str]] | None = None
        self.errors: list[dict[str, Any]] = []
        self.start_key = _start_key()
        self.trees: dict[str, TaskSnapshot] = {}
        self._following: dict[str, tuple[RunWatch | TaskWatch, ...]] = {}
        self._unknown: set[str] = set()

    async def mount(self, page: Page) -> None:
        session = page.session

        def on_tasks(run_id: str, snapshot: TaskSnapshot) -> None:
            if self.config.shared or session.owns(run_id):
                page.send_info(TasksChanged(run_id, snapshot), key=("tasks", run_id))

        page.on_close(self.config.hub.listen(None, on_tasks))
        page.on_close(self._unfollow)
        await self._list(page)

    def _unfollow(self) -> None:
        following, self._following = self._following, {}
        for watches in following.values():
            for watch in watches:
                watch.close()

    async def refresh(self, page: Page) -> None:
        await self._list(page)
        # The start form's key may have started a run meanwhile on another process (this
        # view only rotates it after a start it handled itself): a form showing it again
        # would start nothing and lead back to that run.
        try:
            await self.config.the_runner().get(page.session.run_id_for(self.start_key))
        except RunNotFound:
            return
        self.start_key = _start_key()

    async def _list(self, page: Page) -> None:
        runs = await self.config.the_runner().list(name=self.config.name)
        if not self.config.shared:
            runs = [r for r in runs if page.session.owns(r.id)]
        self.runs = list(reversed(runs))[: self.config.list_limit]
        for run in self.runs:
            self._follow(page, run)

    def _follow(self, page: Page, run: Run) -> None:
        # Statuses come from the runner's watches (one per unfinished run listed), progress
        # from the hub and, for runs running in other processes, the runner's tree watches:
        # nothing polls the store, and no task is held per run.
        if run.finished or run.id in self._following or page.closed:
            return
        runner = self.config.the_runner()
        run_id = run.id

        def on_run(snapshot: Run) -> None:
            page.send_info(RunChanged(snapshot), key=("run", run_id))
            if snapshot.finished:
                watches = self._following.pop(run_id, ())
                for watch in watches:
                    watch.close()

        def on_tree(tree: TaskSnapshot) -> None:
            page.send_info(TasksChanged(run_id, tree), key=("tasks", run_id))

        watch = runner.watch(run_id, on_run)
        self._following[run_id] = (watch, runner.watch_tasks(run_id, on_tree))
        watch.offer(run)
        # `run` may have been read before the watch was registered: one more read (a short
        # task) catches a change committed in between.
        page.spawn(_reread, runner, watch)

    async def handle_info(self, message: Any, page: Page) -> None:
        if isinstance(message, RunChanged):
            run = message.run
            if run.finished:
                self.config.hub.end(run)
            self.runs = [
                run if r.id == run.id and run.revision >= r.revision else r for r in self.runs
            ]
        elif isinstance(message, TasksChanged):
            self.trees[message.run_id] = message.tasks
            known = any(r.id == message.run_id for r in self.runs)
            if not known and message.run_id not in self._unknown:
                # A run started elsewhere (another session, when shared): list again, once.
                self._unknown.add(message.run_id)
                await self._list(page)

    async def handle_event(self, event: Event, page: Page) -> Reply | None:
        if event.name != "start":
            return await super().handle_event(event, page)
        answers: pydantic.BaseModel | None = None
        model = self.config.start_input
        if model is not None:
            data = parse_form(model, event.params)
            errors = validation_errors(model, data)
            if errors:
                self.values = {k: list(v) for k, v in event.params.items()}
                self.errors = errors
                return Reply(ok=False, errors=errors)
            answers = model.model_validate(data)
        # The run id is derived from the form's key: the same POST repeated — on this process
        # or on another one behind the load balancer — names the same run, which the store
        # starts once (`start` with an existing id and the same arguments is a no-op).
        key = event.key if event.key.startswith("start:") and len(event.key) <= 64 else ""
        run_id = page.session.run_id_for(key) if key else page.session.new_run_id()
        runner = self.config.the_runner()
        try:
            existing: Run | None = await runner.get(run_id)
        except RunNotFound:
            existing = None
        if existing is not None:
            return Reply(duplicate=True, redirect=page.url(f"/runs/{run_id}"))
        limit = self.config.start_limit
        wait = limit.take(page.session.id) if limit is not None else None
        if wait is not None:
            # Counted once the input is valid, so a typo costs no start; nothing is started.
            self.values = {k: list(v) for k, v in event.params.items()}
            seconds = retry_after(wait)
            msg = f"You started too many runs in the last minute: try again in {seconds} s."
            self.errors = [{"loc": (), "msg": msg, "type": "rate_limited"}]
            return Reply(ok=False, errors=self.errors, retry_after=wait)
        comp = self.config.make(answers)
        try:
            with acting_on(run_id):
                if self.config.queue is not None:
                    run = await runner.enqueue(comp, queue=self.config.queue, run_id=run_id)
                else:
                    run = await runner.start(comp, run_id=run_id, wait=False)
        except ConflictError:
            # The same key with other answers: the first start stands.
            return Reply(duplicate=True, redirect=page.url(f"/runs/{run_id}"))
        self.values, self.errors = None, []
        self.start_key = _start_key()
        self.runs.insert(0, run)
        self._follow(page, run)
        return Reply(redirect=page.url(f"/runs/{run_id}"), settle=_settle(page, runner, run))

    def render(self, page: Page) -> Mapping[str, str]:
        model = self.config.start_input
        form = build_form(model, self.values, self.errors) if model is not None else None
        now = datetime.now(UTC)
        items = []
        for run in self.runs:
            owner = page.session.owns(run.id)
            label, state = run_words(run, title=page.app.title, owner=owner, now=now)
            tree = self.config.hub.latest(run.id) or self.trees.get(run.id)
            fraction = progress_of(tree) if run.status == "running" else None
            items.append(RunItem(run, label, owner, fraction, state))
        return {
            "start": page.render_template(
                self.config.templates.get("index", "live/index.html"),
                form=form,
                errors=[str(e.get("msg", "")) for e in self.errors],
                key=self.start_key,
            ),
            "runs": page.render_template("live/runs.html", runs=items, shared=self.config.shared),
        }


def _start_key() -> str:
    """A fresh idempotency key for the start form (the run it starts is derived from it)."""
    return f"start:{secrets.token_urlsafe(12)}"


async def _reread(runner: DurableRunner, watch: RunWatch) -> None:
    if not watch.closed:
        watch.offer(await runner.get(watch.run_id))


def _settle(page: Page, runner: DurableRunner, run: Run) -> anyio.Event:
    """An event set once the run's first step is over (it suspended or ended), or when the
    page closes."""
    done = anyio.Event()
    if run.status != "running":
        done.set()
        return done

    def on_run(snapshot: Run) -> None:
        if snapshot.status != "running":
            done.set()
            watch.close()

    watch = runner.watch(run.id, on_run)
    page.on_close(done.set)
    page.on_close(watch.close)
    watch.offer(run)
    return done


# -- the apps -------------------------------------------------------------------------------


def run_app(
    computation: ComputationFunction[..., Any] | Comp[Any],
    *,
    secret: str | bytes,
    url: str = DEFAULT_URL,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    runner: DurableRunner | None = None,
    hub: TasksHub | None = None,
    shared: bool = False,
    authorize: Authorize | None = None,
    start_input: type[pydantic.BaseModel] | None = None,
    templates: Mapping[str | type, str] | None = None,
    template_dirs: Sequence[str | Path] = (),
    title: str = "",
    recover: bool = True,
    owner: str | None = None,
    lease: float = 30.0,
    queue: str | Queue | None = None,
    tracing: Any = None,
    **options: Any,
) -> LiveApp:
    """A `LiveApp` serving `computation` as durable runs: `/` starts and lists runs,
    `/runs/{run_id}` shows one, `/runs/{run_id}/tasks/{task_id}` one of its tasks and that
    task's sub-tasks (to every session when the task is shared: `task(..., shared=True)`,
    even in a private run). Add pages or routes to it, then `build()` it.

    - `computation`: a `@computation` function (called with the start form's fields, or with
      no arguments) or a `Comp` (always started as is).
    - `url`, `handlers`: the `DurableRunner` the app opens at start-up (handlers installed
      around every run; the app adds its task-tree handler). At start-up `recover()`
      continues runs a previous process left mid-step (`recover=False` skips it), and every
      lease period (30 s) it continues runs whose lease expired since (a process that died).
    - `owner`: the runner's owner name (default host:pid). Give each server process a stable
      one (e.g. from its config) so that after a crash the restarted process takes its runs
      back at once instead of waiting for their leases to expire. Two live processes never
      share an owner (the second one refuses to start).
    - `lease`: seconds a step's lease lasts (the runner's `lease`): a process that dies
      mid-step has its runs taken over by another process within about two leases.
    - `queue`: enqueue the runs the start page starts on this durable queue instead of
      starting them in the web process; workers (`python -m effects worker --queue ...`)
      run them, and the pages follow them like any other run (see docs/live/deployment.md).
    - `runner`: a runner you opened yourself instead. It keeps the runs' task trees; pass it
      `on_tasks=hub.publish` and that `hub` here so that the start page's progress bars and
      `hub.latest` follow this process's runs at every change (run pages read the runner).
    - `tracing`: the opened runner's `tracing` (OpenTelemetry spans per step and external
      effect; see docs/durable/observability.md).
    - `shared=False`: a run is visible only to the session that started it (404 for others).
      `shared=True`: every session sees every run; only its owner — or a session that
      `authorize(session, run)` accepts — may answer or cancel it.
    - `start_input`: a pydantic model whose fields the start page asks for (passed to the
      computation as keyword arguments).
    - `templates`: template names overriding the defaults per step — keyed by the `Yield`
      input model (class or name) — or per state: `"step"`, `"running"`, `"done"`,
      `"failed"`, `"cancelled"`, `"index"`. `template_dirs` are searched first.
    - `options`: passed to `LiveApp` (`title`, `throttle`, `settle`, `heartbeat`, `limits`,
      ...). `limits.starts_per_minute` bounds the runs one session may start: one more is
      refused with 429 and `Retry-After`, and starts nothing.
    """
    names = {
        (key.__name__ if isinstance(key, type) else str(key)): value
        for key, value in (templates or {}).items()
    }
    hub = hub or TasksHub()
    config = RunsConfig(
        computation=computation,
        hub=hub,
        shared=shared,
        authorize=authorize,
        templates=names,
        start_input=start_input,
        runner=runner,
        queue=queue,
    )

    @asynccontextmanager
    async def lifespan(app: LiveApp) -> AsyncIterator[None]:
        if runner is not None:
            yield
            return
        # The runner keeps each run's task tree (and its copy in the store, for other processes
        # and restarts) and hands this process's changes to the hub.
        stack = Stack(*_as_list(handlers))
        try:
            async with DurableRunner(
                url,
                handlers=stack,
                owner=owner,
                lease=lease,
                on_tasks=hub.publish,
                tracing=tracing,
            ) as opened:
                config.runner = opened
                async with anyio.create_task_group() as tg:
                    if recover:
                        # In the background: recovered steps run to their next suspension,
                        # which may take long; the app serves meanwhile.
                        tg.start_soon(_recover, opened)
                    yield
                    tg.cancel_scope.cancel()
                # Steps still running stop as in a crash (their runs stay `running` and the
                # next start-up's recover() continues them): a deploy must not wait for a
                # long task to finish.
                raise _Shutdown
        except _Shutdown:
            pass
        finally:
            config.runner = None

    live = LiveApp(
        secret=secret, title=title, template_dirs=template_dirs, lifespan=lifespan, **options
    )
    config.start_limit = RateLimit(live.limits.starts_per_minute, 60.0, clock=live.clock)
    live.state["runs"] = config
    live.page("/", lambda: IndexView(config))
    live.page("/runs/{run_id}", lambda: RunView(config))
    # Imported here: the shared task page is built on this module's config and messages.
    from ._shared_tasks import SharedTaskView

    live.page("/runs/{run_id}/tasks/{task_id}", lambda: SharedTaskView(config))
    return live


async def _recover(runner: DurableRunner) -> None:
    # At start-up, then once per lease period: a run whose process died mid-step is taken over
    # once its lease has expired, without waiting for this server's next restart.
    while True:
        try:
            await runner.recover()
        except Exception:
            log.exception("recovering the runs left mid-step failed")
        await anyio.sleep(runner.lease)


class _Shutdown(Exception):
    """Leaves the runner's block as an error, so that it stops steps instead of waiting."""


def _as_list(handlers: Handler | Stack | Iterable[Handler | Stack]) -> list[Handler | Stack]:
    if isinstance(handlers, Handler | Stack):
        return [handlers]
    return list(handlers)


def wizard_app(
    computation: ComputationFunction[..., Any] | Comp[Any],
    *,
    secret: str | bytes,
    url: str = DEFAULT_URL,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    **options: Any,
) -> Starlette:
    """A multi-step wizard: each `Yield` of `computation` is a page with a generated form,
    runs private to the session that started them, durable in `url`. See `run_app` for the
    options; returns the Starlette app (run it with uvicorn)."""
    return run_app(computation, secret=secret, url=url, handlers=handlers, **options).build()


def progress_app(
    computation: ComputationFunction[..., Any] | Comp[Any],
    *,
    secret: str | bytes,
    url: str = DEFAULT_URL,
    handlers: Handler | Stack | Iterable[Handler | Stack] = (),
    shared: bool = True,
    **options: Any,
) -> Starlette:
    """Long work with live progress: runs of `computation` show their task tree, progress bars
    and output; by default every visitor sees every run (`shared=True`) and only the owner may
    cancel. See `run_app` for the options."""
    return run_app(
        computation, secret=secret, url=url, handlers=handlers, shared=shared, **options
    ).build()
