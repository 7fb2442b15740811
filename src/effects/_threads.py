"""Worker threads for plain `Call` functions under the async runners.

On asyncio a plain function runs in a pool of `POOL_THREADS` threads of this process (a
`concurrent.futures.ThreadPoolExecutor`), handed over with `run_in_executor`'s mechanism; on
trio (and any other anyio backend) in anyio's worker threads (`anyio.to_thread.run_sync`). Why
not anyio's threads everywhere: a round trip through them cost ~70 us more CPU per call in a
queue worker on asyncio (its checkpoint, capacity limiter and cancel scope around each call,
and a condition-variable queue per thread), about a fifth of what a durable step of a trivial
call costs in all.

The semantics are anyio's: the function runs in a copy of the caller's context (context
variables such as the idempotency key are seen); a cancellation waits until the function
returns (a thread cannot be interrupted) unless `abandon` (a `Call` with a timeout), in which
case the caller goes on and the thread finishes unobserved. What differs: a function running in
the asyncio pool is not an anyio worker thread, so `anyio.from_thread` needs an explicit
`token` there; `to_loop` hands work back to the loop from either kind of thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

_library: contextvars.ContextVar[str | None] | None
try:  # not a dependency of ours; installed, code in the thread may ask it
    from sniffio import current_async_library_cvar as _library
except ImportError:  # pragma: no cover - sniffio is installed with httpx and others
    _library = None

T = TypeVar("T")

POOL_THREADS = 40
"""Plain functions running at once on asyncio (as many as anyio's default thread limiter);
more wait for a free thread."""

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
# While a pool thread runs a function: the event loop of the task that handed it over.
_current = threading.local()


def _forget_pool() -> None:
    # A forked child has none of the parent's threads: a pool inherited from it would count
    # them as idle and never start one. The child makes its own on first use.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(
                    POOL_THREADS, thread_name_prefix="effects-call"
                )
    return _pool


def _run(loop: asyncio.AbstractEventLoop, context: contextvars.Context, fn: Callable[[], T]) -> T:
    _current.loop = loop
    try:
        return context.run(fn)
    finally:
        _current.loop = None


async def run_in_thread(fn: Callable[[], T], *, abandon: bool = False) -> T:
    """`fn()` in a worker thread; its result or its exception. Cancelled, it waits until
    `fn` returns, unless `abandon`."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=abandon)
    # A caller cancelled already does not start the function (anyio's threads check too).
    await anyio.lowlevel.checkpoint_if_cancelled()
    context = contextvars.copy_context()
    if _library is not None:
        # As anyio's worker threads: code in the thread does not see the loop's library.
        context.run(_library.set, None)
    job = _executor().submit(_run, loop, context, fn)
    try:
        return await asyncio.wrap_future(job, loop=loop)
    except BaseException:
        # Cancelled (or the loop is closing). A job that had not started is dropped by the
        # cancellation; one that runs cannot be interrupted: wait for it, unless abandoned.
        if not abandon and not job.done():
            finished = anyio.Event()

            def wake(_: object) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(finished.set)

            job.add_done_callback(wake)
            with anyio.CancelScope(shield=True):
                await finished.wait()
        raise


def to_loop(fn: Callable[..., T], *args: Any) -> T:
    """From a thread running a plain `Call` function: `fn(*args)` run on the event loop of
    the run, its result. A `RuntimeError` from a thread that is neither."""
    loop: asyncio.AbstractEventLoop | None = getattr(_current, "loop", None)
    if loop is None:
        return anyio.from_thread.run_sync(fn, *args)  # an anyio worker thread (trio)
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as err:
            done.set_exception(err)

    loop.call_soon_threadsafe(call)
    return done.result()
