"""The PostgreSQL backend of :class:`~taskengine.storage.interface.Store` (``postgresql://`` URLs).

Layout (schema ``taskengine``, version in ``taskengine.meta``; see FORMAT.md):

- ``tasks``: one row per task with its record (the same bytes as LevelDB's task record), its
  counter and its prune mark. The counter is this row's column, moved in the same transaction
  that inserts the execution rows (never a sequence: a sequence is not rolled back, so it
  leaves gaps), and only by an UPDATE that checks the value it moves from and
  ``max_executions``: no index past the limit can be stored, whoever writes.
- ``executions``: one row per execution (index, id, status, idempotency key, the record in
  LevelDB's record bytes, decoded by the same codec); unique per task by index, by id and by
  idempotency key; deleted with their task by ``ON DELETE CASCADE``.

One group of changes is one transaction. With ``sync`` it commits with ``synchronous_commit``
on, so an index is acknowledged only once its commit is durable. If the connection is lost
while a transaction commits, the outcome is settled before anyone is answered: the old server
process is terminated (so the commit cannot still be under way), and the writer's *write mark*
says whether it committed: every transaction of a writer first sets its node's row of
``write_marks`` to the next number of a sequence only that writer advances, so the row holds the
transaction's number exactly when the transaction committed (nothing another node does later can
make that true or false, and a server that crashed and reused the transaction's id cannot fool
it as ``txid_status`` can). If it did not commit, the transaction is made again on a new
connection; a turn whose tasks another node changed meanwhile is handed back to be decided again
(:class:`~taskengine.storage.errors.TasksChanged`).

Several engines (nodes) share one database (see ``pg_nodes``): every transaction of a writer is
fenced by its node's epoch and lease; a counter actor's turn first locks the tasks it touches
(``PostgresWriter.begin``) so nodes are serialised per task; a start is a claim that another node
may have won, reported back as a miss rather than a failure.

Every statement takes its values as parameters; a password in a URL is never logged.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NoReturn

import attrs
import psycopg  # the optional extra taskengine[postgres]; storage.open_store imports this module lazily
import psycopg_pool

from . import codec, interface, keys, pg_nodes, pgarrays
from .errors import (
    CorruptRecord,
    NotADatabase,
    StorageError,
    StorageLocked,
    TasksChanged,
    UnknownSchema,
    WriteFailed,
)
from .interface import (
    FINISHED,
    PENDING_CREATED,
    Change,
    Changes,
    ChangesFeed,
    Node,
    OnCorrupt,
    Store,
    StoredTask,
    Writer,
    redact,
    scrub,
)
from .pgfeed import PostgresFeed, notify
from .records import INTERRUPTED, Execution, ExecutionStatus, Task

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
KNOWN_SCHEMAS = (1, 2, 3)
#: how long a lost connection is retried before a write gives up (and the writer fails)
RECONNECT_SECONDS = 30.0
#: how many times in a row a turn may be handed back (TasksChanged) before the writer gives up
STALE_TURNS = 10
#: the session advisory lock a version-1 engine's writer holds: no upgrade while one writes
LEGACY_WRITER_LOCK = 0x74_61_73_6B_65_6E_67  # "taskeng"
#: the namespace (first key) of the per-task advisory locks a turn takes (see PostgresWriter.begin)
TASK_LOCKS = 0x7461_736B  # "task"
PAGE = 1000
#: how many of the first PENDING rows a look for other nodes' work chooses from
DISCOVERY_WINDOW = 1000

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS taskengine",
    "CREATE TABLE taskengine.meta (name text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE taskengine.tasks (
        id text PRIMARY KEY COLLATE "C",
        record bytea NOT NULL,
        max_executions bigint,
        counter bigint NOT NULL DEFAULT 0,
        prune_mark bigint NOT NULL DEFAULT 0,
        CHECK (counter >= 0 AND (max_executions IS NULL OR counter <= max_executions)),
        CHECK (prune_mark >= 0 AND prune_mark <= counter))""",
    """CREATE TABLE taskengine.executions (
        task_id text NOT NULL COLLATE "C" REFERENCES taskengine.tasks (id) ON DELETE CASCADE,
        idx bigint NOT NULL,
        id text NOT NULL,
        status "char" NOT NULL,
        idempotency_key bytea,
        record bytea NOT NULL,
        PRIMARY KEY (task_id, idx),
        UNIQUE (task_id, id),
        UNIQUE (task_id, idempotency_key))""",
    "CREATE INDEX executions_live ON taskengine.executions (task_id, idx) WHERE status IN ('P', 'R')",
)
#: version 1 -> 2: several nodes (FORMAT.md)
_UPGRADE_2 = (
    """CREATE TABLE taskengine.nodes (
        id text PRIMARY KEY COLLATE "C",
        epoch bigint NOT NULL,
        lease_until timestamptz NOT NULL,
        alive boolean NOT NULL)""",
    "ALTER TABLE taskengine.tasks ADD COLUMN job text, ADD COLUMN incarnation text",
    "ALTER TABLE taskengine.executions ADD COLUMN runner text, ADD COLUMN runner_epoch bigint",
    "CREATE INDEX executions_runner ON taskengine.executions (runner, runner_epoch) WHERE status = 'R'",
)
#: version 2 -> 3: each node's write mark, which settles a commit in doubt (FORMAT.md)
_UPGRADE_3 = (
    """CREATE TABLE taskengine.write_marks (
        node text PRIMARY KEY COLLATE "C",
        epoch bigint NOT NULL,
        seq bigint NOT NULL,
        missed bigint[] NOT NULL DEFAULT '{}')""",
)
#: the first statement of every write transaction: the write mark (the module's docstring), the
#: fence (pg_nodes.FENCE), then the advisory lock of each task the turn touches, in the order of
#: their keys (every node takes them in that order: no deadlock). One round trip for the three.
_FENCE_AND_LOCK = (
    "WITH mark AS (UPDATE taskengine.write_marks SET seq = %s, missed = '{}' WHERE node = %s AND epoch = %s) "
    "SELECT (SELECT count(pg_advisory_xact_lock(%s, k)) FROM (SELECT DISTINCT hashtext(i) AS k "
    "FROM unnest(%s::text[]) AS i ORDER BY k) AS s) FROM taskengine.nodes WHERE id = %s AND epoch = %s AND alive "
    "AND lease_until > clock_timestamp() FOR KEY SHARE"
)
#: the write mark as it stands: (epoch, seq, missed) of the node's row
_READ_MARK = "SELECT epoch, seq, missed FROM taskengine.write_marks WHERE node = %s"
#: a transaction's changes that missed, kept with its mark: known again if its commit is in doubt
_MARK_MISSED = "UPDATE taskengine.write_marks SET missed = %s WHERE node = %s AND epoch = %s"
#: then the tasks' rows, locked and read as they now stand (a statement of its own: a snapshot
#: taken after the advisory locks, so it sees what their previous holder committed)
_LOCK_ROWS = ("SELECT id, counter, prune_mark, incarnation FROM taskengine.tasks WHERE id = ANY(%s) "
              "ORDER BY id FOR UPDATE")


def _message(e: BaseException) -> str:
    """psycopg's message, first line: it never carries the connection's password."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@attrs.frozen
class Stmt:
    """One statement of a change. ``expect``: the row count it must affect, or the transaction
    is rolled back (a counter that moved under us, a limit reached), unless it is ``soft``: then
    a count of 0 is a *miss* the writer reports (another node claimed the execution first, or it
    is gone), and the rest of the transaction applies."""

    sql: str
    params: tuple[Any, ...]
    expect: int | None = None
    soft: bool = False
    #: the kind of change other nodes are told of (interface.PENDING_CREATED, FINISHED), if any:
    #: the transaction sends one notification for all its statements that applied (pgfeed.py)
    notify: str = ""
    #: the row it picks, if it picks at most one by its key: several of it are checked by their
    #: total (a soft one: by the keys its set-based form returns), and a group never holds one key
    #: twice (one statement after another sees the one before; one set-based statement does not)
    key: tuple[Any, ...] = ()
    #: the same change for many rows as one statement: one array per parameter of ``params``, in
    #: their order, joined as rows by ``unnest``; a soft one returns the keys of the rows it changed
    batch: str = ""
    #: what it reads and writes, for the order a write sends its statements in (see ``_plan``):
    #: (task id, index) one execution row of the task; (task id, None) the task as a whole (its
    #: row, or every execution of it); None: not declared, kept in place among all the others
    touches: tuple[str, int | None] | None = None


_STATUS = {status: status.code.decode() for status in ExecutionStatus}


def _groups(stmt: Stmt) -> bool:
    """Whether ``stmt`` can go in a group made one set-based statement: it has that form, and it
    expects nothing, or one row it picks by its key (so the group's row count is the number of
    its statements exactly when each touched its row; a soft one's returned keys say which did)."""
    return bool(stmt.batch) and (stmt.expect is None or (stmt.expect == 1 and bool(stmt.key)))


Flat = Sequence[tuple[int, Stmt]]


def _plan(flat: Flat) -> list[list[tuple[int, Stmt]]]:
    """A write's statements (``flat``: each with its change's position, in the order the changes
    came) as groups, in the order they go to the server: each group is one statement, one
    set-based statement where it holds several of one kind. Grouping by kind, not only
    consecutive statements, is what makes a turn's INSERTs, starts, finishes and counters one
    statement each, whatever the order of the messages that made them.

    Why the result is the same as the statements one after another, in their order: two
    statements *conflict* when they belong to one change, when either has no footprint
    (``Stmt.touches`` is None), when both concern one task and either concerns the whole task
    (its row, or all its executions: create, counter, prune, delete), or when both concern one
    execution row. The plan keeps every two conflicting statements in their order, in different
    groups (a statement goes to the first group of its kind after every group holding a statement
    it conflicts with, else to a new group at the end). Two statements that do not conflict read
    and write disjoint rows (an execution's statement reads only its row and, through its foreign
    key, the existence of its task's row, which only whole-task statements change), so swapping
    two neighbours that do not conflict changes neither's row count nor the end state; the plan
    is such swaps away from the original order, and so gives every statement the row count it had
    there and the transaction the same end state. A group holds no two conflicting statements, so
    its set-based form changes each of its rows once, as its statements one after another would.
    A change whose soft statement missed is cancelled exactly as before: the rest of that change
    comes after it (one change: conflict), so ``_statements`` leaves it out when its group is sent.
    A failure (a row count not as expected, a constraint) rolls everything back in any order."""
    groups: list[list[tuple[int, Stmt]]] = []
    of_kind: dict[tuple[str, int | None, bool], list[int]] = {}  # a kind's groups, in order
    last = -1  # the last group of any statement
    barrier = -1  # the last group of a statement with no footprint
    change_at: dict[int, int] = {}  # a change's last group
    task_at: dict[str, int] = {}  # the last group of any statement of a task
    whole_at: dict[str, int] = {}  # the last group of a whole-task statement of a task
    row_at: dict[tuple[str, int], int] = {}  # the last group of an execution's statement
    for position, stmt in flat:
        touches = stmt.touches
        after = max(barrier, change_at.get(position, -1))
        if touches is None:
            after = last
        elif touches[1] is None:
            after = max(after, task_at.get(touches[0], -1))
        else:
            after = max(after, whole_at.get(touches[0], -1), row_at.get((touches[0], touches[1]), -1))
        at = len(groups)
        if _groups(stmt):
            kind = (stmt.batch, stmt.expect, stmt.soft)
            same = of_kind.setdefault(kind, [])
            found = bisect.bisect_right(same, after)
            if found < len(same):
                at = same[found]
            else:
                same.append(at)
        if at == len(groups):
            groups.append([])
        groups[at].append((position, stmt))
        last = max(last, at)
        change_at[position] = at
        if touches is None:
            barrier = at
        else:
            task_at[touches[0]] = max(task_at.get(touches[0], -1), at)
            if touches[1] is None:
                whole_at[touches[0]] = at
            else:
                row_at[(touches[0], touches[1])] = at
    return groups


def _rows_of(*columns: str) -> str:
    """``unnest`` of one array parameter per column (``name type``), as rows named ``v``."""
    arrays = ", ".join(f"%s::{c.split()[1]}[]" for c in columns)
    names = ", ".join(c.split()[0] for c in columns)
    return f"unnest({arrays}) AS v ({names})"


_EXECUTION_KEY = "e.task_id = v.task_id AND e.idx = v.idx AND e.id = v.id"


#: the set-based forms (Stmt.batch) of the statements PostgresChanges makes, parameter for parameter
_INSERT_EXECUTIONS = (
    "INSERT INTO taskengine.executions (task_id, idx, id, status, idempotency_key, record, runner, runner_epoch) "
    "SELECT task_id, idx, id, status::\"char\", idempotency_key, record, runner, runner_epoch FROM "
    + _rows_of("task_id text", "idx bigint", "id text", "status text", "idempotency_key bytea", "record bytea",
               "runner text", "runner_epoch bigint"))
_RAISE_COUNTERS = ("UPDATE taskengine.tasks AS t SET counter = greatest(t.counter, v.value) FROM "
                   + _rows_of("value bigint", "id text") + " WHERE t.id = v.id")
_MOVE_COUNTERS = ("UPDATE taskengine.tasks AS t SET counter = v.value FROM "
                  + _rows_of("value bigint", "id text", "was bigint", "top bigint")
                  + " WHERE t.id = v.id AND t.counter = v.was "
                  "AND (t.max_executions IS NULL OR v.top <= t.max_executions)")
_START = ("UPDATE taskengine.executions AS e SET status = v.status::\"char\", record = v.record, runner = v.runner, "
          "runner_epoch = v.runner_epoch FROM "
          + _rows_of("status text", "record bytea", "runner text", "runner_epoch bigint", "task_id text", "idx bigint",
                     "id text")
          + f" WHERE {_EXECUTION_KEY} AND e.status = 'P' RETURNING e.task_id, e.idx")
_END_PENDING = ("UPDATE taskengine.executions AS e SET status = v.status::\"char\", record = v.record FROM "
                + _rows_of("status text", "record bytea", "task_id text", "idx bigint", "id text")
                + f" WHERE {_EXECUTION_KEY} AND e.status = 'P' RETURNING e.task_id, e.idx")
_FINISH = ("UPDATE taskengine.executions AS e SET status = v.status::\"char\", record = v.record FROM "
           + _rows_of("status text", "record bytea", "task_id text", "idx bigint", "id text", "node text")
           + f" WHERE {_EXECUTION_KEY} AND e.status = 'R' AND (e.runner IS NULL OR e.runner = v.node) "
           "RETURNING e.task_id, e.idx")


class PostgresChanges:
    """The changes as statements (the PostgreSQL :class:`Changes`), made as the store's node
    (``store.node``: the runner a start records, the runner a finish must match)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def create_task(self, task: Task) -> Change:
        record = codec.encode_task(task)
        return [Stmt(
            "INSERT INTO taskengine.tasks (id, record, max_executions, job, incarnation) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            (task.id, record, task.max_executions, task.job, task.incarnation), expect=1,
            touches=(task.id, None),
        )]

    def _runner(self, ex: Execution) -> tuple[str | None, int | None]:
        node = self._store.node
        if ex.status is not ExecutionStatus.RUNNING or node is None:
            return None, None
        return node.id, node.epoch

    def assign(self, execution: Execution, *, with_counter: bool = True, started: bool = False) -> Change:
        assert execution.index is not None
        ex = execution
        key = None if ex.idempotency_key is None else ex.idempotency_key.encode()
        out: Change = [Stmt(
            "INSERT INTO taskengine.executions (task_id, idx, id, status, idempotency_key, record, runner, "
            "runner_epoch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (ex.task_id, ex.index, ex.id, _STATUS[ex.status], key, codec.encode_execution(ex),
             *(self._runner(ex) if started else (None, None))),
            notify=_notice(ex),
            batch=_INSERT_EXECUTIONS,
            touches=(ex.task_id, ex.index),
        )]
        if with_counter:
            out += self.counter(ex.task_id, execution.index + 1, None)
        return out

    def counter(self, task_id: str, value: int, was: int | None = None) -> Change:
        if was is None:
            return [Stmt("UPDATE taskengine.tasks SET counter = greatest(counter, %s) WHERE id = %s",
                         (value, task_id), expect=1, key=(task_id,), batch=_RAISE_COUNTERS, touches=(task_id, None))]
        # the counter moves only from the value this writer knows, and never past the limit
        return [Stmt(
            "UPDATE taskengine.tasks SET counter = %s WHERE id = %s AND counter = %s "
            "AND (max_executions IS NULL OR %s <= max_executions)",
            (value, task_id, was, value), expect=1, key=(task_id,), batch=_MOVE_COUNTERS, touches=(task_id, None),
        )]

    def update(self, execution: Execution) -> Change:
        ex = execution
        record = codec.encode_execution(ex)
        where = "task_id = %s AND idx = %s AND id = %s"
        params: tuple[Any, ...] = (_STATUS[ex.status], record, ex.task_id, ex.index, ex.id)
        if ex.status is ExecutionStatus.RUNNING:  # a start is a claim: of a PENDING one, once
            sql = (f"UPDATE taskengine.executions SET status = %s, record = %s, runner = %s, runner_epoch = %s "
                   f"WHERE {where} AND status = 'P'")
            params = (params[0], params[1], *self._runner(ex), *params[2:])
            batch = _START
        elif ex.started_at is None:  # cancelled or failed before it started: still PENDING
            sql = f"UPDATE taskengine.executions SET status = %s, record = %s WHERE {where} AND status = 'P'"
            batch = _END_PENDING
        else:  # a finish: of one this node runs (or ran in an earlier epoch, or a version-1 one)
            node = self._store.node
            sql = (f"UPDATE taskengine.executions SET status = %s, record = %s WHERE {where} AND status = 'R' "
                   "AND (runner IS NULL OR runner = %s)")
            params = (*params, None if node is None else node.id)
            batch = _FINISH
        return [Stmt(
            sql, params, expect=1, soft=True,
            notify=_notice(ex), key=(ex.task_id, ex.index), batch=batch, touches=(ex.task_id, ex.index),
        )]

    def prune(self, task_id: str, executions: Sequence[Execution], mark: int) -> Change:
        low = min((ex.index for ex in executions if ex.index is not None), default=mark)
        return [
            Stmt("DELETE FROM taskengine.executions WHERE task_id = %s AND idx >= %s AND idx < %s "
                 "AND status NOT IN ('P', 'R')", (task_id, low, mark), expect=len(executions),
                 touches=(task_id, None)),
            Stmt("UPDATE taskengine.tasks SET prune_mark = %s WHERE id = %s", (mark, task_id), expect=1,
                 touches=(task_id, None)),
        ]

    def delete_task(self, task_id: str) -> Change:
        # its unfinished executions end with it: their waiters on other nodes are told
        return [Stmt("DELETE FROM taskengine.tasks WHERE id = %s", (task_id,), notify=FINISHED,
                     batch="DELETE FROM taskengine.tasks WHERE id = ANY(%s::text[])", touches=(task_id, None))]


def _notice(ex: Execution) -> str:
    """What other nodes are told of a write of ``ex``: a new PENDING one may be theirs to run,
    a finished one may be waited for there; a start concerns nobody else."""
    if ex.status is ExecutionStatus.PENDING:
        return PENDING_CREATED
    return FINISHED if ex.status.is_finished else ""




class _Conflict(Exception):
    """A statement affected another number of rows than it must: the transaction is rolled back."""


class _Stale(Exception):
    """A turn's transaction was lost before it committed, and its tasks' rows changed meanwhile."""


class _InDoubt(Exception):
    """The connection was lost during a write and its outcome could not be settled."""


class PostgresStore(Store):
    """An open PostgreSQL database: a pool of connections for the readers; each writer has a
    connection of its own."""

    def __init__(self, url: str, pool: Any, schema: int, node_id: str | None = None,
                 node_lease: float = interface.DEFAULT_LEASE) -> None:
        self.url = url
        self.path = redact(url)
        self.schema = schema
        self._pool = pool
        self._writer: PostgresWriter | None = None
        self._closed = False
        self._changes = PostgresChanges(self)
        self.node_id = node_id if node_id is not None else interface.default_node_id()
        self.node_lease = node_lease
        #: the node this store's writer joined as (None until a writer is made: the tools)
        self.node: Node | None = None

    @classmethod
    def open(cls, url: str, *, create: bool = False, node_id: str | None = None,
             node_lease: float = interface.DEFAULT_LEASE) -> PostgresStore:
        shown = redact(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                _check_encoding(conn, shown)
                schema = _check_schema(conn, shown, create)
        except psycopg.Error as e:
            raise StorageError(f"cannot open {shown}: {scrub(_message(e), url)}") from None
        pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=8, kwargs={"autocommit": True}, open=False, name="taskengine-readers"
        )
        try:
            pool.open(wait=True, timeout=10)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise StorageError(f"cannot open {shown}: {scrub(_message(e), url)}") from None
        log.info("opened taskengine database %s (schema %d)", shown, schema)
        return cls(url, pool, schema, node_id, node_lease)

    @property
    def changes(self) -> Changes:
        return self._changes

    def writer(self, *, sync: bool = True) -> Writer:
        """The store's writer, which joins the database as its node (one at a time: a second
        would take over the node id and fence the first)."""
        if self._writer is not None and not self._writer.closed:
            raise StorageError(f"{self.path} has a writer already: one per open store (one per node)")
        self._writer = PostgresWriter(self, sync=sync)
        self.node = self._writer.node
        return self._writer

    def changes_feed(self) -> ChangesFeed:
        return PostgresFeed(self.url, self.path, self._own_backends)

    def _own_backends(self) -> set[int]:
        """The server process of this store's writer: a feed leaves its notifications out."""
        pid = None if self._writer is None else self._writer.backend_pid()
        return set() if pid is None else {pid}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        self._pool.close()

    # -- reading -------------------------------------------------------------------------

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StorageError(f"the database {self.path} is closed")
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn = None
            try:
                with self._pool.connection(timeout=max(0.1, deadline - time.monotonic())) as conn:
                    return list(conn.execute(sql, params).fetchall())
            except psycopg.OperationalError as e:
                # a connection the server dropped (it restarted): the pool discards it. Every idle
                # connection of the pool was dropped with it, so they are checked (the broken ones
                # discarded) before the read is made again, until the server is back or the deadline
                if conn is None or not conn.broken or time.monotonic() >= deadline:
                    raise StorageError(f"cannot read {self.path}: {_message(e)}") from None
                self._pool.check()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
                raise StorageError(f"cannot read {self.path}: {_message(e)}") from None

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    @staticmethod
    def _task(row: tuple[Any, ...]) -> Task:
        task_id, record, counter, mark = row
        return codec.decode_task(keys.task_key(task_id), bytes(record), counter, mark)

    @staticmethod
    def _execution(task_id: str, index: int, record: Any) -> Execution:
        return codec.decode_execution(keys.execution_key(task_id, index), bytes(record), task_id, index)

    def get_task(self, task_id: str) -> Task | None:
        row = self._one("SELECT id, record, counter, prune_mark FROM taskengine.tasks WHERE id = %s", (task_id,))
        return None if row is None else self._task(row)

    def read_counter(self, task_id: str) -> int:
        row = self._one("SELECT counter FROM taskengine.tasks WHERE id = %s", (task_id,))
        return 0 if row is None else int(row[0])

    def read_prune_mark(self, task_id: str) -> int:
        row = self._one("SELECT prune_mark FROM taskengine.tasks WHERE id = %s", (task_id,))
        return 0 if row is None else int(row[0])

    def last_index(self, task_id: str) -> int | None:
        row = self._one("SELECT max(idx) FROM taskengine.executions WHERE task_id = %s", (task_id,))
        return None if row is None or row[0] is None else int(row[0])

    def iter_task_ids(self, after: str | None = None) -> Iterator[str]:
        while True:
            rows = self._rows("SELECT id FROM taskengine.tasks WHERE %s::text IS NULL OR id > %s ORDER BY id LIMIT %s",
                              (after, after, PAGE))
            for (task_id,) in rows:
                yield task_id
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def list_tasks(self, after: str | None = None, limit: int = 50, on_corrupt: OnCorrupt | None = None) -> list[Task]:
        out: list[Task] = []
        while True:  # a task left out (it does not decode) is made up for by the next one
            want = limit - len(out)
            rows = self._rows(
                "SELECT id, record, counter, prune_mark FROM taskengine.tasks WHERE %s::text IS NULL OR id > %s "
                "ORDER BY id LIMIT %s", (after, after, want))
            for row in rows:
                try:
                    out.append(self._task(row))
                except CorruptRecord as e:
                    if on_corrupt is None:
                        raise
                    on_corrupt(e)
            if len(rows) < want or len(out) >= limit:
                return out
            after = rows[-1][0]

    def get_execution_at(self, task_id: str, index: int) -> Execution | None:
        row = self._one("SELECT record FROM taskengine.executions WHERE task_id = %s AND idx = %s", (task_id, index))
        return None if row is None else self._execution(task_id, index, row[0])

    def get_execution(self, task_id: str, execution_id: str) -> Execution | None:
        row = self._one("SELECT idx, record FROM taskengine.executions WHERE task_id = %s AND id = %s",
                        (task_id, execution_id))
        return None if row is None else self._execution(task_id, int(row[0]), row[1])

    def find_idempotent(self, task_id: str, key: str) -> str | None:
        row = self._one("SELECT id FROM taskengine.executions WHERE task_id = %s AND idempotency_key = %s",
                        (task_id, key.encode()))
        return None if row is None else str(row[0])

    def iter_executions(
        self, task_id: str, *, after: int | None = None, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[Execution]:
        order, cmp = ("DESC", "<") if newest_first else ("ASC", ">")
        left = limit
        while left is None or left > 0:
            page = PAGE if left is None else min(PAGE, left)
            rows = self._rows(
                f"SELECT idx, record FROM taskengine.executions WHERE task_id = %s "
                f"AND (%s::bigint IS NULL OR idx {cmp} %s) ORDER BY idx {order} LIMIT %s",
                (task_id, after, after, page))
            for index, record in rows:
                yield self._execution(task_id, int(index), record)
            if len(rows) < page:
                return
            after = int(rows[-1][0])
            if left is not None:
                left -= len(rows)

    def iter_live(self, on_corrupt: OnCorrupt | None = None) -> Iterator[tuple[str, int, str | None]]:
        """Every PENDING execution, and the RUNNING ones recovery must finish: with a node joined,
        only those of this node id's earlier epochs (and those of no node: a version-1 database);
        a live node's are its own, a lost node's the reaper's."""
        node = self.node
        if node is None:
            rows = self._rows("SELECT task_id, idx, id FROM taskengine.executions WHERE status IN ('P', 'R') "
                              "ORDER BY task_id, idx", ())
        else:
            rows = self._rows(
                "SELECT task_id, idx, id FROM taskengine.executions WHERE status = 'P' OR (status = 'R' "
                "AND (runner IS NULL OR (runner = %s AND runner_epoch < %s))) ORDER BY task_id, idx",
                (node.id, node.epoch))
        for task_id, index, execution_id in rows:
            yield str(task_id), int(index), str(execution_id)

    def read_executions(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Execution]:
        out: dict[tuple[str, str], Execution] = {}
        for start in range(0, len(keys), PAGE):
            page = keys[start:start + PAGE]
            rows = self._rows(
                "SELECT e.task_id, e.id, e.idx, e.record FROM taskengine.executions e "
                "JOIN unnest(%s::text[], %s::text[]) AS k (task_id, id) ON e.task_id = k.task_id AND e.id = k.id",
                ([k[0] for k in page], [k[1] for k in page]))
            for task_id, execution_id, index, record in rows:
                out[(task_id, execution_id)] = self._execution(task_id, int(index), record)
        return out

    def pending_elsewhere(self, jobs: Sequence[str], limit: int, salt: str,
                          after: str = "") -> tuple[list[tuple[Execution, Task]], str]:
        if limit <= 0 or not jobs:
            return [], after
        # a window of the PENDING rows of these jobs in the live index's order, from the first task
        # after ``after`` and around to the start (a look costs about the same whatever the
        # backlog, and successive looks go round every task), shuffled by the caller's salt
        part = ("(SELECT e.task_id, e.idx, e.id, e.record, {n} AS part FROM taskengine.executions e"
                " JOIN taskengine.tasks t ON t.id = e.task_id"
                " WHERE e.status = 'P' AND t.job = ANY(%s) AND e.task_id {cmp} %s"
                " ORDER BY e.task_id, e.idx LIMIT %s)")
        rows = self._rows(
            "WITH w AS (" + part.format(n=0, cmp=">") + " UNION ALL " + part.format(n=1, cmp="<=")
            + " LIMIT %s) "
            "SELECT w.task_id, w.idx, w.record, t.id, t.record, t.counter, t.prune_mark, "
            " (SELECT task_id FROM w ORDER BY part DESC, task_id DESC LIMIT 1) "
            "FROM w JOIN taskengine.tasks t ON t.id = w.task_id ORDER BY hashtext(w.id || %s) LIMIT %s",
            (list(jobs), after, DISCOVERY_WINDOW, list(jobs), after, DISCOVERY_WINDOW, DISCOVERY_WINDOW,
             salt, limit))
        out: list[tuple[Execution, Task]] = []
        for task_id, index, record, *task_row, end in rows:
            after = str(end)
            try:
                out.append((self._execution(task_id, int(index), record), self._task(tuple(task_row))))
            except CorruptRecord as e:
                log.error("a PENDING execution of another node is left alone: %s", e)
        return out, after

    def first_live(self, task_id: str) -> int | None:
        row = self._one("SELECT min(idx) FROM taskengine.executions WHERE task_id = %s AND status IN ('P', 'R')",
                        (task_id,))
        return None if row is None or row[0] is None else int(row[0])

    def finished_run(self, task_id: str, start: int, stop: int) -> list[Execution]:
        if stop <= start:
            return []
        rows = self._rows("SELECT idx, record FROM taskengine.executions WHERE task_id = %s AND idx >= %s "
                          "AND idx < %s ORDER BY idx", (task_id, start, stop))
        return interface.finished_run(
            task_id, start, ((int(index), functools.partial(self._execution, task_id, int(index), record))
                             for index, record in rows))

    def backup(self, dest: str) -> int:
        raise StorageError(f"Engine.backup copies a LevelDB database; back up {self.path} with pg_dump")


def _check_encoding(conn: Any, shown: str) -> None:
    """Task ids, job names and keys are any Unicode text: a database (or a client encoding set by
    the URL or PGCLIENTENCODING) in another encoding cannot store them all, and psycopg gives
    bytes, not text, for SQL_ASCII; refused before anything is written."""
    row = conn.execute("SELECT current_setting('server_encoding'), current_setting('client_encoding')").fetchone()
    server, client = (v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in row)
    if server != "UTF8" or client != "UTF8":
        raise StorageError(
            f"cannot open {shown}: its encoding is {server} (client encoding {client}); taskengine stores ids "
            "and data as Unicode text and needs both to be UTF8: create the database with ENCODING 'UTF8' "
            "(TEMPLATE template0), and leave client_encoding unset or UTF8")


def _check_schema(conn: Any, shown: str, create: bool) -> int:
    """The stored schema version; with ``create``, the schema made if missing or upgraded to
    this version (one node at a time, under an advisory lock)."""
    with conn.transaction():
        if create:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('taskengine.schema'))")
        exists = conn.execute("SELECT to_regclass('taskengine.meta') IS NOT NULL").fetchone()[0]
        if not exists:
            if not create:
                raise NotADatabase(f"{shown} holds no taskengine schema (no table taskengine.meta)")
            for ddl in (*_DDL, *_UPGRADE_2, *_UPGRADE_3):
                conn.execute(ddl)
            conn.execute("INSERT INTO taskengine.meta (name, value) VALUES ('schema_version', %s)",
                         (str(SCHEMA_VERSION),))
            log.info("created the taskengine schema in %s (version %d)", shown, SCHEMA_VERSION)
            return SCHEMA_VERSION
        row = conn.execute("SELECT value FROM taskengine.meta WHERE name = 'schema_version'").fetchone()
        try:
            version = int(row[0]) if row is not None else None
        except ValueError:
            version = None
        if version is None:
            raise UnknownSchema(f"{shown} has no readable taskengine schema version")
        if version not in KNOWN_SCHEMAS:
            known = " and ".join(str(v) for v in KNOWN_SCHEMAS)
            raise UnknownSchema(f"{shown} has schema version {version}; this taskengine knows versions {known}")
        if create and version == 1:
            _upgrade_to_2(conn, shown)
            version = 2
        if create and version == 2:
            for ddl in _UPGRADE_3:
                conn.execute(ddl)
            conn.execute("UPDATE taskengine.meta SET value = '3' WHERE name = 'schema_version'")
            log.info("upgraded the taskengine schema in %s from version 2 to 3", shown)
            version = 3
    return version


def _upgrade_to_2(conn: Any, shown: str) -> None:
    """Version 1 -> 2 in the caller's transaction: the nodes table, and the columns filled from
    each task's record. Refused while a version-1 engine writes (it holds its writer lock)."""
    if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LEGACY_WRITER_LOCK,)).fetchone()[0]:
        raise StorageLocked(shown, "an engine of an earlier taskengine version writes to it; stop it, then open "
                            "this one (which upgrades the database's schema to version 2)")
    for ddl in _UPGRADE_2:
        conn.execute(ddl)
    after = ""
    filled = 0
    while rows := conn.execute("SELECT id, record FROM taskengine.tasks WHERE id > %s ORDER BY id LIMIT %s",
                               (after, PAGE)).fetchall():
        updates = []
        for task_id, record in rows:
            try:
                task = codec.decode_task(keys.task_key(task_id), bytes(record))
            except CorruptRecord as e:
                log.error("schema upgrade leaves the job and incarnation of a task unset: %s", e)
                continue
            updates.append((task.job, task.incarnation, task_id))
        with conn.cursor() as cur:
            cur.executemany("UPDATE taskengine.tasks SET job = %s, incarnation = %s WHERE id = %s", updates)
        filled += len(updates)
        after = rows[-1][0]
    conn.execute("UPDATE taskengine.meta SET value = '2' WHERE name = 'schema_version'")
    log.info("upgraded the taskengine schema in %s from version 1 to 2 (%d tasks)", shown, filled)


@attrs.define
class _OpenTurn:
    """A turn's transaction, begun by PostgresWriter.begin and ended by its next write."""

    ids: list[str]
    rows: list[StoredTask]
    begun: bool = True  # False once the transaction it began is gone (a lost connection)


class _Lost(Exception):
    """The fence found no row: this node no longer holds its lease."""


class PostgresWriter:
    """Applies groups of changes, each group one transaction, one at a time on one connection
    (the PostgreSQL :class:`Writer`), as the node it joined when made (see ``pg_nodes``)."""

    def __init__(self, store: PostgresStore, *, sync: bool) -> None:
        self._store = store
        self.sync = sync
        self.failure: str | None = None
        self.writes = 0
        self.changes = 0
        #: statements sent to the server by writes (a group made one set-based statement counts once)
        self.sent = 0
        self.on_write: Callable[[int, float], None] | None = None
        self.on_failure: Callable[[], None] | None = None
        self._lease = store.node_lease
        self._lock = threading.Lock()
        self._conn: Any = None  # set by _connect
        self.closed = False
        self._turn: _OpenTurn | None = None
        #: the write mark of the newest transaction begun (the module's docstring)
        self._mark = 0
        self._stale = 0  # turns handed back in a row (TasksChanged)
        with self._lock:
            conn = self._connect(deadline=time.monotonic() + 10)
            try:
                conn.autocommit = True
                self.node = pg_nodes.join(conn, store.node_id, self._lease)
            except psycopg.Error as e:
                conn.close()
                raise StorageError(f"cannot join {store.path} as node {store.node_id!r}: {_message(e)}") from None
            conn.autocommit = False  # (not on the connection closed above: that raises, hiding why)
        self._heartbeat = pg_nodes.Heartbeat(self._heartbeat_connection, self.node, self._lease, self._lost)
        self._heartbeat.start()

    def _connect(self, deadline: float) -> Any:
        """A new connection (also returned), retried until ``deadline`` (a server restarting
        refuses for a while). A session idle in a transaction for longer than the lease is
        ended by the server: a node paused inside a transaction cannot hold the reaper off."""
        idle_ms = max(1000, int(self._lease * 1000))
        while True:
            try:
                conn = psycopg.connect(self._store.url, autocommit=True, connect_timeout=5)
                conn.execute("SET synchronous_commit = " + ("on" if self.sync else "off"))
                conn.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
                conn.autocommit = False
                self._conn = conn
                return conn
            except psycopg.Error as e:
                if time.monotonic() >= deadline:
                    raise StorageError(f"cannot connect to {self._store.path}: {_message(e)}") from None
                time.sleep(0.2)  # a server that is restarting: try again shortly

    def _heartbeat_connection(self) -> Any:
        conn = psycopg.connect(self._store.url, autocommit=True, connect_timeout=max(1, int(self._lease)))
        conn.execute(f"SET statement_timeout = {max(100, int(self._lease * 500))}")
        return conn

    def _lost(self, why: str) -> None:
        """The heartbeat found the lease lost: writes stop here (a turn in flight was fenced when
        it began, and the reaper waits for it), and the engine answers its waiters."""
        if self.failure is None:
            self.failure = why
            log.critical("%s", why)
        if self.on_failure is not None:
            self.on_failure()

    def close(self) -> None:
        self._heartbeat.stop()
        with self._lock:
            self.closed = True
            if self._conn is None or self._conn.closed:
                return
            if not self._conn.broken:  # fenced: nothing if the node lost its lease
                try:
                    left = pg_nodes.leave(self._conn, self.node, INTERRUPTED)
                    if left:
                        log.warning("node %r: %d execution(s) still running at close finished as FAILED (%s)",
                                    self.node.id, len(left), INTERRUPTED)
                except psycopg.Error as e:
                    log.warning("node %r could not leave cleanly (%s); another node reaps it once its lease "
                                "expires", self.node.id, _message(e))
            self._conn.close()

    def backend_pid(self) -> int | None:
        """The server process of the writer's connection (None while it has none)."""
        conn = self._conn
        try:
            return None if conn is None or conn.closed else int(conn.info.backend_pid)
        except psycopg.Error:
            return None

    def refusal(self) -> WriteFailed | None:
        if self.failure is None:
            return None
        return WriteFailed(
            f"refused: an earlier write to {self._store.path} failed ({self.failure}); nothing is "
            "written until the engine is reopened, and this call changed nothing",
            outcome_unknown=False,
        )

    def _check(self) -> None:
        refused = self.refusal()
        if refused is not None:
            raise refused
        if self.closed:
            raise WriteFailed(f"the database {self._store.path} is closed", outcome_unknown=False)

    def begin(self, task_ids: Callable[[], Collection[str]]) -> list[StoredTask] | None:
        """Lock the turn's tasks (their advisory locks and rows) in a fenced transaction and read
        their rows; the writer stays locked until the turn's write commits it."""
        ids = sorted(set(task_ids()))
        if not ids:  # nothing to lock or read (a stats request): no transaction
            return []
        self._lock.acquire()
        try:
            self._check()
            rows = self._begin_turn(ids)
        except BaseException:
            self._lock.release()
            raise
        self._turn = _OpenTurn(ids, rows)
        return rows

    def _begin_turn(self, ids: list[str]) -> list[StoredTask]:
        """Nothing is written yet, so a connection lost here is simply made again."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn = self._conn
            backend = conn.info.backend_pid
            try:
                return self._open(conn, ids)
            except _Lost:
                self._rollback()
                self._fail(pg_nodes.lease_lost(self.node), outcome_unknown=False)
            except psycopg.OperationalError as e:
                if not conn.closed and not conn.broken:
                    self._rollback()
                    self._fail(_message(e), outcome_unknown=False)
                log.warning("connection to %s lost at the start of a turn (%s); connecting again",
                            self._store.path, _message(e))
            except psycopg.Error as e:
                self._rollback()
                self._fail(_message(e), outcome_unknown=False)
            try:
                self._reconnect(backend, deadline)
            except (psycopg.Error, StorageError) as e:
                self._fail(f"connection lost and not made again: {_message(e)}", outcome_unknown=False)

    def _open(self, conn: Any, ids: list[str]) -> list[StoredTask]:
        """Begin a transaction on ``conn``: its write mark, the fence and the tasks' locks, then
        their rows."""
        node = self.node
        self._mark += 1  # before it is sent: a connection lost on the way leaves it in doubt too
        fenced = conn.execute(_FENCE_AND_LOCK, (self._mark, node.id, node.epoch, TASK_LOCKS, ids, node.id,
                                                node.epoch)).fetchone()
        if fenced is None:
            raise _Lost()
        if not ids:
            return []
        return [StoredTask(str(i), int(c), int(p), inc)
                for i, c, p, inc in conn.execute(_LOCK_ROWS, (ids,)).fetchall()]

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.rollback()

    def write(self, changes: Sequence[Change]) -> Collection[int]:
        observe = self.on_write
        began = time.perf_counter()
        turn = self._turn
        if turn is None:
            if not changes:
                return ()
            self._lock.acquire()
        try:
            if turn is None:
                self._check()
            elif not changes and self._conn is not None and not self._conn.broken:
                with contextlib.suppress(psycopg.Error):
                    self._conn.commit()  # a turn that only read: its locks go
                return ()
            try:
                missed = self._write(changes, turn)
            except _Lost:
                self._rollback()
                self._fail(pg_nodes.lease_lost(self.node), outcome_unknown=False)
            except _Conflict as e:
                self._rollback()
                self._fail(str(e), outcome_unknown=False)
            except _Stale:
                self._rollback()
                self._stale += 1
                why = "the turn's tasks changed while its connection was lost; nothing of it was written"
                if self._stale >= STALE_TURNS:
                    self._fail(f"{why} ({self._stale} times in a row)", outcome_unknown=False)
                log.warning("%s: the turn is decided again", why)
                raise TasksChanged(f"{why}; the turn is decided again") from None
            except _InDoubt as e:
                self._fail(str(e), outcome_unknown=True)
            except psycopg.Error as e:
                self._rollback()
                self._fail(_message(e), outcome_unknown=False)
            self.writes += 1
            self.changes += len(changes)
            self._stale = 0
        finally:
            self._turn = None
            self._lock.release()
        if observe is not None:
            observe(len(changes), time.perf_counter() - began)
        return missed

    def _fail(self, why: str, *, outcome_unknown: bool) -> NoReturn:
        self.failure = why
        # a writer that stopped cannot finish what its node runs: its lease is left to expire, and
        # another node's reaper finishes those executions (or this node's close, if it can)
        self._heartbeat.halt()
        log.critical("write to %s failed: %s; no more writes until it is reopened", self._store.path, why)
        raise WriteFailed(
            f"database write failed ({why}): "
            + ("the outcome is unknown" if outcome_unknown else "it was rolled back, nothing of it was written")
            + "; nothing more is written until the engine is reopened, and a retry with the same "
            "idempotency key is then safe",
            outcome_unknown=outcome_unknown,
        ) from None

    def _write(self, changes: Sequence[Change], turn: _OpenTurn | None) -> list[int]:
        """One transaction (the turn's, if one is open); a connection lost on the way is settled
        (see the module's docstring) and, if it did not commit, the transaction made again:
        fenced, the turn's tasks locked again and found as the turn found them (else _Stale)."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn = self._conn
            backend = conn.info.backend_pid
            try:
                if turn is None or not turn.begun:
                    rows = self._open(conn, [] if turn is None else turn.ids)
                    if turn is not None and rows != turn.rows:
                        raise _Stale()
                missed = self._statements(conn, changes)
                conn.commit()
                return missed
            except psycopg.OperationalError as e:
                if not conn.closed and not conn.broken:
                    raise  # the server refused the statement: rolled back below, the connection lives
                log.warning("connection to %s lost during a write (%s); settling its outcome",
                            self._store.path, _message(e))
            if turn is not None:
                turn.begun = False
            try:
                committed = self._reconnect(backend, deadline, changes)
            except (psycopg.Error, StorageError) as e:
                why = f"connection lost during a commit, and its outcome cannot be read: {_message(e)}"
                raise _InDoubt(why) from None
            if committed is not None:
                log.warning("the write in doubt had committed")
                return committed
            log.warning("the write in doubt had not committed; writing it again")

    def _statements(self, conn: Any, changes: Sequence[Change]) -> list[int]:
        missed: set[int] = set()
        notices: set[str] = set()
        with conn.cursor() as cur:
            for group in _plan([(position, stmt) for position, change in enumerate(changes) for stmt in change]):
                run = [(p, s) for p, s in group if p not in missed]  # not the rest of a change that missed
                if not run:
                    continue
                stmt = run[0][1]
                self.sent += 1
                if len(run) == 1:
                    cur.execute(stmt.sql, stmt.params)
                    applied = [stmt] if cur.rowcount else []
                else:  # one set-based statement: one array per parameter
                    cur.execute(stmt.batch, pgarrays.columns(stmt.batch, [s.params for _, s in run]))
                    applied = [s for _, s in run] if cur.rowcount else []
                if stmt.soft:  # each its own: the rows the group changed are those whose keys came back
                    changed = {(str(t), int(i)) for t, i in cur.fetchall()} if len(run) > 1 else \
                        {stmt.key} if cur.rowcount == 1 else set()
                    missed.update(p for p, s in run if s.key not in changed)
                    applied = [s for _, s in run if s.key in changed]
                elif stmt.expect is not None and cur.rowcount != stmt.expect * len(run):
                    raise _Conflict(
                        f"a change did not apply as expected ({cur.rowcount} rows, not {stmt.expect * len(run)}): "
                        "another writer changed the task, or it reached max_executions"
                    )
                notices.update(s.notify for s in applied if s.notify)
            if missed:  # rare (a claim another node won): one more statement, for a commit in doubt
                cur.execute(_MARK_MISSED, (sorted(missed), self.node.id, self.node.epoch))
            notify(cur, "".join(sorted(notices)))
        return sorted(missed)

    def _reconnect(self, backend: int, deadline: float, changes: Sequence[Change] = ()) -> list[int] | None:
        """A new connection, once the server process ``backend`` of the lost one is gone (so its
        transaction is decided and its locks released); if that transaction committed (its write
        mark, the module's docstring, is stored exactly when it did), the positions of its changes
        that missed (stored with the mark), else None."""
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        conn = self._connect(deadline)
        conn.autocommit = True
        try:
            while time.monotonic() < deadline:
                conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
                alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()
                if not alive[0]:
                    break
                time.sleep(0.05)  # the old process is finishing: its commit is decided when it exits
            else:
                raise StorageError(f"the server process {backend} of a lost connection did not exit")
            if not changes:
                return None
            row = conn.execute(_READ_MARK, (self.node.id,)).fetchone()
            if row is None or int(row[0]) != self.node.epoch:
                raise StorageError(f"node {self.node.id!r} (epoch {self.node.epoch}) was taken over: its write "
                                   "mark is gone")
            return [int(p) for p in row[2]] if int(row[1]) == self._mark else None
        finally:
            conn.autocommit = False
