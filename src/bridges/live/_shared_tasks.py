"""A shared task as a page of its own: `/runs/{run_id}/tasks/{task_id}`.

A task started with `task(title, comp, shared=True)` (or `open_task(..., shared=True)`) may be
watched by every session, even when its run is private (aprot's per-task sharing): its page
shows that task and its sub-tasks — titles, statuses, progress bars and their output — and
nothing else of the run (no prompt, no answer, no result, no other task). A task that is not
shared, itself or through an ancestor, is a 404 for sessions that may not see the run, exactly
like a run that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from effects import RunNotFound
from effects.durable import Run
from effects.tasks import ROOT, OutputLine, TaskNode, TaskSnapshot

from ._page import Page
from ._runs import RunsConfig, TasksChanged
from ._session import Session
from ._view import LiveView, NotFound


def subtree(snapshot: TaskSnapshot, node_id: int) -> list[TaskNode]:
    """The node `node_id` and its descendants, in creation order."""
    inside = {node_id}
    nodes = []
    for node in snapshot.nodes:
        if node.id == node_id or (node.parent is not None and node.parent in inside):
            inside.add(node.id)
            nodes.append(node)
    return nodes


def shared_in(snapshot: TaskSnapshot, node_id: int) -> bool:
    """Whether `node_id` is shared, itself or through an ancestor."""
    node: TaskNode | None = snapshot.nodes[node_id]
    while node is not None:
        if node.shared:
            return True
        node = snapshot.nodes[node.parent] if node.parent is not None else None
    return False


class SharedTaskView(LiveView):
    """One task of a run and its sub-tasks, at `/runs/{run_id}/tasks/{task_id}`: visible to
    the sessions that may see the run, and to every session when the task is shared."""

    region_attrs: ClassVar[Mapping[str, Mapping[str, str]]] = {
        "status": {"role": "status", "aria-live": "polite", "aria-atomic": "true"}
    }

    def __init__(self, config: RunsConfig) -> None:
        self.config = config
        self.run_id = ""
        self.task_id = ROOT
        self.tree: TaskSnapshot | None = None

    async def mount(self, page: Page) -> None:
        run_id = str(page.params.get("run_id", ""))
        raw_task = str(page.params.get("task_id", ""))
        if not raw_task.isdigit() or len(raw_task) > 9 or int(raw_task) == ROOT:
            raise NotFound(run_id)
        runner = self.config.the_runner()

        def on_tree(tree: TaskSnapshot) -> None:
            page.send_info(TasksChanged(run_id, tree), key="tasks")

        # Followed as the run page does (callbacks, no task), registered before the tree is
        # read so that nothing stored in between is missed.
        page.on_close(runner.watch_tasks(run_id, on_tree).close)
        page.on_close(self.config.hub.listen(run_id, lambda _rid, tree: on_tree(tree)))
        try:
            run = await runner.get(run_id)
        except RunNotFound:
            raise NotFound(run_id) from None
        tree = await runner.task_tree(run_id) or self.config.hub.latest(run_id)
        task_id = int(raw_task)
        if (
            run.name != self.config.name
            or tree is None
            or task_id >= len(tree.nodes)
            or not self._visible(page.session, run, tree, task_id)
        ):
            raise NotFound(run_id)
        self.run_id, self.task_id = run_id, task_id
        self._take(tree)

    def _visible(self, session: Session, run: Run, tree: TaskSnapshot, task_id: int) -> bool:
        return self.config.shared or session.owns(run.id) or shared_in(tree, task_id)

    async def refresh(self, page: Page) -> None:
        tree = await self.config.the_runner().task_tree(self.run_id)
        if tree is not None:
            self._take(tree)

    async def handle_info(self, message: Any, page: Page) -> None:
        # The run's end comes as a tree too: the store's last copy is settled (its root
        # follows the run), and a task the run's end cut short is shown cancelled.
        if isinstance(message, TasksChanged):
            self._take(message.tasks)

    def _take(self, tree: TaskSnapshot) -> None:
        if self.tree is None or tree.version >= self.tree.version:
            self.tree = tree

    def node(self) -> TaskNode:
        assert self.tree is not None
        return self.tree.nodes[self.task_id]

    def busy(self, page: Page) -> bool:
        return self.tree is not None and not self.node().finished

    def title(self, page: Page) -> str:
        title = self.node().title or "Task"
        return f"{title} — {page.app.title}" if page.app.title else title

    def render(self, page: Page) -> Mapping[str, str]:
        assert self.tree is not None
        node = self.node()
        nodes = subtree(self.tree, self.task_id)
        lines: list[tuple[str, OutputLine]] = []
        dropped = 0
        for each in nodes:
            title = each.title if each.id != self.task_id else ""
            lines.extend((title, line) for line in each.lines)
            dropped += each.dropped
        lines.sort(key=lambda pair: pair[1].seq)
        limit = self.config.output_limit
        if len(lines) > limit:
            dropped += len(lines) - limit
            lines = lines[-limit:]
        return {
            "status": page.render_template("live/shared_task_status.html", node=node),
            "tasks": page.render_template("live/shared_task.html", tasks=self.tree, node=node),
            "output": page.render_template("live/output.html", lines=lines, dropped=dropped),
        }
