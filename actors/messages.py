"""Messages between the engine's actors.

Requests to a counter actor carry their own ``reply`` future: pykka answers an
``ask`` when the handler returns, which is too early for an index whose write the
actor makes later in the same turn.

Messages are slotted attrs classes but not frozen: a frozen attrs ``__init__`` costs several
times as much, and an execution crosses five of them. No one changes a message once it is sent.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
import pykka

from taskengine.storage import Execution, Task

from .mailbox import Reply


def answer(reply: Reply[Any] | None, value: Any) -> None:
    if reply is not None:
        reply.set(value)


def fail(reply: Reply[Any] | None, error: BaseException) -> None:
    if reply is not None:
        reply.set_exception((type(error), error, error.__traceback__))


@attrs.define
class WorkItem:
    """An execution for the pool to run. Non-blocking ones carry their PENDING record (with
    its index); blocking ones have no index yet. ``incarnation`` ties it to one life of the task."""

    execution: Execution
    job: str
    incarnation: str


# -- counter actor ----------------------------------------------------------------------


@attrs.define
class CreateTask:
    """-> the task. With ``exist_ok`` an existing task with the same job, config and max_executions
    is the answer (TaskAlreadyExists naming the difference if they differ)."""

    task: Task
    reply: Reply[Any]
    exist_ok: bool = False


@attrs.define
class Trigger:
    """The counter actor builds the execution: with its index if non-blocking, without if blocking."""

    execution_id: str
    task_id: str
    data: Any
    blocking: bool
    created_at: float
    idempotency_key: str | None
    reply: Reply[Any]


class NotStarted(enum.Enum):
    """The answer to a Start (or ClaimThenStart) whose execution must not run; else the answer is
    ``(running Execution, Task)``."""

    #: the pending store had nothing to claim: cancelled, deleted, or claimed by another delivery
    UNCLAIMED = "unclaimed"
    #: the counter actor refused it (its task was deleted; a queued blocking execution was cancelled
    #: or its task completed; it runs already; its executor was given up on); a claimed non-blocking
    #: entry is the executor's to remove
    REFUSED = "refused"


@attrs.define
class Finish:
    execution: Execution
    incarnation: str
    token: int
    reply: Reply[Any] | None = None
    #: the pending store removed the execution's entry already (it passed this Finish on)
    unlisted: bool = False


@attrs.define
class Start:
    item: WorkItem
    token: int
    reply: Reply[Any]  # -> (running Execution, Task) or a NotStarted
    #: the executor's previous run, finished (of any task of this counter actor): handled first, in the same turn
    finished: Finish | None = None


@attrs.define
class Abandon:
    """The executor holding ``token`` timed out or died. A started execution finishes as FAILED;
    a claimed non-blocking one that never started is failed too, not run again; a blocking
    ticket that started nothing goes back to the pool; a Start that comes later with ``token``
    is refused."""

    item: WorkItem
    token: int
    reason: str


@attrs.define
class Cancel:
    task_id: str
    execution_id: str
    reply: Reply[Any]


@attrs.define
class DeleteTask:
    task_id: str
    reply: Reply[Any]


@attrs.define
class GetTask:
    task_id: str
    reply: Reply[Any]


@attrs.define
class Lookup:
    """An execution the caller did not find on disk. Answered after the actor's turn's write
    with the queued blocking Execution (it has no record yet) or None (read the disk again:
    its record, if any, is written now); TaskNotFound if the task does not exist."""

    task_id: str
    execution_id: str
    reply: Reply[Any]


@attrs.define
class Prune:
    """Move the task's prune mark up towards ``before_index`` (and ``keep_last`` below the counter),
    past at most ``PRUNE_CHUNK`` finished executions, deleting them. Handled in a turn of its own,
    where memory and disk agree. -> Pruned. ``reply`` None: the actor's own retention policy.
    ``incarnation``: the task a prune in steps started on; if the id now names a task created
    since (the first was deleted), nothing is pruned."""

    task_id: str
    keep_last: int | None
    before_index: int | None
    reply: Reply[Any] | None
    incarnation: str | None = None


@attrs.define(frozen=True)
class Pruned:
    #: executions removed by this message
    removed: int
    #: the task's prune mark after it
    mark: int
    #: where the mark was asked to go (the lower of ``before_index`` and counter - ``keep_last``)
    target: int
    #: True when the mark stopped at an unfinished execution below the target
    blocked: bool
    #: the task's incarnation: the next step of the same prune names it
    incarnation: str


@attrs.define
class Interrupted:
    """Recovery: an execution found RUNNING at open; the process that ran it died."""

    execution: Execution
    reply: Reply[Any]


@attrs.define
class RemoteOutcomes:
    """Executions waited for here that another node finished (or deleted with their task):
    ``finished`` are published, ``failed`` (execution id, error) fail their waiters. Through
    the task's counter actor, so a finish this node wrote itself is published by the turn that
    wrote it (after its hooks), never first by this message."""

    finished: list[Execution]
    failed: list[tuple[str, Exception]]


@attrs.define
class CounterStats:
    reply: Reply[Any]


# -- pending store ----------------------------------------------------------------------


@attrs.define
class AddPending:
    entries: list[tuple[str, str, int]]  # (task id, execution id, index), on disk already
    claimed: bool = False  # started at their trigger (see Run.started): claimed already


@attrs.define
class AddUnknown:
    """-> those of ``entries`` the store did not hold, the first ``limit`` of them, now added:
    PENDING executions another node made, found in the database (remote.py)."""

    entries: list[tuple[str, str, int]]
    limit: int


@attrs.define
class Claim:
    """-> True if this claim took the entry; False if there is none or it was claimed already."""

    task_id: str
    execution_id: str


@attrs.define
class ClaimThenStart:
    """An executor's claim: if it succeeds the store passes ``start`` on to ``counter``, else it
    answers ``start.reply`` with NotStarted.UNCLAIMED. The executor waits once, not for two
    round trips."""

    task_id: str
    execution_id: str
    counter: pykka.ActorRef[Any]
    start: Start


@attrs.define
class RemovePending:
    entries: list[tuple[str, str]]  # (task id, execution id): finished, failed or cancelled


@attrs.define
class DropTask:
    """-> the task's entries (execution id -> claimed yet), which are forgotten."""

    task_id: str


@attrs.define
class PutBack:
    """Entries of a task as they were (execution id -> claimed yet), before a turn that is decided
    again took them (DropTask, Claim): see the counter actor's ``_decide_again``."""

    task_id: str
    entries: dict[str, bool]


@attrs.define
class PendingCount:
    pass


# -- executor pool ----------------------------------------------------------------------


@attrs.define
class Submit:
    items: list[WorkItem]


@attrs.define
class Run:
    """Run ``item``; ``started`` is set when the counter actor started it in its trigger's write
    (an idle executor was waiting): its RUNNING record is durable, and the executor runs the job
    without asking for a start."""

    item: WorkItem
    token: int
    started: tuple[Execution, Task] | None = None


@attrs.define
class ExecutorIdle:
    """The executor found no more work in the queue (told while the pool drains: it waits for idle executors)."""

    executor_urn: str


@attrs.define
class JobTimedOut:
    """The run ``token`` of the executor passed the job timeout (sent from the deadlines thread)."""

    executor_urn: str
    token: int


@attrs.define
class ExecutorStopped:
    executor_urn: str
    reason: str


@attrs.define
class JobRegistered:
    name: str


@attrs.define
class Drain:
    reply: Reply[Any]


@attrs.define
class PoolStats:
    pass


@attrs.define
class StorageFailed:
    """A write failed (or the node lost its lease): the pool drops its queue and runs nothing
    more (waiters are answered by the completion board; non-blocking executions stay PENDING on
    disk for the next open); a counter actor answers its parked repeats with the writer's refusal."""


@attrs.define
class ListExecutors:
    """-> (idle executors, executors still running a job or abandoned)."""
