"""Node membership on a PostgreSQL database: joining, the lease, fencing and the reaper.

Several engines (nodes) share one database. Each joins under a node id (a row of
``taskengine.nodes``) and gets an *epoch*: 1 for a new id, one more than the last for an id
that joined before, so a node restarted under the same id (systemd keeps it) takes over from,
and fences, its previous life. A joined node holds a *lease*: ``lease_until`` on the server's
clock (never the node's), renewed by a heartbeat. Every write transaction of a node first runs
:data:`FENCE`, which finds the node's row only while it holds its epoch and an unexpired lease,
and locks it ``FOR KEY SHARE``.

The *reaper* (run by every node's heartbeat, one at a time by an advisory lock) finds nodes whose
lease expired, locks each row ``FOR UPDATE`` (this waits for a fenced transaction in flight, and
then sees its writes), marks it not alive and finishes its RUNNING executions as FAILED
"interrupted: node … lost", in one transaction. A node that was paused or cut off past its lease
then finds no row at its fence: it can write nothing more, and its late completions are refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from . import codec, keys, pg_changes, records
from .errors import CorruptRecord
from .interface import FINISHED, Node
from .pg_common import LANE_SEPARATOR, connection_lost, idle_in_transaction_ms, message
from .pg_schema import SCHEMA_VERSION
from .pgfeed import notify
from .records import Execution, ExecutionStatus

log = logging.getLogger(__name__)

#: the first statement of every write transaction of a node: one row while it may write, else none
FENCE = ("SELECT 1 FROM taskengine.nodes WHERE id = %s AND epoch = %s AND alive "
         "AND lease_until > clock_timestamp() FOR KEY SHARE")
#: one reaper at a time, whichever node's heartbeat runs it
REAPER_LOCK = 0x74_61_73_6B_72_65_61  # "taskrea"
#: how long the reaper waits for a lost node's transaction in flight before it tries again later
#: (at most; a heartbeat gives it a quarter of its lease, within its statements' timeout of half)
REAP_LOCK_TIMEOUT_MS = 2000


def lost_error(node: str) -> str:
    return f"interrupted: node {node} lost"


def lease_lost(node: Node) -> str:
    """Why a node's writer failed after it lost its lease (the message users see)."""
    return (f"node {node.id!r} (epoch {node.epoch}) lost its lease on the database: another node may have "
            "finished its running executions as interrupted, so it writes nothing more; reopen the engine")


def session(url: str, lease: float, connect_timeout: int, settings: dict[str, str], tcp: dict[str, Any]) -> Any:
    """A connection (autocommit) of a node that holds a lease of ``lease`` seconds, for work that
    takes locks: the server ends the session if it sits idle inside a transaction for longer than
    the lease (pg_common), so a node stopped or cut off from the network there lets its locks go;
    then each of ``settings`` (name: value) set for the session. ``tcp``: the node's TCP settings
    (``PostgresStore.tcp``), so a dead peer is found within about a lease."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout, **tcp)
    try:
        for name, value in {"idle_in_transaction_session_timeout": str(idle_in_transaction_ms(lease)),
                            **settings}.items():
            conn.execute(f"SET {name} = {value}")
    except BaseException:
        conn.close()
        raise
    return conn


def connect(url: str, lease: float, tcp: dict[str, Any]) -> Any:
    """The heartbeat's connection (a :func:`session`). Its statements time out within half a
    lease: a node stopped or cut off from the network in the middle of a reaper pass would
    otherwise hold the reaper's lock (and the rows it locked) until TCP gives up on the
    connection, and no node would reap any other meanwhile, however long their leases had
    expired."""
    return session(url, lease, max(1, int(lease)), {"statement_timeout": str(max(100, int(lease * 500)))}, tcp)


def join(conn: Any, node_id: str, lease: float) -> Node:
    """Join as ``node_id`` (``conn`` in autocommit): the next epoch of that id, alive, with a lease.

    The row is locked ``FOR UPDATE`` first: a write of the id's previous epoch still in flight
    commits before the takeover, so the recovery that follows (this node's earlier RUNNING
    executions) sees it, and nothing of that epoch can commit afterwards. The id's write mark
    (postgres.py) starts again at 0 for the new epoch, under the same lock; its lanes' marks go."""
    with conn.transaction():
        conn.execute("SELECT 1 FROM taskengine.nodes WHERE id = %s FOR UPDATE", (node_id,))
        row = conn.execute(
            "INSERT INTO taskengine.nodes AS n (id, epoch, lease_until, alive, version) "
            "VALUES (%s, 1, clock_timestamp() + make_interval(secs => %s), true, %s) "
            "ON CONFLICT (id) DO UPDATE SET epoch = n.epoch + 1, lease_until = excluded.lease_until, alive = true, "
            "version = excluded.version RETURNING epoch", (node_id, lease, SCHEMA_VERSION)).fetchone()
        conn.execute("INSERT INTO taskengine.write_marks (node, epoch, seq) VALUES (%s, %s, 0) "
                     "ON CONFLICT (node) DO UPDATE SET epoch = excluded.epoch, seq = 0", (node_id, row[0]))
        # the marks of the id's other lanes (pg_writer): each lane of this epoch makes its own
        conn.execute("DELETE FROM taskengine.write_marks WHERE starts_with(node, %s)", (node_id + LANE_SEPARATOR,))
    node = Node(node_id, int(row[0]))
    if node.epoch > 1:
        log.info("node %r joins with epoch %d: its earlier epochs are fenced off", node_id, node.epoch)
    return node


def renew(conn: Any, node: Node, lease: float) -> bool:
    """Extend the lease; False if the node no longer holds it (expired, reaped, or taken over)."""
    cur = conn.execute(
        "UPDATE taskengine.nodes SET lease_until = clock_timestamp() + make_interval(secs => %s) "
        "WHERE id = %s AND epoch = %s AND alive AND lease_until > clock_timestamp()",
        (lease, node.id, node.epoch))
    return bool(cur.rowcount == 1)


def leave(conn: Any, node: Node, error: str, lanes: Sequence[str] = ()) -> list[Execution]:
    """A clean stop: finish what this node still runs (a job that outlived close) with ``error``
    and mark it not alive, in one fenced transaction; nothing if it no longer holds its lease.
    ``lanes``: the keys of its writer's other lanes' write marks, which go."""
    with conn.transaction():
        if conn.execute(FENCE, (node.id, node.epoch)).fetchone() is None:
            return []
        if lanes:
            conn.execute("DELETE FROM taskengine.write_marks WHERE node = ANY(%s) AND epoch = %s",
                         (list(lanes), node.epoch))
        finished = finish_running(conn, node, error)
        conn.execute("UPDATE taskengine.nodes SET alive = false WHERE id = %s AND epoch = %s", (node.id, node.epoch))
        if finished:  # their waiters on other nodes
            notify(conn, FINISHED)
    return finished


def finish_running(conn: Any, node: Node, error: str) -> list[Execution]:
    """In the caller's transaction: every RUNNING execution of ``node``'s id, of its epoch and of
    the id's earlier ones, finished as FAILED with ``error``; the finished records. Earlier epochs
    are fenced, and only this epoch's recovery would finish theirs: a life of the id that ends
    (killed, cut off, or closed) before that recovery did leaves them to whoever ends it, or they
    would stay RUNNING for ever once the row is not alive. A record that does not decode is left
    RUNNING (logged; replay reports it)."""
    rows = conn.execute(
        "SELECT e.task_id, e.idx, e.record FROM taskengine.live l JOIN taskengine.executions e "
        "ON e.task_id = l.task_id AND e.idx = l.idx WHERE e.runner = %s AND e.runner_epoch <= %s "
        "AND e.status = 'R' FOR UPDATE OF e", (node.id, node.epoch)).fetchall()
    now = time.time()
    done: list[Execution] = []
    updates: list[tuple[Any, ...]] = []
    for task_id, index, record in rows:
        try:
            ex = codec.decode_execution(keys.execution_key(task_id, index), bytes(record), task_id, int(index))
        except CorruptRecord as e:
            log.error("node %r: a running execution cannot be finished: %s", node.id, e)
            continue
        failed = records.finished(ex, ExecutionStatus.FAILED, now, error=error)
        updates.append((ExecutionStatus.FAILED.code.decode(), codec.encode_execution(failed), task_id, index))
        done.append(failed)
    if updates:
        with conn.cursor() as cur:
            cur.executemany(pg_changes.END_ONE, updates)
    return done


def reap(conn: Any, lock_timeout_ms: int = REAP_LOCK_TIMEOUT_MS) -> list[tuple[Node, int]]:
    """One reaper pass (``conn`` in autocommit): every node whose lease expired is marked not alive
    and its RUNNING executions finished as FAILED, all in one transaction; (node, count) of each.
    A node whose row stays locked (its transaction in flight) is tried again at the next pass."""
    reaped: list[tuple[Node, int]] = []
    with conn.transaction():
        if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (REAPER_LOCK,)).fetchone()[0]:
            return []  # another node's heartbeat is reaping
        conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        expired = conn.execute("SELECT id FROM taskengine.nodes WHERE alive AND lease_until < clock_timestamp() "
                               "ORDER BY id").fetchall()
        for (node_id,) in expired:
            try:
                with conn.transaction():  # a savepoint: a lock that times out skips this node only
                    row = conn.execute(
                        "SELECT epoch FROM taskengine.nodes WHERE id = %s AND alive "
                        "AND lease_until < clock_timestamp() FOR UPDATE", (node_id,)).fetchone()
                    if row is None:  # renewed or taken over meanwhile
                        continue
                    node = Node(str(node_id), int(row[0]))
                    conn.execute("UPDATE taskengine.nodes SET alive = false WHERE id = %s", (node.id,))
                    finished = finish_running(conn, node, lost_error(node.id))
            except psycopg.errors.LockNotAvailable:
                log.info("reaper: node %r is still in a transaction; tried again later", node_id)
                continue
            reaped.append((node, len(finished)))
        if any(count for _, count in reaped):  # their waiters on the surviving nodes
            notify(conn, FINISHED)
    for node, count in reaped:
        log.warning("node %r (epoch %d) lost its lease: %d running execution(s) finished as FAILED (%s)",
                    node.id, node.epoch, count, lost_error(node.id))
    return reaped


class Heartbeat:
    """A thread that renews ``node``'s lease every ``lease / 4`` on its own connection and runs the
    reaper after each renewal. If the lease is lost (not renewed in time, or found expired), it
    calls ``on_lost`` once and stops."""

    def __init__(self, connect: Callable[[], Any], node: Node, lease: float,
                 on_lost: Callable[[str], None]) -> None:
        self._connect = connect
        self._node = node
        self._lease = lease
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._conn: Any = None
        self._renewed = time.monotonic()  # the join set the first lease
        self._thread = threading.Thread(target=self._run, name=f"taskengine-heartbeat-{node.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """Renew no more (from any thread, without waiting)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                why = self._beat()
                if why is not None:
                    self._on_lost(why)
                    return
                if self._stop.wait(self._lease / 4):
                    return
        finally:
            if self._conn is not None:
                self._conn.close()

    def _beat(self) -> str | None:
        """One renewal and reaper pass; why the lease is lost, or None."""
        began = time.monotonic()
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            if not renew(self._conn, self._node, self._lease):
                return lease_lost(self._node)
            self._renewed = began
            reap(self._conn, min(REAP_LOCK_TIMEOUT_MS, max(50, int(self._lease * 250))))
        except psycopg.Error as e:
            log.warning("node %r: heartbeat failed (%s); trying again", self._node.id,
                        message(e))
            if self._conn is not None and connection_lost(self._conn, e):
                self._conn.close()  # the next beat connects again
            if time.monotonic() - self._renewed > self._lease:
                return lease_lost(self._node) + " (no contact with it for longer than the lease)"
        return None
