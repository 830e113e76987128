"""The pending store: owner of the pre-assigned indexes of non-blocking executions.

An entry is added once the execution's record is durable, claimed by the executor
that runs it (or by a cancel), and removed when it finishes. A claim succeeds once,
so two deliveries of one execution can never run it twice (the original's defect 3).
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from . import messages as m
from .errors import EngineClosed
from .mailbox import EngineActor

log = logging.getLogger(__name__)


class PendingStore(EngineActor):

    def __init__(self) -> None:
        super().__init__()
        # (task id, execution id) -> [index, claimed]
        self._entries: dict[tuple[str, str], list[Any]] = {}
        self._by_task: dict[str, set[str]] = {}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.AddPending):
            for task_id, execution_id, index in message.entries:
                self._entries[(task_id, execution_id)] = [index, False]
                self._by_task.setdefault(task_id, set()).add(execution_id)
        elif isinstance(message, m.ClaimThenStart):
            if self._claim(message.task_id, message.execution_id) is None:
                m.answer(message.start.reply, m.NOT_CLAIMED)
            else:
                try:
                    message.counter.tell(message.start)
                except pykka.ActorDeadError:
                    m.fail(message.start.reply, EngineClosed())
        elif isinstance(message, m.Claim):
            return self._claim(message.task_id, message.execution_id)
        elif isinstance(message, m.RemovePending):
            for task_id, execution_id in message.entries:
                self._remove(task_id, execution_id)
        elif isinstance(message, m.DropTask):
            ids = self._by_task.pop(message.task_id, set())
            return [(eid, self._entries.pop((message.task_id, eid))[0]) for eid in ids]
        elif isinstance(message, m.PendingCount):
            return len(self._entries)
        else:
            return super().on_receive(message)
        return None

    def _claim(self, task_id: str, execution_id: str) -> int | None:
        """The index, the first time; None if unknown (cancelled, deleted) or claimed already."""
        entry = self._entries.get((task_id, execution_id))
        if entry is None or entry[1]:
            return None
        entry[1] = True
        return int(entry[0])

    def _remove(self, task_id: str, execution_id: str) -> None:
        if self._entries.pop((task_id, execution_id), None) is not None:
            ids = self._by_task[task_id]
            ids.discard(execution_id)
            if not ids:
                del self._by_task[task_id]
