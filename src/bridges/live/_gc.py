"""`GcTuning`: the cyclic garbage collector set for a server that holds many live sessions.

A full (oldest-generation) collection walks every object the interpreter tracks: after
start-up that is every module, class, function, template and schema of the application
(hundreds of thousands of objects with SQLAlchemy, pydantic and Starlette loaded), plus the
sessions. Each one stops the event loop for tens to hundreds of milliseconds, which is what
the tail of answer -> patch latency is made of (bench/README.md, "live").

Two measures, applied by `LiveApp(gc=GcTuning())` once its start-up is over:

- `gc.freeze()`: everything alive at that moment (the code, the app, the runner and its pool)
  moves to the permanent generation, which collections skip. Those objects live as long as the
  process anyway.
- higher thresholds: fewer young collections, so that short-lived objects (a request, an
  answer's replay) die before they are promoted, and full collections come less often.

The process's settings are restored when the app stops (the last of several apps running at
once in one process restores them).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class GcTuning:
    """How a live app sets the garbage collector while it runs (`LiveApp(gc=...)`).

    - `freeze`: call `gc.freeze()` once the app has started (after its lifespans: the runner
      is open, templates are loaded), so that full collections skip what start-up created.
    - `thresholds`: `gc.set_threshold(*thresholds)` while the app runs (None: leave them).
      The default, (10,000, 20, 100) against CPython's (700, 10, 10), makes a young
      collection about every 10,000 allocations and a full one rarely.

    It changes the whole process's collector: use it in a server process, not in a process
    that embeds the app among other work with its own needs.
    """

    freeze: bool = True
    thresholds: tuple[int, int, int] | None = (10_000, 20, 100)

    _active: ClassVar[list[tuple[int, int, int]]] = []  # thresholds to restore, per app

    def apply(self) -> None:
        """Apply the settings (called by the app at start-up); `restore()` undoes them."""
        GcTuning._active.append(gc.get_threshold())
        if self.thresholds is not None:
            gc.set_threshold(*self.thresholds)
        if self.freeze:
            # Collect first: what is garbage now would otherwise be kept forever.
            gc.collect()
            gc.freeze()

    def restore(self) -> None:
        """Undo `apply()`: the thresholds before it, and frozen objects back to the oldest
        generation once no other app in the process is running with its settings."""
        if not GcTuning._active:
            return
        thresholds = GcTuning._active.pop()
        if not GcTuning._active:
            gc.set_threshold(*thresholds)
            if self.freeze:
                gc.unfreeze()
