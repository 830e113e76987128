"""Reading a taskengine PostgreSQL database for the invariant check (``invariants``).

One REPEATABLE READ transaction is the snapshot: every task row in id order, and each task's
execution rows in index order through a server-side cursor (so memory holds one task's ids,
not the database). What LevelDB keeps as separate keys are columns here: a row's ``id`` column
is the execution's id entry, its ``idempotency_key`` column its idempotency entry, and a
``status`` of ``P`` or ``R`` its live entry (version 4: a row of the ``live`` table is, and the
``status`` column must agree with the record); the record in the row says what is really stored,
and the check compares the two as it compares LevelDB's keys with their records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from taskengine.storage import CorruptRecord, Execution, StorageError, Store, Task, codec, keys
from taskengine.storage.pg_common import message
from taskengine.storage.pgurl import scrub
from taskengine.storage.postgres import PostgresStore

from .invariants import Findings, TaskInvariants

_LIVE = ("P", "R")


def scan(store: Store, task: str | None, emit: Callable[[Execution], None] | None, findings: Findings) -> None:
    """Check every task (or only ``task``) of ``store`` (a PostgreSQL one) on one snapshot."""
    assert isinstance(store, PostgresStore)
    try:
        _scan(store, task, emit, findings)
    except psycopg.Error as e:  # the server went away, or ended the session: no snapshot to finish
        raise StorageError(f"cannot read {store.path}: {scrub(message(e), store.url)}") from None


def _scan(store: PostgresStore, task: str | None, emit: Callable[[Execution], None] | None,
          findings: Findings) -> None:
    with psycopg.connect(store.url) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        tasks = conn.execute(
            "SELECT id, record, counter, prune_mark FROM taskengine.tasks "
            "WHERE %s::text IS NULL OR id = %s ORDER BY id",
            (task, task),
        ).fetchall()
        with_live = store.schema >= 4
        for task_id, record, counter, mark in tasks:
            _TaskScan(conn, findings, str(task_id), emit, with_live).check(bytes(record), int(counter), int(mark))
        # rows of tasks that do not exist (a deletion leaves none: its statement deletes them all)
        for table in ("executions", "live") if with_live else ("executions",):
            orphans = conn.execute(
                f"SELECT e.task_id, count(*) FROM taskengine.{table} e LEFT JOIN taskengine.tasks t "
                "ON t.id = e.task_id WHERE t.id IS NULL AND (%s::text IS NULL OR e.task_id = %s) GROUP BY e.task_id",
                (task, task),
            ).fetchall()
            for task_id, n in orphans:
                what = "execution row(s)" if table == "executions" else "live row(s)"
                findings.add(str(task_id), f"{n} {what} of a task that does not exist")


class _TaskScan(TaskInvariants):
    def __init__(self, conn: Any, findings: Findings, task_id: str, emit: Callable[[Execution], None] | None,
                 with_live: bool) -> None:
        super().__init__(findings, task_id, {})
        self.conn = conn
        self.emit = emit
        self.with_live = with_live
        self.keys: list[tuple[bytes, bytes]] = []
        self.status: dict[int, str] = {}  # an execution row's status column, checked against its record

    def check(self, task_record: bytes, counter: int, mark: int) -> None:
        row = self.row
        row.counter, row.prune_mark = counter, mark
        self.counter_seen = self.mark_seen = True
        rows = self.conn.execute(
            "SELECT idx, id, status, idempotency_key FROM taskengine.executions WHERE task_id = %s",
            (self.task_id,),
        ).fetchall()
        for index, eid, status, key in rows:
            raw_id = str(eid).encode()
            self.id_values[raw_id] = str(index).encode()
            if self.with_live:
                self.status[int(index)] = str(status)
            elif status in _LIVE:
                self.live[int(index)] = raw_id
            if key is not None:
                self.keys.append((bytes(key), raw_id))
        if self.with_live:  # version 4: the live table's rows are the live entries
            for index, eid in self.conn.execute(
                    "SELECT l.idx, e.id FROM taskengine.live l LEFT JOIN taskengine.executions e "
                    "ON e.task_id = l.task_id AND e.idx = l.idx WHERE l.task_id = %s", (self.task_id,)).fetchall():
                self.live[int(index)] = b"" if eid is None else str(eid).encode()
        self.live_entries = len(self.live)
        for key, eid in self.keys:
            self.idempotency_entry(key, eid)
        self.begin_records()
        with self.conn.cursor(name="taskengine_replay") as cur:
            cur.execute("SELECT idx, record FROM taskengine.executions WHERE task_id = %s ORDER BY idx",
                        (self.task_id,))
            for index, record in cur:
                self.one(int(index), bytes(record))
        self.end_records()
        task: Task | None = None
        try:
            task = codec.decode_task(keys.task_key(self.task_id), task_record, counter, mark)
        except CorruptRecord as e:
            self.add(str(e))
        self.finish(True, task)

    def one(self, index: int, value: bytes) -> None:
        key = keys.execution_key(self.task_id, index)
        try:
            status = codec.peek_execution(key, value)[0]
        except CorruptRecord as e:
            self.unreadable(index, str(e))
            return
        eid = value[1 : value.index(keys.SEP, 1)]
        column = self.status.pop(index, None)
        if column is not None and column != status.code.decode():
            self.add(f"execution at index {index} has status {column!r} in its row, but its record is {status.value}")
        self.record(index, status, eid)
        if self.emit is not None or not status.is_finished:
            try:
                execution = codec.decode_execution(key, value, self.task_id, index)
            except CorruptRecord as e:
                self.add(str(e))
                return
            if self.emit is not None:
                self.emit(execution)

    # -- what the check asks, only when something is wrong ------------------------------------

    def stored_index(self, execution_id: bytes, stored: bytes) -> int:
        return int(stored)

    def record_holds(self, index: int, execution_id: bytes) -> bool:
        row = self.conn.execute("SELECT record FROM taskengine.executions WHERE task_id = %s AND idx = %s",
                                (self.task_id, index)).fetchone()
        return row is not None and bytes(row[0]).startswith(execution_id + keys.SEP, 1)

    def idempotency_entries(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.keys)

