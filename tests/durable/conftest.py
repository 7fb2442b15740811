"""Fixtures shared by the durable tests."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture(scope="module")
def forked() -> Iterator[Callable[..., bool]]:
    """Start worker processes from a fork server that has already imported the worker and
    its dependencies: a fresh process per run, without paying ~0.5 s of imports each time.
    Each worker is expected to end by SIGKILL-ing itself at its kill point; with
    `may_finish=True` it may also end normally (its kill point was not reached). Returns
    whether it was killed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(WORKERS))
        # The fork server is a fresh interpreter: it finds the worker through PYTHONPATH
        # (Python 3.11's fork server ignores the parent's sys.path).
        paths = [str(WORKERS), *filter(None, [os.environ.get("PYTHONPATH")])]
        mp.setenv("PYTHONPATH", os.pathsep.join(paths))
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["worker"])
        target = importlib.import_module("worker").run

        def start(*args: str, may_finish: bool = False) -> bool:
            process = ctx.Process(target=target, args=(list(args),))
            process.start()
            process.join(30)
            if process.exitcode is None:  # never reached its kill point: do not leave it
                process.kill()
                process.join(10)
                raise AssertionError(f"the worker {args} did not end within 30 s")
            killed = process.exitcode == -signal.SIGKILL
            assert killed or (may_finish and process.exitcode == 0), process.exitcode
            return killed

        yield start
