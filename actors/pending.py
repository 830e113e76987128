"""The pending store: owner of the pre-assigned indexes of non-blocking executions.

An entry is added once the execution's record is durable, claimed by the executor
that runs it (or by a cancel), and removed when it finishes. A claim succeeds once,
so two deliveries of one execution can never run it twice.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from . import messages as m
from .errors import EngineClosed
from .mailbox import EngineActor
from .refs import ActorRefs

log = logging.getLogger(__name__)


class PendingStore(EngineActor):

    def __init__(self, refs: ActorRefs) -> None:
        super().__init__()
        self._refs = refs
        self._claimed: dict[tuple[str, str], bool] = {}  # (task id, execution id) -> claimed yet

        self._by_task: dict[str, set[str]] = {}

    def on_receive(self, message: Any) -> Any:
        if type(message) is m.ClaimThenStart:  # one per execution: asked first
            self._claim_then_start(message)
        elif isinstance(message, m.AddPending):
            self._add(message.entries, message.claimed)
        elif isinstance(message, m.AddUnknown):
            unknown = [e for e in message.entries if (e[0], e[1]) not in self._claimed]
            return self._add(unknown[:message.limit])
        elif isinstance(message, m.Claim):
            return self._claim(message.task_id, message.execution_id)
        elif isinstance(message, m.RemovePending):
            for task_id, execution_id in message.entries:
                self._remove(task_id, execution_id)
        elif isinstance(message, m.DropTask):
            ids = self._by_task.pop(message.task_id, set())
            return {eid: self._claimed.pop((message.task_id, eid)) for eid in ids}
        elif isinstance(message, m.PutBack):
            for eid, claimed in message.entries.items():
                self._claimed[(message.task_id, eid)] = claimed
                self._by_task.setdefault(message.task_id, set()).add(eid)
        elif isinstance(message, m.PendingCount):
            return len(self._claimed)
        else:
            return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        self._refs.on_stop()

    def _add(self, entries: list[tuple[str, str, int]], claimed: bool = False) -> list[tuple[str, str, int]]:
        """An entry held already keeps its state: one found in the database (AddUnknown) and
        added by its own trigger's turn too is claimed once. ``claimed``: started by the trigger."""
        for task_id, execution_id, _ in entries:
            self._claimed.setdefault((task_id, execution_id), claimed)
            self._by_task.setdefault(task_id, set()).add(execution_id)
        return entries

    def _claim_then_start(self, message: m.ClaimThenStart) -> None:
        start, finished = message.start, message.start.finished
        if finished is not None and not finished.execution.blocking:
            # the executor's previous run, on its way to the counter actor with this Start
            self._remove(finished.execution.task_id, finished.execution.id)
            finished.unlisted = True
        if self._claim(message.task_id, message.execution_id):
            sent: Any = start
        else:
            m.answer(start.reply, m.NotStarted.UNCLAIMED)
            sent = finished  # None, or the finish alone
        if sent is not None:
            try:
                message.counter.tell(sent)
            except pykka.ActorDeadError:
                m.fail(start.reply, EngineClosed())

    def _claim(self, task_id: str, execution_id: str) -> bool:
        """True the first time; False if unknown (cancelled, deleted) or claimed already."""
        entry = (task_id, execution_id)
        if self._claimed.get(entry, True):
            return False
        self._claimed[entry] = True
        return True

    def _remove(self, task_id: str, execution_id: str) -> None:
        if self._claimed.pop((task_id, execution_id), None) is not None:
            ids = self._by_task[task_id]
            ids.discard(execution_id)
            if not ids:
                del self._by_task[task_id]
