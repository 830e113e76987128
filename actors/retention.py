"""Retention: how far pruning goes at a time, when the policy prunes, and its sweep at open.

Pruning moves a task's prune mark up past finished executions and deletes them (see
``storage.changes.prune``). The mark only moves past a contiguous run of finished executions:
the stored indexes must stay exactly ``mark .. counter-1``, so an unfinished execution (PENDING
or RUNNING) stops it, and everything above that waits until it finishes. A counter actor
prunes at most ``PRUNE_CHUNK`` executions per turn, in a turn of its own, so a large prune is
many small writes with the actor's other messages served in between.

With ``Engine.open(..., keep_last=N)`` the counter actors apply the policy as executions
finish: once a task holds ``slack(N)`` more than ``N`` executions, they prune it back to
``N``. A task nothing happens to is not looked at then, so :class:`RetentionSweep` applies the
policy once to every task when the engine opens, one task and one chunk at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from taskengine.storage import Task

from .errors import EngineClosed, EngineError

log = logging.getLogger(__name__)

#: executions one Prune message removes at most (one write)
PRUNE_CHUNK = 1000


def slack(keep_last: int) -> int:
    """How many executions beyond ``keep_last`` a task may hold before the policy prunes it: a
    tenth of ``keep_last``, at least 16, at most ``PRUNE_CHUNK``; so a prune's write is shared
    by many finished executions rather than made for each."""
    return min(PRUNE_CHUNK, max(16, keep_last // 10))


class RetentionSweep:
    """A thread that prunes every task holding more than ``keep_last`` executions back to
    ``keep_last``, once, through ``prune(task_id)``, which waits for each step: at most one of its
    Prune messages is in any inbox at a time. Tasks are listed from the database a page at a
    time, so a task that needs nothing costs no message."""

    def __init__(
        self,
        keep_last: int,
        list_tasks: Callable[[str | None], list[Task]],
        prune: Callable[[str], int],
    ) -> None:
        self._keep_last = keep_last
        self._list = list_tasks
        self._prune = prune
        self._stop = threading.Event()
        self.removed = 0
        self._thread = threading.Thread(target=self._run, name="taskengine-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the sweep to stop after the step in hand; the engine stops its actors after this,
        which ends a step in hand with EngineClosed."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        tasks = 0
        after: str | None = None
        try:
            while not self._stop.is_set():
                page = self._list(after)
                if not page:
                    break
                for task in page:
                    if self._stop.is_set():
                        break
                    if task.execution_count - task.prune_mark > self._keep_last:
                        removed = self._prune(task.id)
                        self.removed += removed
                        tasks += 1 if removed else 0
                after = page[-1].id
        except EngineClosed:
            return
        except EngineError as e:  # a storage failure: the engine refuses writes from now on
            log.error("retention sweep stopped: %s", e)
            return
        if self.removed:
            log.info("retention sweep pruned %d executions of %d tasks", self.removed, tasks)
