"""An example app as a cluster: several server processes on one PostgreSQL database, behind
nginx doing round robin without stickiness (tests/fixtures/nginx.py).

Each process is `python examples/<name>/app.py --url URL --owner pN --lease L` on its own
port, all with the same session secret. `Cluster.served()` reads nginx's access log: which
process (by port) served which request.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from e2e import ExampleServer
from fixtures.nginx import Balancer, LogLine


@dataclass
class Cluster:
    """`servers` (the app processes), `balancer` (nginx) and the `url` users open."""

    servers: list[ExampleServer]
    balancer: Balancer

    @property
    def url(self) -> str:
        """The load balancer's URL."""
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
        for server in self.servers:
            server.stop()


def start_cluster(
    example: str,
    url: str,
    start_nginx: Callable[[Sequence[int]], Balancer],
    *,
    processes: int = 3,
    lease: float = 30.0,
) -> Cluster:
    """Start `processes` servers of `example` on the database `url`, then nginx in front."""
    secret = secrets.token_urlsafe(32)
    servers: list[ExampleServer] = []
    try:
        for i in range(processes):
            server = ExampleServer(
                example,
                *("--url", url, "--owner", f"p{i}", "--lease", str(lease)),
                env={"LIVE_SECRET": secret},
            )
            servers.append(server.start())
        return Cluster(servers, start_nginx([s.port for s in servers]))
    except BaseException:
        for server in servers:
            server.stop()
        raise
