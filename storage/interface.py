"""The one interface every storage backend implements, and the choice of backend.

The engine's actors and the tools call only this: a :class:`Store` reads, its :class:`Changes`
build the semantic changes of a task (create it, assign indexes, start, finish, cancel, prune,
delete it), and its :class:`Writer` applies a group of changes atomically: one LevelDB write
batch, or one PostgreSQL transaction. A change is opaque to its callers (LevelDB: key
operations; PostgreSQL: statements), so a backend encodes it when it is built, and a value
that cannot be stored fails before the caller has changed anything.

The shape follows huey's ``BaseStorage`` and dramatiq's brokers: small, semantic operations
that each backend makes atomic its own way, with no backend-specific call outside ``storage``.
"""

from __future__ import annotations

import abc
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import attrs

from .errors import CorruptRecord, StorageError, WriteFailed
from .pgurl import redact as redact  # re-exported: shown() and the tools use it
from .pgurl import scrub as scrub
from .records import Execution, Task

log = logging.getLogger(__name__)

#: one atomic change, as its backend built it (callers only pass it back to the writer)
Change = list[Any]

#: told of a record that does not decode, by a reader that then goes on without it
OnCorrupt = Callable[[CorruptRecord], None]

#: the schemes of a URL that selects the PostgreSQL backend
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

#: the kinds of change a :class:`ChangesFeed` reports: PENDING executions were created,
#: executions finished (or were cancelled, or deleted with their task)
PENDING_CREATED = "p"
FINISHED = "f"
ALL_CHANGES = (PENDING_CREATED, FINISHED)


@attrs.frozen
class Node:
    """One node of a PostgreSQL database as its writer joined it: its id, and the epoch that
    fences every write it makes (a later open under the same id has a higher one)."""

    id: str
    epoch: int


class StoredTask(NamedTuple):
    """A task's row as a turn found it under its lock (see :meth:`Writer.begin`)."""

    id: str
    counter: int
    prune_mark: int
    incarnation: str | None


class Changes(Protocol):
    """Builds changes; each raises (TypeError/ValueError from the codec) before anything is written."""

    def create_task(self, task: Task) -> Change: ...

    def assign(self, execution: Execution, *, with_counter: bool = True, started: bool = False) -> Change:
        """Store ``execution`` at its index. ``with_counter=False``: the caller puts the task's
        ``counter`` in the same write, once per task per write (a batch of assignments).
        ``started``: a RUNNING execution this writer's node has just started (PostgreSQL records
        it as the runner); without it a RUNNING one is stored as run by no node (a copy), and the
        next engine to open finishes it as interrupted."""
        ...

    def counter(self, task_id: str, value: int, was: int | None = None) -> Change:
        """The task's counter moved from ``was`` (None: not known) to ``value``."""
        ...

    def update(self, execution: Execution) -> Change:
        """Started, finished or cancelled: the record as it now is. With several nodes (PostgreSQL)
        it is a claim: a start applies only to a PENDING execution, a finish only to one this node
        runs (or that had not started); one that does not apply is a *miss* (see Writer.write)."""
        ...

    def prune(self, task_id: str, executions: Sequence[Execution], mark: int) -> Change: ...

    def delete_task(self, task_id: str) -> Change: ...


class Writer(Protocol):
    """Applies groups of changes, each group atomically and durably (when ``sync``), in order.

    After a write fails the writer is *failed*: it refuses every further write (``refusal``)
    until the store is reopened, so an acknowledged index is never re-issued. A writer can also
    fail between writes (a PostgreSQL node that lost its lease); it then calls ``on_failure``."""

    sync: bool
    failure: str | None
    on_write: Callable[[int, float], None] | None
    #: called (from any thread) when the writer fails outside a write
    on_failure: Callable[[], None] | None

    @property
    def writes(self) -> int:
        """Writes made (transactions, batches)."""
        ...

    @property
    def changes(self) -> int:
        """Changes written by those writes."""
        ...

    @property
    def node(self) -> Node | None:
        """The node this writer writes as (PostgreSQL), or None (LevelDB: one writer, no nodes)."""
        ...

    def begin(self, task_ids: Callable[[], Collection[str]]) -> list[StoredTask] | None:
        """Start a turn over the tasks ``task_ids()`` names: a backend that shares its database
        with other writers locks them and returns their rows as they now stand (a task missing
        from the list has no row), and the turn's next ``write`` (even of no change) ends it.
        A backend with one writer returns None and never calls ``task_ids``."""
        ...

    def begin_stamped(self, tasks: Mapping[str, str | None]) -> bool:
        """Start a turn over ``tasks`` (id -> incarnation, as the caller knows them) that only hands
        out indexes (new executions and their counters, written by ``write_stamped``), or say this
        backend does not (False: ``begin`` starts the turn). One that shares its database locks
        nothing yet: its write moves each counter, from the value it holds then, by the indexes
        handed out, so a task is locked for the write's commit only."""
        ...

    def write_stamped(self, changes: Sequence[Change]) -> dict[str, int]:
        """The write of a turn ``begin_stamped`` started: each task's *shift*, how far its counter
        had moved past the value the turn assumed (the turn's indexes of it all moved by as much).
        TasksChanged if a task was deleted, made again or would pass its limit: nothing was
        written, and the turn is decided again (then started by ``begin``)."""
        ...

    def lane(self, number: int) -> Writer:
        """The writer counter actor ``number`` writes through: a backend whose writes can be in
        flight at once (PostgreSQL: a connection each, for tasks no other lane's turns hold) gives
        each number a lane of its own, sharing this writer's node and failure; one whose writes
        are serial returns itself."""
        ...

    def write(self, changes: Sequence[Change]) -> Collection[int]:
        """Apply ``changes``; the positions of those that missed (a claim another node won, a
        finish of an execution no longer there): they changed nothing, the rest applied."""
        ...

    def refusal(self) -> WriteFailed | None: ...


class ChangesFeed(Protocol):
    """Tells a node what other nodes sharing its database changed (PostgreSQL's LISTEN)."""

    def wait(self, timeout: float) -> set[str]:
        """The kinds of change (PENDING_CREATED, FINISHED) others made, as soon as one is heard
        of, within ``timeout`` seconds; empty if none. Every kind when some may have been missed."""
        ...

    def wake(self) -> None:
        """Ends a wait in progress (from any thread) as if PENDING executions had been made."""
        ...

    def listen(self, on: bool) -> bool:
        """Be told of other nodes' changes (``on``, as at the start) or not; from the waiting
        thread. True if it is told again after it was not: changes made meanwhile were missed."""
        ...

    def close(self) -> None:
        """Ends a wait in progress (from any thread); later waits return at once."""
        ...

    def release(self) -> None:
        """Frees the feed's connection, once no thread waits on it any more."""
        ...


class Store(abc.ABC):
    """An open database: its readers, its change builder and its writer.

    ``path`` names it in messages and logs (a PostgreSQL URL without its password); ``schema``
    is the schema version stored in it. Readers are safe from any thread."""

    path: str
    schema: int

    @property
    @abc.abstractmethod
    def changes(self) -> Changes:
        """This backend's change builder."""

    @abc.abstractmethod
    def writer(self, *, sync: bool = True) -> Writer: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Idempotent; waits for a write in progress."""

    # -- tasks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def get_task(self, task_id: str) -> Task | None:
        """The stored task with its stored counter and prune mark."""

    @abc.abstractmethod
    def read_counter(self, task_id: str) -> int:
        """The stored counter (0 if there is none)."""

    @abc.abstractmethod
    def read_prune_mark(self, task_id: str) -> int:
        """The stored prune mark (0 if there is none)."""

    @abc.abstractmethod
    def last_index(self, task_id: str) -> int | None:
        """The highest stored execution index of the task."""

    @abc.abstractmethod
    def iter_task_ids(self, after: str | None = None) -> Iterator[str]:
        """Every task id in code point order (``after``: the ids past that one)."""

    @abc.abstractmethod
    def list_tasks(self, after: str | None = None, limit: int = 50, on_corrupt: OnCorrupt | None = None) -> list[Task]:
        """A page of tasks in id order, each with its stored counter and prune mark. A task that
        does not decode raises CorruptRecord, or, given ``on_corrupt``, is passed to it and left out."""

    # -- executions ----------------------------------------------------------------------

    @abc.abstractmethod
    def get_execution_at(self, task_id: str, index: int) -> Execution | None: ...

    @abc.abstractmethod
    def get_execution(self, task_id: str, execution_id: str) -> Execution | None: ...

    @abc.abstractmethod
    def find_idempotent(self, task_id: str, key: str) -> str | None:
        """The id of the execution stored with this idempotency key."""

    @abc.abstractmethod
    def iter_executions(
        self, task_id: str, *, after: int | None = None, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[Execution]:
        """A task's executions in index order; ``after`` is exclusive in the scan direction."""

    @abc.abstractmethod
    def iter_live(self, on_corrupt: OnCorrupt | None = None) -> Iterator[tuple[str, int, str | None]]:
        """(task id, index, execution id) of every PENDING or RUNNING execution: what recovery
        reads, without finished history. ``on_corrupt``: see the LevelDB store."""

    def read_executions(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Execution]:
        """The executions stored under these (task id, execution id) pairs, by pair; a missing
        one is left out. A backend that can reads them all at once."""
        out: dict[tuple[str, str], Execution] = {}
        for task_id, execution_id in keys:
            ex = self.get_execution(task_id, execution_id)
            if ex is not None:
                out[(task_id, execution_id)] = ex
        return out

    # -- several nodes ---------------------------------------------------------------------

    def changes_feed(self) -> ChangesFeed | None:
        """What other nodes sharing the database change; None where there are none (LevelDB:
        one engine writes to a database, and it knows what it wrote)."""
        return None

    def pending_elsewhere(self, jobs: Sequence[str], limit: int, salt: str,
                          after: str = "") -> tuple[list[tuple[Execution, Task]], str]:
        """Up to ``limit`` PENDING executions of tasks whose job is one of ``jobs``, each with its
        task, looked for from the first task after ``after`` on (wrapping around), and where the
        next look should start; ``salt`` orders them differently for every caller, so nodes looking
        at once mostly take different ones. None where no other node writes."""
        return [], after

    # -- retention -------------------------------------------------------------------------

    @abc.abstractmethod
    def first_live(self, task_id: str) -> int | None:
        """The lowest index of the task's PENDING or RUNNING executions."""

    @abc.abstractmethod
    def finished_run(self, task_id: str, start: int, stop: int) -> list[Execution]:
        """The records at ``start, start+1, ...`` below ``stop`` while each is there and finished."""

    # -- copies --------------------------------------------------------------------------

    @abc.abstractmethod
    def backup(self, dest: str) -> int:
        """A consistent copy at ``dest``; returns the number of items copied."""


def finished_run(task_id: str, start: int, records: Iterable[tuple[int, Callable[[], Execution]]]) -> list[Execution]:
    """What ``Store.finished_run`` returns, from a backend's records in index order from ``start``
    (each an index and how to decode it): the run of finished ones at ``start, start+1, ...``,
    stopping at the first unfinished, missing or undecodable one, so the stored indexes stay
    contiguous under the new prune mark."""
    out: list[Execution] = []
    for expect, (index, decode) in enumerate(records, start):
        if index != expect:
            break
        try:
            ex = decode()
        except CorruptRecord as e:
            log.error("prune of %r stops at index %d: %s", task_id, index, e)
            break
        if not ex.status.is_finished:
            break
        out.append(ex)
    return out


def shown(target: str) -> str:
    """``target`` as messages show it: a URL without its password, a path as it is."""
    return redact(target) if is_url(target) else target


def is_url(target: str) -> bool:
    return target.startswith(POSTGRES_SCHEMES)


#: a node's lease on a PostgreSQL database, in seconds, unless the engine is given another
DEFAULT_LEASE = 10.0


def default_node_id() -> str:
    """A node's id unless it is given one: unique among the processes of one host at a time."""
    return f"{socket.gethostname()}-{os.getpid()}"


def open_store(target: str, *, create: bool = False, node_id: str | None = None,
               node_lease: float = DEFAULT_LEASE) -> Store:
    """The store at ``target``: a ``postgresql://`` URL, or the path of a LevelDB directory.

    ``create``: the engine's mode (make the database or schema if missing, upgrade an older
    schema); the tools open with ``create=False`` and never write. ``node_id`` and ``node_lease``:
    what the store's writer joins a PostgreSQL database as (see ``pg_nodes``); LevelDB has one
    writer and no nodes."""
    if is_url(target):
        try:
            from .postgres import PostgresStore  # psycopg is an optional dependency
        except ImportError as e:
            raise StorageError(f"cannot open {shown(target)}: PostgreSQL needs the psycopg driver, which is not "
                               f"installed ({e}): pip install 'taskengine[postgres]'") from None
        return PostgresStore.open(target, create=create, node_id=node_id, node_lease=node_lease)
    from .db import Database

    return Database.open(target, create=create)
