"""How the engine's actors reach each other, and asks and tells that survive close().

Tasks are hashed onto a fixed, bounded set of counter actors: a task always maps to
the same actor for the life of an engine, so that actor is its one writer, and the
number of threads does not grow with the number of tasks.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import attrs
import pykka

from .errors import EngineClosed

#: while an executor's thread runs a job, ``in_job.refs`` is its engine's ActorRefs (else unset or
#: None): how close() recognises a call from one of its own jobs
in_job = threading.local()


@attrs.define
class ActorRefs:
    """The refs of one engine's actors, shared by all of them; set once at open."""

    counters: list[pykka.ActorRef[Any]] = attrs.Factory(list)
    pending: pykka.ActorRef[Any] | None = None
    pool: pykka.ActorRef[Any] | None = None
    #: the pool's work queue (a WorkQueue), which counter actors hand ready work to
    work: Any = None
    #: called by the counter actors, the pending store and the pool when they stop; the engine
    #: tells its own close() from a stop by someone else
    on_stop: Callable[[], None] = lambda: None

    def counter_for(self, task_id: str) -> pykka.ActorRef[Any]:
        counters = self.counters
        if len(counters) == 1:  # the default: no hash on every message
            return counters[0]
        return counters[zlib.crc32(task_id.encode()) % len(counters)]


def tell_if_alive(ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
    """Tell an actor that may already be stopped (the engine is closing); False if it was."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


def await_reply(reply: pykka.Future[Any], *refs: pykka.ActorRef[Any], timeout: float | None = None) -> Any:
    """Wait for an answer that ``refs`` (every actor the message passes through) owe; EngineClosed
    if one of them stopped without passing it on (a message can land in an inbox just after the
    actor's last look at it); pykka.Timeout after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
        try:
            return reply.get(timeout=step)
        except pykka.ActorDeadError:
            raise EngineClosed() from None
        except pykka.Timeout:
            if not all(ref.is_alive() for ref in refs):
                raise EngineClosed() from None
            if deadline is not None and time.monotonic() >= deadline:
                raise


def ask(ref: pykka.ActorRef[Any] | None, message: Any) -> Any:
    """An ask that cannot hang on an actor stopped by close()."""
    if ref is None:
        raise EngineClosed()
    try:
        return await_reply(ref.ask(message, block=False), ref)
    except pykka.ActorDeadError:
        raise EngineClosed() from None
