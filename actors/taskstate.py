"""A counter actor's cached state of one task: what it holds between the writes of its turns."""

from __future__ import annotations

from typing import Any

import attrs

from taskengine.storage import Execution, Task

from . import messages as m


@attrs.define
class TaskState:
    task: Task
    counter: int
    stored: int = 0  # the counter as the last write stored it
    mark: int = 0  # the prune mark: the lowest stored index
    #: the retention policy's state: None idle, PRUNE_SCHEDULED while a Prune is on its way, or the
    #: index of the unfinished execution the last prune stopped at (pruning waits for it to finish)
    prune_wait: int | None = None
    deleted: bool = False  # a tombstone, so the id reads as absent until the entry is dropped
    running: dict[str, tuple[int, Execution]] = attrs.Factory(dict)  # id -> (token, RUNNING record)
    queued: dict[str, Execution] = attrs.Factory(dict)  # blocking executions not started yet
    # idempotency keys not (yet) on disk: key -> (execution id, the turn whose write stores the key,
    # or None while its blocking execution is queued and has no record)
    idem: dict[str, tuple[str, int | None]] = attrs.Factory(dict)
    # non-blocking idempotent repeats of a queued blocking execution, by its id: handled again
    # once it leaves the queue (README: they wait until the first one has an index)
    parked: dict[str, tuple[m.Trigger, ...]] = attrs.Factory(dict)

    def exhausted(self) -> bool:
        return self.task.max_executions is not None and self.counter >= self.task.max_executions

    def saved(self) -> tuple[Any, ...]:
        """What handling a message may change of it, its collections copied (for ``put_back``:
        a turn decided again)."""
        return (self.task, self.counter, self.stored, self.mark, self.prune_wait, self.deleted,
                dict(self.running), dict(self.queued), dict(self.idem), dict(self.parked))

    def put_back(self, saved: tuple[Any, ...]) -> None:
        (self.task, self.counter, self.stored, self.mark, self.prune_wait, self.deleted,
         self.running, self.queued, self.idem, self.parked) = saved

    def view(self) -> Task:
        """The task as callers see it: with its counter and prune mark as they stand."""
        return attrs.evolve(self.task, execution_count=self.counter, prune_mark=self.mark)


PRUNE_SCHEDULED = -1
