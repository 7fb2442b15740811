"""An example app as a cluster: several server processes on one PostgreSQL database, behind
nginx doing round robin without stickiness (tests/fixtures/nginx.py).

Each process is `python examples/<name>/app.py --url URL --owner pN --lease L` on its own
port, all with the same session secret. `Cluster.served()` reads nginx's access log: which
process (by port) served which request.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from e2e import ROOT, ExampleServer
from fixtures.nginx import Balancer, LogLine


class Worker(ExampleServer):
    """`python -m effects worker --import importer --handlers importer:worker_handlers
    --queue Q` for the tasks example, on the store `EFFECTS_DB` (in `env`)."""

    ready = "serving"

    def __init__(self, queue: str, *args: str, env: dict[str, str]) -> None:
        tasks = str(ROOT / "examples" / "tasks")
        path = os.pathsep.join(p for p in (tasks, os.environ.get("PYTHONPATH", "")) if p)
        super().__init__("tasks", *args, env={**env, "PYTHONPATH": path})
        self.queue = queue

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "effects", "worker", "--import", "importer"),
            *("--handlers", "importer:worker_handlers", "--queue", self.queue, *self.args),
        ]


@dataclass
class Cluster:
    """`servers` (the app processes), `balancer` (nginx, whose `address` users open),
    `workers`, the database `url` and the `lease` every process uses."""

    servers: list[ExampleServer]
    balancer: Balancer
    url: str = ""
    lease: float = 30.0
    workers: list[ExampleServer] = field(default_factory=list)

    def add_worker(self, queue: str) -> ExampleServer:
        """Start one more worker process serving `queue` on the cluster's database."""
        worker = Worker(
            queue,
            *("--owner", f"w{len(self.workers)}", "--lease", str(self.lease)),
            env={"EFFECTS_DB": self.url},
        )
        self.workers.append(worker)
        return worker.start()

    @property
    def address(self) -> str:
        """The load balancer's URL (what users open)."""
        return self.balancer.url

    def process(self, upstream: str) -> ExampleServer:
        """The server behind an upstream address (`127.0.0.1:port`) of the log or header."""
        port = int(upstream.rsplit(":", 1)[1])
        return next(s for s in self.servers if s.port == port)

    def served(self) -> list[LogLine]:
        """Every request nginx has logged so far (a stream is logged when it ends)."""
        return self.balancer.log()

    def stop(self) -> None:
        """Stop nginx and every server still running."""
        self.balancer.stop()
        for server in [*self.servers, *self.workers]:
            server.stop()


def start_cluster(
    example: str,
    url: str,
    start_nginx: Callable[[Sequence[int]], Balancer],
    *,
    processes: int = 3,
    lease: float = 30.0,
    queue: str | None = None,
    workers: int = 0,
) -> Cluster:
    """Start `processes` servers of `example` on the database `url`, then nginx in front.
    With a `queue` (the tasks example), the servers enqueue their runs on it, and `workers`
    worker processes run them (`Cluster.add_worker` starts more)."""
    secret = secrets.token_urlsafe(32)
    servers: list[ExampleServer] = []
    queue_args = ("--queue", queue) if queue is not None else ()
    try:
        for i in range(processes):
            server = ExampleServer(
                example,
                *("--url", url, "--owner", f"p{i}", "--lease", str(lease), *queue_args),
                env={"LIVE_SECRET": secret},
            )
            servers.append(server)
            server.start()
        cluster = Cluster(servers, start_nginx([s.port for s in servers]), url=url, lease=lease)
        for _ in range(workers if queue is not None else 0):
            cluster.add_worker(queue or "")
    except BaseException:
        for process in servers:
            process.stop()
        raise
    return cluster
