"""Owners: one live process per `owner`, and the heartbeat that keeps its claims alive.

A runner's `owner` is the identity under which it takes leases, and `recover()` takes the runs
leased by its own owner at once (they are "a previous life of this process"). Two live
processes with one owner would therefore steal each other's running steps. So a runner claims
its owner in the store (`effects_owners`: one row per owner, with the claiming runner's random
token and an expiry by the database's clock) and refuses to start while another live runner
holds it. The claim is renewed with the runs' leases, and given back on an orderly exit.

A holder is taken for gone when:
- its claim has expired by the database's clock (it stopped renewing it: `lease` seconds after a
  kill -9, a frozen machine, a lost network);
- or it ran on this host and its process no longer exists (a process restarted after kill -9
  starts at once; a restarted container whose process got the same pid too, unless that pid's
  claim belongs to a live runner of this very process).

The heartbeat runs on an event loop of its own in a thread of its own, with its own database
connection: the leases of a runner's steps do not depend on the runner's event loop, so user
code that blocks it (a blocking call inside an `async def`) does not let the leases expire.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._store import OwnerRow, Store, create_engine

logger = logging.getLogger("effects.durable")

# Tokens of the runners of this process that hold their owner now.
_live_tokens: set[str] = set()


def host() -> str:
    """This host's name, as recorded with a claim."""
    return socket.gethostname()


def holder_is_gone(holder: OwnerRow) -> bool:
    """Whether `holder` (a live-looking claim) is known dead without waiting for its expiry:
    its process ran on this host and no longer exists."""
    if holder.host != host():
        return False
    if holder.pid == os.getpid():
        return holder.token not in _live_tokens
    return not _process_exists(holder.pid)


def _process_exists(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe probe: wait for the claim to expire
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, under another user
    return True


def refusal(owner: str, holder: OwnerRow) -> str:
    """The message of the `ConfigurationError` for an owner held by a live runner."""
    where = (
        "another DurableRunner of this process"
        if holder.host == host() and holder.pid == os.getpid()
        else f"process {holder.pid} on {holder.host}"
    )
    return (
        f"owner {owner!r} is held by {where}: two live runners with one owner would take each "
        "other's running steps; give each process its own owner (if that process is gone, "
        f"its claim expires in {max(holder.expires_in, 0):.0f} s)"
    )


class Heartbeat:
    """Renews the owner's claim and the leases of the runner's steps every third of the lease,
    from a thread with its own event loop and its own store connection."""

    def __init__(
        self,
        url: str,
        engine_options: dict[str, Any],
        owner: str,
        token: str,
        lease: float,
        leased: Callable[[], Sequence[str]],
    ) -> None:
        self.url = url
        self.engine_options = engine_options
        self.owner = owner
        self.token = token
        self.lease = lease
        self.leased = leased
        self.lost: str | None = None
        self.beats = 0
        self._thread = threading.Thread(
            target=self._main, name=f"effects-heartbeat-{owner}", daemon=True
        )
        self._started = threading.Event()
        self._stop: Callable[[], None] | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Start the thread; returns once its event loop runs (or raises why it could not)."""
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure

    def stop(self) -> None:
        """Stop renewing and wait for the thread to end (blocking: call it from a thread)."""
        if self._stop is not None:
            try:
                self._stop()
            except RuntimeError:
                pass  # its event loop has ended already (the owner was lost)
        self._thread.join()

    def _main(self) -> None:
        try:
            anyio.run(self._run, backend="asyncio")
        except BaseException as err:  # reported to start(); nothing else waits on this thread
            if not self._started.is_set():
                self._failure = err
                self._started.set()
            else:
                logger.exception("the lease heartbeat of owner %s stopped", self.owner)

    async def _run(self) -> None:
        store = Store(create_engine(self.url, **self.engine_options))
        try:
            with anyio.CancelScope() as scope:
                token = anyio.lowlevel.current_token()
                self._stop = lambda: anyio.from_thread.run_sync(scope.cancel, token=token)
                self._started.set()
                while self.lost is None:
                    await anyio.sleep(self.lease / 3)
                    await self._beat(store)
        finally:
            with anyio.CancelScope(shield=True):
                await store.aclose()

    async def _beat(self, store: Store) -> None:
        try:
            if not await store.renew_owner(self.owner, self.token, self.lease):
                holder = await store.owner_holder(self.owner)
                self.lost = (
                    f"owner {self.owner!r} was taken by process {holder.pid} on {holder.host}"
                    if holder is not None
                    else f"the claim of owner {self.owner!r} was deleted"
                )
                logger.error(
                    "%s while this runner was unresponsive for longer than its lease: this "
                    "runner stops taking work",
                    self.lost,
                )
                return
            ids = self.leased()
            if ids:
                await store.renew(self.owner, ids, self.lease)
            self.beats += 1
        except Exception as err:  # the store is unreachable: the next beat tries again
            logger.warning("could not renew the leases of owner %s: %s", self.owner, err)
