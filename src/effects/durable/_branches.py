"""`Parallel` branches in a logged run: each branch has a logger of its own.

A branch of a `Parallel` performed under an `EffectLogger` is recorded by a `BranchLogger`: an
`EffectLogger` whose log is the branch's own sub-log, so within a branch everything works as in
a run (positions, replay, divergence, idempotency keys `"{run_id}/{branch}:{seq}"`), whatever
the other branches do meanwhile. Its entries are *merged* into the parent's log as they become
durable: each gets the parent's next position (so the parent's log stays ordered by position,
in the order the branches' effects completed) and the branch id in `LogEntry.branch`.

Branch ids are `"{position}.{index}"`: the parent's next position when the `Parallel` started
and the branch's index; a branch of a branch is `"{outer}/{inner}"`. A replay reaches the same
`Parallel` at the same position, so the ids come out the same, and each branch replays its own
entries (a cursor per branch) in whatever order the branches run this time.

Checkpoints: a branch logger's `Checkpoint` is answered by `_SerialCheckpoints`, outside the
root logger: under one lock per run, it merges the branch's new entries (and those of the
branches it is nested in) into the root log and checkpoints the root's log, so two branches
never write the store at once and a checkpoint never writes an older log over a newer one.
"""

from __future__ import annotations

from collections.abc import Generator
from types import GeneratorType
from typing import Any

import anyio

from .._exceptions import Cancellation, ConfigurationError, LogError
from .._handler import Handler, Table, handles
from .._interpreter import InScope, Run, ScopeEffect, Tables, extend
from ._effects import Checkpoint, is_at_most_once
from ._log import LogEntry, make_log, moved
from ._logger import EffectLogger

ENDED_BEFORE = "the Parallel ended before this branch"
"""The reason a replayed branch is cancelled with when the run's log shows the Parallel ended
before the branch did (it was cancelled between two effects, which leaves no entry)."""


class _Family:
    """What the loggers of one run's branches share: the root logger, the tables their
    computations run in (outside the root logger, with serial checkpoints), and the lock."""

    def __init__(self, root: EffectLogger) -> None:
        self.root = root
        self.lock = anyio.Lock()
        self.loggers: dict[str, BranchLogger] = {}
        self.outside: Tables | None = None

    def set_outside(self, outside: Tables) -> None:
        if self.outside is None:
            self.outside, _ = extend(outside, (_SerialCheckpoints(self),))


class _Acquire(ScopeEffect):
    """Wait for a lock (the async driver awaits it)."""

    lock: Any

    def answer(self, run: Run, tables: Tables) -> Any:
        return self.lock.acquire()


class _SerialCheckpoints(Handler):
    """Answers a branch logger's `Checkpoint`: merge, then checkpoint the root log, one at a
    time."""

    def __init__(self, family: _Family) -> None:
        self.family = family

    def install(self) -> _SerialCheckpoints:
        return self

    @handles(Checkpoint)
    def _checkpoint(self, effect: Checkpoint) -> Generator[Any, Any, None]:
        family = self.family
        yield _Acquire(family.lock)
        try:
            logger = family.loggers.get(effect.log.run_id or "")
            if logger is not None:
                logger.merge_up()
            # Performed here, in the scope outside the root logger: the runner's handler.
            yield Checkpoint(family.root._snapshot(), effect.reason)
        finally:
            family.lock.release()

    def __repr__(self) -> str:
        return "EffectLogger.branch_checkpoints"


def _entries_of(logger: EffectLogger) -> list[LogEntry]:
    """A logger's entries as `LogEntry`s (it keeps in-memory effects in a cheaper form)."""
    return logger._materialized()


def _sub_log(parent: EffectLogger, bid: str) -> list[LogEntry]:
    """The parent's recorded entries of branch `bid` (and of the branches nested in it), as
    the branch's own log: branch-relative ids, positions counted from 0 in log order."""
    out: list[LogEntry] = []
    nested = bid + "/"
    for e in parent._branch_old:
        b = e.branch or ""
        if b == bid:
            rel = None
        elif b.startswith(nested):
            rel = b[len(nested) :]
        else:
            continue
        out.append(moved(e, len(out), rel))
    return out


def start_branch(parent: EffectLogger, path: str, group: object) -> BranchLogger:
    """The logger of the branch `path` of the `Parallel` identified by `group` (one object
    per `Parallel`), run under `parent` (the installed root or branch logger)."""
    marker = parent._groups.get(group)
    if marker is None:
        # First branch of this Parallel: the ids' prefix is the parent's next position. The
        # recorded entries of its branches (on replay) join the parent's log at once, in their
        # stored order: a checkpoint taken while they replay must not leave them out.
        marker = parent._next_seq
        parent._groups[group] = marker
        prefix = f"{marker}."
        adopted = [e for e in parent._branch_old if (e.branch or "").startswith(prefix)]
        if adopted:
            parent._entries.extend(adopted)
            parent._next_seq = max(parent._next_seq, adopted[-1].seq + 1)
    bid = f"{marker}.{path.rsplit('.', 1)[-1]}"
    if isinstance(parent, BranchLogger):
        family = parent._family
    else:
        found: _Family | None = parent.__dict__.get("_branch_family")
        if found is None:
            found = parent.__dict__["_branch_family"] = _Family(parent)
        family = found
    run_id = f"{parent.run_id}/{bid}"
    log = make_log(parent._computation, parent._version, run_id, _sub_log(parent, bid))
    logger = BranchLogger(
        log, run_id=run_id, checkpoints=parent.checkpoints, allow_divergence=parent.allow_divergence
    )
    logger._family = family
    logger._parent = parent
    logger._bid = bid
    return logger


class BranchLogger(EffectLogger):
    """The logger of one `Parallel` branch (see the module's docstring)."""

    _family: _Family
    _parent: EffectLogger
    _bid: str
    _merged: int

    def install(self) -> BranchLogger:
        inst = super().install()
        assert isinstance(inst, BranchLogger)
        inst._merged = inst._n_old  # the replayed entries are in the parent's log already
        self._family.loggers[inst.run_id] = inst
        return inst

    def intercept(self, table: Table) -> None:
        # The recording wrappers of the logger outside give way to this branch's, which wrap
        # the same original handlers (an entry that still has the original's owner is that
        # logger's wrapper: a handler installed further in would own its entry). The home of
        # such an entry is where that logger's computations run.
        parent = self._parent
        for t, original in parent._originals.items():
            entry = table.get(t)
            if entry is not None and entry is not original and entry[2] is original[2]:
                if not isinstance(parent, BranchLogger):
                    self._family.set_outside(entry[1])
                table[t] = original
        super().intercept(table)

    # The logger's own computations (the effect performed for real, then its checkpoint) run
    # outside the root logger, as the root's own do: not in this branch's scope, where the
    # loggers outside would record them again.

    def _live(self, effect: Any, external: bool, amo: bool) -> Any:
        if amo or is_at_most_once(type(effect)):
            # Its write-ahead record would sit among the other branches' entries: refused,
            # the same way live and on replay (nothing is recorded).
            return ConfigurationError(
                f"{type(effect).__qualname__} is at-most-once: it cannot run inside a "
                "Parallel branch"
            )
        parent = self._parent
        if parent._cursor < parent._n_old:
            # The run went on after this Parallel (its log holds more than the branches), so
            # the Parallel ended with this branch unfinished: it was cancelled here, between
            # two effects (an effect in flight would have recorded the cancellation). It must
            # not go on live with effects the run never performed: it is cancelled again.
            return Cancellation(ENDED_BEFORE)
        return self._outside(super()._live(effect, external, amo))

    def _replay(self, effect: Any, external: bool, amo: bool) -> Any:
        return self._outside(super()._replay(effect, external, amo))

    def _outside(self, result: Any) -> Any:
        if type(result) is GeneratorType:
            outside = self._family.outside
            assert outside is not None
            return InScope(result, outside)
        return result

    def cleanup(self) -> None:
        # The branch ended: what it recorded since its last checkpoint joins the parent's log
        # (checkpointed with the parent's next checkpoint).
        self.merge()
        super().cleanup()

    def merge(self) -> None:
        """Move the entries recorded since the last merge into the parent's log."""
        entries = _entries_of(self)
        start = self._merged
        if len(entries) < start:
            if self._diverged is not None:
                return  # a replay that diverged before its recorded end: that error goes on
            raise LogError(
                "a durable_loop inside a Parallel branch pruned entries the run's log already "
                "holds: loops inside branches are not supported"
            )
        parent = self._parent
        bid = self._bid
        for e in entries[start:]:
            seq = parent._next_seq
            parent._next_seq = seq + 1
            branch = bid if e.branch is None else f"{bid}/{e.branch}"
            parent._entries.append(moved(e, seq, branch))
        self._merged = len(entries)

    def merge_up(self) -> None:
        """Merge into the parent, the parent into its parent, and so on up to the root."""
        logger: EffectLogger = self
        while isinstance(logger, BranchLogger):
            logger.merge()
            logger = logger._parent
