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
process is terminated (so the commit cannot still be under way), and the changes' own probes
(the execution ids chosen before the transaction, the exact records written) say whether it
committed; if it did not, the transaction is made again on a new connection.

Every statement takes its values as parameters; a password in a URL is never logged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import psycopg  # the optional extra taskengine[postgres]; storage.open_store imports this module lazily
import psycopg_pool

from . import codec, interface, keys
from .errors import CorruptRecord, NotADatabase, StorageError, StorageLocked, UnknownSchema, WriteFailed
from .interface import FINISHED, PENDING_CREATED, Change, Changes, ChangesFeed, OnCorrupt, Store, Writer, redact
from .pgfeed import CHANNEL, PostgresFeed
from .records import Execution, ExecutionStatus, Task

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KNOWN_SCHEMAS = (1,)
#: how long a lost connection is retried before a write gives up (and the writer fails)
RECONNECT_SECONDS = 30.0
#: the session advisory lock an engine's writer holds: one engine writes to a database at a time
WRITER_LOCK = 0x74_61_73_6B_65_6E_67  # "taskeng"
#: how long opening waits for it (the server process of a killed engine lets go as it exits)
LOCK_WAIT_SECONDS = 5.0
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


def _message(e: BaseException) -> str:
    """psycopg's message, first line: it never carries the connection's password."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@attrs.frozen
class Stmt:
    """One statement of a change. ``expect``: the row count it must affect, or the transaction
    is rolled back (a counter that moved under us, a limit reached). ``probe``: a query that is
    true once this statement is committed and not before, used when a commit is in doubt."""

    sql: str
    params: tuple[Any, ...]
    expect: int | None = None
    probe: tuple[str, tuple[Any, ...]] | None = None
    #: the kind of change other nodes are told of (interface.PENDING_CREATED, FINISHED), if any:
    #: the transaction sends one notification for all its statements (pgfeed.py)
    notify: str = ""


class PostgresChanges:
    """The changes as statements (the PostgreSQL :class:`Changes`)."""

    def create_task(self, task: Task) -> Change:
        record = codec.encode_task(task)
        return [Stmt(
            "INSERT INTO taskengine.tasks (id, record, max_executions) VALUES (%s, %s, %s)",
            (task.id, record, task.max_executions),
            probe=("SELECT EXISTS (SELECT 1 FROM taskengine.tasks WHERE id = %s AND record = %s)", (task.id, record)),
        )]

    def assign(self, execution: Execution, *, with_counter: bool = True) -> Change:
        assert execution.index is not None
        ex = execution
        key = None if ex.idempotency_key is None else ex.idempotency_key.encode()
        out: Change = [Stmt(
            "INSERT INTO taskengine.executions (task_id, idx, id, status, idempotency_key, record) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (ex.task_id, ex.index, ex.id, ex.status.code.decode(), key, codec.encode_execution(ex)),
            probe=("SELECT EXISTS (SELECT 1 FROM taskengine.executions WHERE task_id = %s AND id = %s)",
                   (ex.task_id, ex.id)),
            notify=_notice(ex),
        )]
        if with_counter:
            out += self.counter(ex.task_id, execution.index + 1, None)
        return out

    def counter(self, task_id: str, value: int, was: int | None = None) -> Change:
        if was is None:
            return [Stmt("UPDATE taskengine.tasks SET counter = greatest(counter, %s) WHERE id = %s",
                         (value, task_id), expect=1)]
        # the counter moves only from the value this writer knows, and never past the limit
        return [Stmt(
            "UPDATE taskengine.tasks SET counter = %s WHERE id = %s AND counter = %s "
            "AND (max_executions IS NULL OR %s <= max_executions)",
            (value, task_id, was, value), expect=1,
        )]

    def update(self, execution: Execution) -> Change:
        ex = execution
        record = codec.encode_execution(ex)
        return [Stmt(
            "UPDATE taskengine.executions SET status = %s, record = %s WHERE task_id = %s AND idx = %s AND id = %s",
            (ex.status.code.decode(), record, ex.task_id, ex.index, ex.id), expect=1,
            probe=("SELECT EXISTS (SELECT 1 FROM taskengine.executions WHERE task_id = %s AND id = %s "
                   "AND record = %s)", (ex.task_id, ex.id, record)),
            notify=_notice(ex),
        )]

    def prune(self, task_id: str, executions: Sequence[Execution], mark: int) -> Change:
        low = min((ex.index for ex in executions if ex.index is not None), default=mark)
        return [
            Stmt("DELETE FROM taskengine.executions WHERE task_id = %s AND idx >= %s AND idx < %s "
                 "AND status NOT IN ('P', 'R')", (task_id, low, mark), expect=len(executions)),
            Stmt("UPDATE taskengine.tasks SET prune_mark = %s WHERE id = %s", (mark, task_id), expect=1,
                 probe=("SELECT EXISTS (SELECT 1 FROM taskengine.tasks WHERE id = %s AND prune_mark = %s)",
                        (task_id, mark))),
        ]

    def delete_task(self, task_id: str) -> Change:
        # its unfinished executions end with it: their waiters on other nodes are told
        return [Stmt("DELETE FROM taskengine.tasks WHERE id = %s", (task_id,), notify=FINISHED)]


def _notice(ex: Execution) -> str:
    """What other nodes are told of a write of ``ex``: a new PENDING one may be theirs to run,
    a finished one may be waited for there; a start concerns nobody else."""
    if ex.status is ExecutionStatus.PENDING:
        return PENDING_CREATED
    return FINISHED if ex.status.is_finished else ""


_CHANGES = PostgresChanges()


class _Conflict(Exception):
    """A statement affected another number of rows than it must: the transaction is rolled back."""


class _InDoubt(Exception):
    """The connection was lost during a write and its outcome could not be settled."""


class PostgresStore(Store):
    """An open PostgreSQL database: a pool of connections for the readers; each writer has a
    connection of its own."""

    def __init__(self, url: str, pool: Any, schema: int) -> None:
        self.url = url
        self.path = redact(url)
        self.schema = schema
        self._pool = pool
        self._writers: list[PostgresWriter] = []
        self._closed = False

    @classmethod
    def open(cls, url: str, *, create: bool = False) -> PostgresStore:
        shown = redact(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                schema = _check_schema(conn, shown, create)
        except psycopg.Error as e:
            raise StorageError(f"cannot open {shown}: {_message(e)}") from None
        pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=8, kwargs={"autocommit": True}, open=False, name="taskengine-readers"
        )
        try:
            pool.open(wait=True, timeout=10)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise StorageError(f"cannot open {shown}: {_message(e)}") from None
        log.info("opened taskengine database %s (schema %d)", shown, schema)
        return cls(url, pool, schema)

    @property
    def changes(self) -> Changes:
        return _CHANGES

    def writer(self, *, sync: bool = True) -> Writer:
        w = PostgresWriter(self, sync=sync)
        self._writers.append(w)
        return w

    def changes_feed(self) -> ChangesFeed:
        return PostgresFeed(self.url, self.path, self._own_backends)

    def _own_backends(self) -> set[int]:
        """The server processes of this store's writers: a feed leaves their notifications out."""
        return {pid for pid in (w.backend_pid() for w in self._writers) if pid is not None}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._writers:
            w.close()
        self._pool.close()

    # -- reading -------------------------------------------------------------------------

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StorageError(f"the database {self.path} is closed")
        for attempt in (1, 2):
            conn = None
            try:
                with self._pool.connection() as conn:
                    return list(conn.execute(sql, params).fetchall())
            except psycopg.OperationalError as e:
                # a connection the server dropped (it restarted): the pool discards it, and the
                # others it holds idle are checked (they were dropped too), then once more
                if attempt == 2 or conn is None or not conn.broken:
                    raise StorageError(f"cannot read {self.path}: {_message(e)}") from None
                self._pool.check()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
                raise StorageError(f"cannot read {self.path}: {_message(e)}") from None
        raise AssertionError("unreachable")

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
        rows = self._rows("SELECT task_id, idx, id FROM taskengine.executions WHERE status IN ('P', 'R') "
                          "ORDER BY task_id, idx", ())
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

    def pending_elsewhere(
        self, jobs: Sequence[str], exclude: Sequence[str], limit: int, salt: str
    ) -> list[tuple[Execution, Task]]:
        if limit <= 0 or not jobs:
            return []
        wanted = set(jobs)
        # a window of the first PENDING rows in the live index's order (a look costs the same
        # whatever the backlog), shuffled by the caller's salt
        rows = self._rows(
            "SELECT w.task_id, w.idx, w.record, t.id, t.record, t.counter, t.prune_mark FROM ("
            " SELECT task_id, idx, id, record FROM taskengine.executions WHERE status = 'P'"
            " AND NOT (id = ANY(%s)) ORDER BY task_id, idx LIMIT %s"
            ") w JOIN taskengine.tasks t ON t.id = w.task_id ORDER BY hashtext(w.id || %s) LIMIT %s",
            (list(exclude), DISCOVERY_WINDOW, salt, limit * 8))
        out: list[tuple[Execution, Task]] = []
        for task_id, index, record, *task_row in rows:
            try:
                task = self._task(tuple(task_row))
                if task.job in wanted:
                    out.append((self._execution(task_id, int(index), record), task))
            except CorruptRecord as e:
                log.error("a PENDING execution of another node is left alone: %s", e)
            if len(out) >= limit:
                break
        return out

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


def _check_schema(conn: Any, shown: str, create: bool) -> int:
    """The stored schema version; with ``create``, the schema made if missing (one node at a time)."""
    with conn.transaction():
        if create:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('taskengine.schema'))")
        exists = conn.execute("SELECT to_regclass('taskengine.meta') IS NOT NULL").fetchone()[0]
        if not exists:
            if not create:
                raise NotADatabase(f"{shown} holds no taskengine schema (no table taskengine.meta)")
            for ddl in _DDL:
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
        raise UnknownSchema(f"{shown} has schema version {version}; this taskengine knows version {known} only")
    return version


class PostgresWriter:
    """Applies groups of changes, each group one transaction, one at a time on one connection
    (the PostgreSQL :class:`Writer`)."""

    def __init__(self, store: PostgresStore, *, sync: bool) -> None:
        self._store = store
        self.sync = sync
        self.failure: str | None = None
        self.writes = 0
        self.changes = 0
        self.on_write: Callable[[int, float], None] | None = None
        self._lock = threading.Lock()
        self._conn: Any = None  # set by _connect
        self._closed = False
        with self._lock:
            conn = self._connect(deadline=time.monotonic() + 10)
            try:
                self._take_lock(conn, time.monotonic() + LOCK_WAIT_SECONDS)
            except BaseException:
                conn.close()
                raise

    def _connect(self, deadline: float) -> Any:
        """A new connection (also returned), retried until ``deadline`` (a server restarting
        refuses for a while)."""
        while True:
            try:
                conn = psycopg.connect(self._store.url, autocommit=True, connect_timeout=5)
                conn.execute("SET synchronous_commit = " + ("on" if self.sync else "off"))
                conn.autocommit = False
                self._conn = conn
                return conn
            except psycopg.Error as e:
                if time.monotonic() >= deadline:
                    raise StorageError(f"cannot connect to {self._store.path}: {_message(e)}") from None
                time.sleep(0.2)  # a server that is restarting: try again shortly

    def _take_lock(self, conn: Any, deadline: float) -> None:
        """The writer lock, on ``conn`` (a session lock: it goes when the connection does, so a
        killed engine's lock goes once its server process has exited)."""
        was = conn.autocommit
        conn.autocommit = True
        try:
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()[0]:
                if time.monotonic() >= deadline:
                    raise StorageLocked(self._store.path, "another engine writes to this PostgreSQL database (it "
                                        "holds taskengine's advisory lock; several nodes on one database are "
                                        "not supported yet)")
                time.sleep(0.1)  # a killed engine's server process is exiting: it lets go then
        finally:
            conn.autocommit = was

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()

    def backend_pid(self) -> int | None:
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

    def write(self, changes: Sequence[Change]) -> None:
        observe = self.on_write
        began = time.perf_counter()
        with self._lock:
            refused = self.refusal()
            if refused is not None:
                raise refused
            if self._closed:
                raise WriteFailed(f"the database {self._store.path} is closed", outcome_unknown=False)
            try:
                self._write(changes)
            except _Conflict as e:
                self._fail(str(e), outcome_unknown=False)
            except _InDoubt as e:
                self._fail(str(e), outcome_unknown=True)
            except psycopg.Error as e:
                self._fail(_message(e), outcome_unknown=False)
            self.writes += 1
            self.changes += len(changes)
        if observe is not None:
            observe(len(changes), time.perf_counter() - began)

    def _fail(self, why: str, *, outcome_unknown: bool) -> None:
        self.failure = why
        log.critical("write to %s failed: %s; no more writes until it is reopened", self._store.path, why)
        raise WriteFailed(
            f"database write failed ({why}): "
            + ("the outcome is unknown" if outcome_unknown else "it was rolled back, nothing of it was written")
            + "; nothing more is written until the engine is reopened, and a retry with the same "
            "idempotency key is then safe",
            outcome_unknown=outcome_unknown,
        ) from None

    def _write(self, changes: Sequence[Change]) -> None:
        """One transaction; a connection lost on the way is settled (see the module's docstring)."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn = self._conn
            backend = conn.info.backend_pid
            try:
                self._transaction(conn, changes)
                return
            except psycopg.OperationalError as e:
                if not conn.closed and not conn.broken:
                    raise  # the server refused the statement: rolled back, the connection lives
                log.warning("connection to %s lost during a write (%s); settling its outcome",
                            self._store.path, _message(e))
            with contextlib.suppress(psycopg.Error):
                conn.close()
            try:
                self._connect(deadline)
                committed = self._committed(backend, changes, deadline)
            except (psycopg.Error, StorageError) as e:
                why = f"connection lost during a commit, and its outcome cannot be read: {_message(e)}"
                raise _InDoubt(why) from None
            if committed:
                log.warning("the write in doubt had committed")
                return
            log.warning("the write in doubt had not committed; writing it again")

    def _transaction(self, conn: Any, changes: Sequence[Change]) -> None:
        notices = ""
        with conn.transaction(), conn.cursor() as cur:
            for change in changes:
                for stmt in change:
                    cur.execute(stmt.sql, stmt.params)
                    if stmt.expect is not None and cur.rowcount != stmt.expect:
                        raise _Conflict(
                            f"a change did not apply as expected ({cur.rowcount} rows, not {stmt.expect}): "
                            "another writer changed the task, or it reached max_executions"
                        )
                    if stmt.notify and stmt.notify not in notices:
                        notices += stmt.notify
            if notices:
                # one notification per transaction at most: NOTIFY takes a lock that serialises
                # the commits of every transaction that notifies
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notices))

    def _committed(self, backend: int, changes: Sequence[Change], deadline: float) -> bool:
        """Whether the transaction of the lost connection (server process ``backend``) committed:
        once that process is gone, its commit is decided (and the writer lock free to take back);
        the first probe of the changes says."""
        probes = [stmt.probe for change in changes for stmt in change if stmt.probe is not None]
        conn = self._conn
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
            self._take_lock(conn, deadline)  # back before anything is read or written again
            if not probes:
                return False
            sql, params = probes[0]
            return bool(conn.execute(sql, params).fetchone()[0])
        finally:
            conn.autocommit = False

