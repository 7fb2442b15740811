"""The durable timer's side in `DurableRunner`: answering the logger's `StartTimer` by the
database's clock, and `AwaitTimer` either in memory (little left) or by releasing the run as
`sleeping` until it is due (see `DurableRunner._release_sleeping` and `_timer_loop`)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import anyio

from .._exceptions import LogError
from .._handler import Handler, handles
from ._effects import AwaitTimer, StartTimer

if TYPE_CHECKING:
    from ._runner import DurableRunner, _Step


class Timers(Handler):
    """Answers the timer effects of one step of a `DurableRunner`."""

    def __init__(self, runner: DurableRunner, step: _Step) -> None:
        self.runner = runner
        self.step = step

    def install(self) -> Timers:
        return self

    @handles(StartTimer)
    def _start(self, effect: StartTimer) -> Awaitable[float]:
        return self._wake_at(effect.seconds)

    async def _wake_at(self, seconds: float) -> float:
        return await self.runner.store.clock() + seconds

    @handles(AwaitTimer)
    def _await(self, effect: AwaitTimer) -> Awaitable[None]:
        return self._wait(effect.wake_at)

    async def _wait(self, wake_at: float) -> None:
        step = self.step
        left = wake_at - await self.runner.store.clock()
        if left <= 0:
            return
        if not step.leased:
            # Replaying a suspended run to its pending Yield must not wait for anything.
            step.failure = LogError(
                f"run {step.row.id!r} is stored as suspended but its log ends in a sleep"
            )
            raise step.failure
        interp = step.interp
        if (
            left <= self.runner.sleep_in_memory
            or self.runner.store.in_memory  # it lives and dies with this process anyway
            or step.scope is None
            or step.cancelling
            or (interp is not None and interp.cancelling)  # cleanup runs to its end here
        ):
            await anyio.sleep(left)
            return
        # Release the run until it is due: the step is dropped as in a shutdown (no cleanup,
        # nothing recorded past the checkpointed wake-up time), then `_run_step` writes it
        # `sleeping` (`_release_sleeping`).
        step.sleep_until = wake_at
        step.scope.cancel()
        await anyio.sleep_forever()

    def __repr__(self) -> str:
        return f"DurableRunner.timers({self.step.row.id!r})"
