"""Messages between the engine's actors.

Requests to a counter actor carry their own ``reply`` future: pykka answers an
``ask`` when the handler returns, which is too early for an index whose write the
actor makes later in the same turn.

Messages are slotted attrs classes but not frozen: a frozen attrs ``__init__`` costs three
times as much (~1.4 against ~0.45 us for a Trigger), and an execution crosses five of them.
No one changes a message once it is sent.
"""

from __future__ import annotations

from typing import Any

import attrs
import pykka

from taskengine.storage import Execution, Task

from . import mailbox

Reply = mailbox.Reply[Any]


def answer(reply: Reply | None, value: Any) -> None:
    if reply is not None:
        reply.set(value)


def fail(reply: Reply | None, error: BaseException) -> None:
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
    task: Task
    reply: Reply


@attrs.define
class Trigger:
    """The counter actor builds the execution: with its index if non-blocking, without if blocking."""

    execution_id: str
    task_id: str
    data: Any
    blocking: bool
    created_at: float
    idempotency_key: str | None
    reply: Reply


@attrs.define
class Start:
    item: WorkItem
    token: int
    reply: Reply  # -> (running Execution, Task) or None when the execution must not run


@attrs.define
class Finish:
    execution: Execution
    incarnation: str
    token: int
    reply: Reply | None = None


@attrs.define
class Abandon:
    """The executor running ``item`` died: fail it if it started, else hand it back."""

    item: WorkItem
    token: int
    reason: str


@attrs.define
class Cancel:
    task_id: str
    execution_id: str
    reply: Reply


@attrs.define
class DeleteTask:
    task_id: str
    reply: Reply


@attrs.define
class GetTask:
    task_id: str
    reply: Reply


@attrs.define
class Lookup:
    """What the counter actor knows of an execution that is not on disk: a queued blocking one,
    or the sequence number of the task's last write to wait for before reading again."""

    task_id: str
    execution_id: str
    reply: Reply


@attrs.define
class Interrupted:
    """Recovery: an execution found RUNNING at open; the process that ran it died."""

    execution: Execution
    reply: Reply


@attrs.define
class CounterStats:
    reply: Reply


# -- pending store ----------------------------------------------------------------------


@attrs.define
class AddPending:
    entries: list[tuple[str, str, int]]  # (task id, execution id, index), on disk already


@attrs.define
class Claim:
    task_id: str
    execution_id: str


#: the pending store's answer to a ClaimThenStart whose claim failed
NOT_CLAIMED = False


@attrs.define
class ClaimThenStart:
    """An executor's claim: if it succeeds the store passes ``start`` on to ``counter``, else it
    answers ``start.reply`` with NOT_CLAIMED. The executor waits once, not for two round trips."""

    task_id: str
    execution_id: str
    counter: pykka.ActorRef[Any]
    start: Start


@attrs.define
class RemovePending:
    entries: list[tuple[str, str]]  # (task id, execution id): finished, failed or cancelled


@attrs.define
class DropTask:
    task_id: str


@attrs.define
class PendingCount:
    pass


# -- executor pool ----------------------------------------------------------------------


@attrs.define
class Submit:
    items: list[WorkItem]


@attrs.define
class Run:
    item: WorkItem
    token: int


@attrs.define
class Done:
    """The executor found no more work in the queue."""

    executor_urn: str


@attrs.define
class Expired:
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
    reply: Reply


@attrs.define
class PoolStats:
    pass


@attrs.define
class Executors:
    """-> (idle executors, executors still running a job or abandoned)."""
