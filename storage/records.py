"""The records the engine stores: tasks and executions.

They live in ``storage`` (not ``actors``) so replay tools can read and check a
database without importing the actor layer. ``actors`` re-exports them.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

#: the error of an execution that was RUNNING when its engine stopped (a crash, or a job that
#: outlived close): it is finished as FAILED with it at the next open, or at close (PostgreSQL)
INTERRUPTED = "interrupted: the engine stopped while this execution was running"


class ExecutionStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    # both are read on every state change: plain attributes set on each member below, since
    # looking a member up in a set or dict hashes it in Python each time
    _finished: bool
    _code: bytes

    @property
    def is_finished(self) -> bool:
        return self._finished

    @property
    def code(self) -> bytes:
        """One byte stored at the head of an execution record (see FORMAT.md)."""
        return self._code

    @classmethod
    def from_code(cls, code: int) -> ExecutionStatus:
        return _FROM_CODE[code]


_FINISHED = frozenset({ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
_CODES = {s: s.value[0].encode() for s in ExecutionStatus}
_FROM_CODE = {c[0]: s for s, c in _CODES.items()}
for _status in ExecutionStatus:
    _status._finished = _status in _FINISHED
    _status._code = _CODES[_status]


class TaskStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    #: the task has handed out ``max_executions`` indexes; it takes no more triggers
    COMPLETED = "COMPLETED"


@attrs.frozen
class Execution:
    """One run of a task. ``index`` is ``None`` only for a blocking execution still queued:
    blocking executions get their index when an executor starts them.

    ``error`` says what went wrong in one line (``"TypeName: message"``); ``traceback`` is the full
    text of the exception a job raised (None for every other execution, including one that failed
    for another reason: a timeout, an interruption, a result that is not JSON)."""

    id: str
    task_id: str
    index: int | None
    status: ExecutionStatus
    blocking: bool
    data: Any = None
    result: Any = None
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False)
        d["status"] = self.status.value
        return d


# An execution's two state changes are built positionally: they run on every start and every
# finish, and attrs.evolve (which goes through the fields by name) costs twice as much. A field
# added to Execution would be silently dropped or misplaced by them, so they are written against
# this list, and importing the module fails when Execution's fields no longer match it.
_STATE_CHANGE_FIELDS = (
    "id", "task_id", "index", "status", "blocking", "data",
    "result", "error", "created_at", "started_at", "finished_at", "idempotency_key", "traceback",
)
if tuple(field.name for field in attrs.fields(Execution)) != _STATE_CHANGE_FIELDS:
    raise ImportError(
        "Execution's fields changed: update records.started and records.finished (they build it "
        "positionally) and _STATE_CHANGE_FIELDS"
    )


def started(ex: Execution, started_at: float, index: int | None = None) -> Execution:
    """``ex`` RUNNING since ``started_at``; a blocking execution gets its ``index`` here."""
    return Execution(
        ex.id, ex.task_id, ex.index if index is None else index, ExecutionStatus.RUNNING, ex.blocking, ex.data,
        ex.result, ex.error, ex.created_at, started_at, ex.finished_at, ex.idempotency_key, ex.traceback,
    )


def finished(
    ex: Execution,
    status: ExecutionStatus,
    finished_at: float,
    *,
    result: Any = None,
    error: str | None = None,
    traceback: str | None = None,
) -> Execution:
    """``ex`` finished as ``status`` (SUCCESS, FAILED or CANCELLED) with this result or error."""
    return Execution(
        ex.id, ex.task_id, ex.index, status, ex.blocking, ex.data,
        result, error, ex.created_at, ex.started_at, finished_at, ex.idempotency_key, traceback,
    )


@attrs.frozen
class Task:
    """A task as the engine reports it. ``execution_count`` is the counter: the number of
    indexes handed out so far, which is also the index the next execution gets.
    ``prune_mark`` is the lowest index still stored: the executions below it were pruned, so
    the task's stored indexes are exactly ``prune_mark .. execution_count - 1``."""

    id: str
    job: str
    config: Any = None
    max_executions: int | None = None
    created_at: float = 0.0
    #: changes each time a task with this id is created, so work queued for a deleted
    #: task can never be mistaken for work of a later task with the same id
    incarnation: str = ""
    execution_count: int = 0
    prune_mark: int = 0

    @property
    def status(self) -> TaskStatus:
        if self.max_executions is not None and self.execution_count >= self.max_executions:
            return TaskStatus.COMPLETED
        return TaskStatus.ACTIVE

    def to_json(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False)
        d["status"] = self.status.value
        return d
