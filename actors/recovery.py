"""Recovery at open: every acknowledged execution that was unfinished when the last engine
stopped is taken up again (README: nothing lost)."""

from __future__ import annotations

import logging
from typing import Any

from taskengine.storage import CorruptRecord as StorageCorrupt
from taskengine.storage import ExecutionStatus, Task
from taskengine.storage.interface import Store, Writer

from . import messages as m
from .backlog import Backlog
from .errors import ExecutionNotFound, TaskNotFound, storage_errors
from .mailbox import Reply
from .refs import ActorRefs, ask

log = logging.getLogger(__name__)


def recover(db: Store, committer: Writer, refs: ActorRefs, backlog: Backlog | None) -> None:
    """Nothing lost (README): queue every acknowledged PENDING execution again and finish every
    RUNNING one as FAILED (its process died). Reads only the live set, never history."""
    tasks: dict[str, Task | None] = {}
    unreadable: set[str] = set()
    replies: list[Reply[Any]] = []
    pending: list[tuple[str, str, int]] = []
    items: list[m.WorkItem] = []
    with storage_errors():
        for task_id, index, execution_id in db.iter_live(on_corrupt=_log_corrupt_live):
            if task_id in unreadable:
                continue
            try:
                if task_id not in tasks:
                    tasks[task_id] = db.get_task(task_id)
                task = tasks[task_id]
                record = db.get_execution_at(task_id, index)
            except StorageCorrupt as e:  # one bad record must not keep a node from starting
                if task_id not in tasks:
                    unreadable.add(task_id)  # its task record: said once for all its entries
                log.error("recovery skips %r/%d: %s", task_id, index, e)
                continue
            if execution_id is None and record is not None:
                execution_id = record.id  # the live entry is damaged; its record says what is there
            if task is None or record is None or record.id != execution_id:
                if committer.node is not None:
                    # several nodes: another one deleted the task (and maybe made it again)
                    # between the scan and this read; nothing is left to recover of it here
                    log.debug("live entry %r/%d (%s) went with its task meanwhile", task_id, index,
                              execution_id)
                    continue
                log.error("live entry %r/%d (%s) has no matching record; left for replay to report",
                          task_id, index, execution_id)
                continue
            if record.status is ExecutionStatus.RUNNING:
                reply: Reply[Any] = Reply()
                refs.counter_for(task_id).tell(m.Interrupted(record, reply))
                replies.append(reply)
            elif record.status is ExecutionStatus.PENDING:
                pending.append((task_id, record.id, index))
                items.append(m.WorkItem(record, task.job, task.incarnation))
    assert refs.pending is not None and refs.pool is not None
    if backlog is not None:
        backlog.add(execution_id for _, execution_id, _ in pending)
    refs.pending.tell(m.AddPending(pending))  # before the pool can claim them
    refs.pool.tell(m.Submit(items))
    # answered once the pool has queued them: they are ahead of any trigger made after open (a
    # trigger on an idle executor would otherwise run first, started by its own write)
    ask(refs.pool, m.PoolStats())
    for reply in replies:
        try:
            reply.get()
        except (TaskNotFound, ExecutionNotFound):
            if committer.node is None:
                raise
            # several nodes: another one deleted the task since the scan, as above
            log.debug("an interrupted execution went with its task meanwhile")
    if items or replies:
        log.info("recovered %d pending executions; %d interrupted ones finished as FAILED",
                 len(items), len(replies))


def _log_corrupt_live(e: StorageCorrupt) -> None:
    log.error("recovery: %s; the record at its index is recovered if it is unfinished", e)
