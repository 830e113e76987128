"""The PostgreSQL backend of :class:`~taskengine.storage.interface.Store` (``postgresql://`` URLs).

Layout (schema ``taskengine``, version in ``taskengine.meta``; see FORMAT.md):

- ``tasks``: one row per task with its record (the same bytes as LevelDB's task record), its
  counter and its prune mark. The counter is this row's column, moved in the same transaction
  that inserts the execution rows (never a sequence: a sequence is not rolled back, so it
  leaves gaps), and only by an UPDATE that checks the value it moves from and
  ``max_executions``: no index past the limit can be stored, whoever writes.
- ``executions``: one row per execution (index, id, status, idempotency key, the record in
  LevelDB's record bytes, decoded by the same codec); unique per task by index, by id and by
  idempotency key; deleted with their task, by the same statement. No index names the status, the
  record or the runner, so a start and a finish are HOT updates (the row's new version in its page,
  no index entry).
- ``live``: the key of each PENDING or RUNNING execution, inserted with its row and deleted by
  the statement that finishes it: what recovery, the reaper and other nodes' discovery read.

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

This module holds the store and its readers; the rest is in modules of their own: ``pg_schema``
(tables, version, upgrades), ``pg_changes`` (the changes as statements, and the order a write
sends them in), ``pg_writer`` (transactions, fence, write marks), ``pg_query`` (a write's
statements, notification and commit as one query), ``pg_nodes`` (membership,
heartbeat, reaper), ``pgfeed`` (notifications), ``pgarrays`` (array parameters).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg  # the optional extra taskengine[postgres]; storage.open_store imports this module lazily
import psycopg_pool

from . import codec, interface, keys
from .errors import CorruptRecord, StorageError, thread_refusal
from .interface import Changes, ChangesFeed, Node, OnCorrupt, Store, Writer
from .pg_changes import PostgresChanges
from .pg_common import PAGE, RECONNECT_SECONDS, connection_lost, message, tcp_settings
from .pg_schema import check_encoding, check_schema
from .pg_writer import PostgresWriter
from .pgfeed import PostgresFeed
from .pgurl import redact, scrub, stray_at
from .records import Execution, Task

log = logging.getLogger(__name__)

#: how many of the first PENDING rows a look for other nodes' work chooses from
DISCOVERY_WINDOW = 1000


def _reader_session(conn: Any) -> None:
    """A reader's connection: each read planned for the tables as they now are. psycopg prepares a
    statement it sends often, and PostgreSQL would then keep one plan for it, made perhaps on a table
    of a few rows (a new database, not yet analysed by autovacuum) and reading the whole table once it
    has grown. Reads are few next to writes, and planning one costs less than such a scan (the
    writer plans once, differently: pg_writer)."""
    conn.execute("SET plan_cache_mode = force_custom_plan")


class PostgresStore(Store):
    """An open PostgreSQL database: a pool of connections for the readers; each writer has a
    connection of its own."""

    def __init__(self, url: str, pool: Any, schema: int, tcp: dict[str, Any], node_id: str | None = None,
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
        #: libpq's TCP settings of every connection the node makes (``tcp_settings``: a dead peer
        #: found within about a lease), the ones it opened with
        self.tcp = tcp
        #: the node this store's writer joined as (None until a writer is made: the tools)
        self.node: Node | None = None

    @classmethod
    def open(cls, url: str, *, create: bool = False, node_id: str | None = None,
             node_lease: float = interface.DEFAULT_LEASE) -> PostgresStore:
        shown = redact(url)
        if stray_at(url):  # before any driver sees it: its errors would quote the rest of the password
            raise StorageError(f"cannot open {shown}: an '@' in the URL's user name or password must be written "
                               "%40 (libpq ends the user info at the first '@' and takes the rest for the host)")
        try:
            tcp = tcp_settings(url, node_lease)  # libpq reads the URL here first: a bad one is refused as one
            with psycopg.connect(url, autocommit=True, connect_timeout=10, **tcp) as conn:
                check_encoding(conn, shown)
                schema = check_schema(conn, shown, create)
        except psycopg.Error as e:
            raise StorageError(f"cannot open {shown}: {scrub(message(e), url)}") from None
        pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=8, kwargs={"autocommit": True, **tcp}, open=False, name="taskengine-readers",
            configure=_reader_session,
        )
        try:
            pool.open(wait=True, timeout=10)
        except BaseException as e:
            pool.close()  # stops the pool's threads that did start, and its connection retries
            refused = thread_refusal(e, shown, "the threads of its connection pool")
            if refused is not None:
                raise refused from None
            if isinstance(e, (psycopg.Error, psycopg_pool.PoolTimeout)):
                raise StorageError(f"cannot open {shown}: {scrub(message(e), url)}") from None
            raise
        log.info("opened taskengine database %s (schema %d)", shown, schema)
        return cls(url, pool, schema, tcp, node_id, node_lease)

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
        return PostgresFeed(self.url, self.path, self._own_backends, self.tcp)

    def _own_backends(self) -> set[int]:
        """The server processes of this store's writer's lanes: a feed leaves their notifications out."""
        return set() if self._writer is None else self._writer.backend_pids()

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
                if conn is None or not connection_lost(conn, e) or time.monotonic() >= deadline:
                    raise StorageError(f"cannot read {self.path}: {message(e)}") from None
                self._pool.check()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
                raise StorageError(f"cannot read {self.path}: {message(e)}") from None

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

    def _live(self) -> str:
        """What a read of the unfinished executions (``e``) goes through: the live table (version 4),
        else every execution row (an older database, which a tool reads as it is)."""
        if self.schema >= 4:
            return "taskengine.live l JOIN taskengine.executions e ON e.task_id = l.task_id AND e.idx = l.idx"
        return "taskengine.executions e"

    def iter_live(self, on_corrupt: OnCorrupt | None = None) -> Iterator[tuple[str, int, str | None]]:
        """Every PENDING execution, and the RUNNING ones recovery must finish: with a node joined,
        only those of this node id's earlier epochs (and those of no node: a version-1 database);
        a live node's are its own, a lost node's the reaper's."""
        node = self.node
        live = self._live()
        if node is None:
            rows = self._rows(f"SELECT e.task_id, e.idx, e.id FROM {live} WHERE e.status IN ('P', 'R') "
                              "ORDER BY e.task_id, e.idx", ())
        else:
            rows = self._rows(
                f"SELECT e.task_id, e.idx, e.id FROM {live} WHERE e.status = 'P' OR (e.status = 'R' "
                "AND (e.runner IS NULL OR (e.runner = %s AND e.runner_epoch < %s))) ORDER BY e.task_id, e.idx",
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
        part = ("(SELECT e.task_id, e.idx, e.id, e.record, {n} AS part FROM " + self._live()
                + " JOIN taskengine.tasks t ON t.id = e.task_id"
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
        row = self._one(f"SELECT min(e.idx) FROM {self._live()} WHERE e.task_id = %s AND e.status IN ('P', 'R')",
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
