"""Each state change of a task or execution as the operations of one atomic LevelDB write
(the LevelDB backend's :class:`~taskengine.storage.interface.Changes`).

This is the only place that decides which keys a change touches, so the engine and
the replay checks agree on what a consistent database looks like.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import codec, keys
from .batch import DeletePrefix, Op
from .records import Execution, Task


def create_task(task: Task) -> list[Op]:
    return [(keys.task_key(task.id), codec.encode_task(task)), *counter(task.id, 0)]


def assign(execution: Execution, *, with_counter: bool = True, started: bool = False) -> list[Op]:
    """Hand out ``execution.index``: the counter moves past it in the same batch that stores
    the record, so an index is never issued without its record (invariant 2).

    ``with_counter=False`` leaves the counter to the caller, which must put ``counter(...)``
    in the same write: a counter actor writes it once per task per turn, not once per index.
    ``started`` (PostgreSQL's runner of a RUNNING execution) means nothing here: one writer."""
    assert execution.index is not None
    tid, index, eid = execution.task_id, execution.index, execution.id.encode()
    prefix, record_key, live_key = keys.execution_keys(tid, index)
    ops: list[Op] = [
        (record_key, codec.encode_execution(execution)),
        (prefix + keys.EXEC_ID + eid, codec.encode_int(index)),
    ]
    if with_counter:
        ops += counter(tid, index + 1)
    if not execution.status.is_finished:
        ops.append((live_key, eid))
    if execution.idempotency_key is not None:
        ops.append((prefix + keys.IDEMPOTENCY + execution.idempotency_key.encode(), eid))
    return ops


def counter(task_id: str, value: int, was: int | None = None) -> list[Op]:
    """The counter put to ``value`` (LevelDB has one writer: ``was`` needs no check)."""
    return [(keys.counter_key(task_id), codec.encode_int(value))]


def update(execution: Execution) -> list[Op]:
    """Started, finished or cancelled: rewrite the record; a finished one leaves the live set."""
    assert execution.index is not None
    _, record_key, live_key = keys.execution_keys(execution.task_id, execution.index)
    ops: list[Op] = [(record_key, codec.encode_execution(execution))]
    if execution.status.is_finished:
        ops.append((live_key, None))
    return ops


def prune(task_id: str, executions: Sequence[Execution], mark: int) -> list[Op]:
    """Remove finished ``executions`` (the records from the task's prune mark up to ``mark``) and
    move the mark to ``mark``, in one atomic write: the stored indexes stay exactly
    ``mark .. counter-1``. Their id and idempotency keys go too: a pruned execution is not found,
    and a trigger repeating its idempotency key makes a new execution."""
    ops: list[Op] = []
    for ex in executions:
        assert ex.index is not None and ex.index < mark and ex.status.is_finished
        prefix, record_key, _ = keys.execution_keys(task_id, ex.index)
        ops.append((record_key, None))
        ops.append((prefix + keys.EXEC_ID + ex.id.encode(), None))
        if ex.idempotency_key is not None:
            ops.append((prefix + keys.IDEMPOTENCY + ex.idempotency_key.encode(), None))
    ops.append((keys.prune_mark_key(task_id), codec.encode_int(mark)))
    return ops


def delete_task(task_id: str) -> list[Op]:
    """Everything of the task: record, counter, executions, ids, idempotency keys, live entries."""
    return [DeletePrefix(keys.task_prefix(task_id)), DeletePrefix(keys.live_prefix(task_id))]
