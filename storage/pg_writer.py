"""The PostgreSQL :class:`~taskengine.storage.interface.Writer`: one transaction per group of
changes on a connection of its own, fenced by its node's lease, settled by its write mark when a
commit is in doubt (see ``postgres``'s docstring), a turn handed back when its tasks changed.

A turn is two round trips (``begin``: the fence, the tasks' locks and their rows; ``write``: the
statements, the notification and the commit), and holds its tasks' locks from the first one's
answer to the second one's commit, its handling in between. A stamped turn (``begin_stamped``,
``write_stamped``) is one: sent after its handling, it takes the locks and decides its indexes
from the counters it finds (``pg_changes.stamped``), so it holds a hot task's lock only while the
server runs it and commits: the turns of several nodes on one task follow each other that much
closer.

A node's writer has *lanes* (:meth:`PostgresWriter.lane`, one per counter actor): each a connection
of its own with a write mark of its own, so the turns of several counter actors (whose tasks are
disjoint; a task shared by two turns is serialised by its advisory lock) are in flight at once and
the server groups their commits' WAL flushes. Lane 0 is the writer itself, its mark keyed by the node
id; lane ``k``'s mark is keyed by the node id, U+001F and ``k`` (a node id is printable, so it is no
other node's key). Every lane's transaction is fenced as lane 0's; a commit in doubt is settled by
its own lane's mark. The lanes share the node, its heartbeat and a failure: a lane that fails stops
them all."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import attrs
import psycopg

from . import pg_nodes, pg_query, pgarrays
from .errors import StorageError, TasksChanged, WriteFailed, thread_refusal
from .interface import Change, Node, StoredTask
from .pg_changes import STAMP_CONFLICT, Stamp, Stmt, plan, stamped
from .pg_common import LANE_SEPARATOR, RECONNECT_SECONDS, connection_lost, message
from .pgfeed import notification, notify
from .records import INTERRUPTED

if TYPE_CHECKING:
    from .postgres import PostgresStore

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: a connection gone: also a session the server ended as idle in its transaction (pg_common), which
#: had not received its COMMIT, so it is settled and made again like any connection lost
_LOST = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)
#: how many times in a row a turn may be handed back (TasksChanged) before the writer gives up;
#: any turn that goes through, one that only read too, ends the row
STALE_TURNS = 10
#: the namespace (first key) of the per-task advisory locks a turn takes (see PostgresWriter.begin)
TASK_LOCKS = 0x7461_736B  # "task"

#: the two parts that statement shares with a stamped turn's (below): the write mark set
#: (its values: seq, key, epoch), and each task's advisory lock (the namespace, the ids)
_MARK = "WITH mark AS (UPDATE taskengine.write_marks SET seq = %s, missed = '{}' WHERE node = %s AND epoch = %s) "
_TASK_LOCKS = ("(SELECT count(pg_advisory_xact_lock(%s, k)) FROM (SELECT DISTINCT hashtext(i) AS k "
               "FROM unnest(%s::text[]) AS i ORDER BY k) AS s)")
#: the first statement of every write transaction: the write mark (``postgres``'s docstring), the
#: fence (pg_nodes.FENCE), then, only if the fence found the node's row, the advisory lock of each
#: task the turn touches, in the order of their keys (every node takes them in that order: no
#: deadlock). One round trip for the three; one row while the node may write, else none.
_FENCE_AND_LOCK = f"{_MARK}SELECT {_TASK_LOCKS} WHERE EXISTS ({pg_nodes.FENCE})"
#: _FENCE_AND_LOCK for a write sent in the one query that begins its transaction (a stamped turn's):
#: nothing can be looked at before the query's later statements run, so a fence that finds no row
#: fails the statement (:data:`_LEASE_LOST`; the query's ``COMMIT`` is then skipped)
_FENCE_AND_LOCK_OR_FAIL = (
    f"{_MARK}SELECT CASE WHEN EXISTS ({pg_nodes.FENCE}) THEN {_TASK_LOCKS} "
    "ELSE ('taskengine: the lease of node ' || %s || ' is lost')::int END"
)
_LEASE_LOST = "taskengine: the lease of node"
#: a stamped turn's executions as written, by their ids: where their indexes went (a commit in doubt)
_PLACED = ("SELECT e.id, e.idx FROM taskengine.executions AS e JOIN unnest(%s::text[], %s::text[]) AS v (task_id, id) "
           "ON e.task_id = v.task_id AND e.id = v.id")
#: how the writer's sessions plan. Its statements are prepared (pg_query.Prepared): one plan per
#: session, for any values, often made on a table that is empty then and not analysed for a while
#: (a new database: autovacuum's first look is a minute away). Every one of them finds its rows by
#: key, so scans of whole tables and hash or merge joins are ruled out: a plan made on an empty
#: table reads it whole at every turn as it grows, until autovacuum analyses it (PostgreSQL still
#: uses them where nothing else can answer a statement)
_PLANNER = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off", "enable_hashjoin": "off",
            "enable_mergejoin": "off"}
#: the session's server process: its pid and start time (one process's, where a pid comes round again)
_BACKEND = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
#: that process ended, if it still runs; then whether it still does
_END_BACKEND = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
_BACKEND_RUNS = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
#: a lane's write mark row (lane 0's is made by pg_nodes.join), made or taken over for this epoch
#: under the fence (pg_nodes.FENCE): nothing if the node no longer holds its lease
_LANE_MARK = (
    f"INSERT INTO taskengine.write_marks (node, epoch, seq) SELECT %s, %s, 0 WHERE EXISTS ({pg_nodes.FENCE}) "
    "ON CONFLICT (node) DO UPDATE SET epoch = excluded.epoch, seq = 0, missed = '{}'"
)
#: the write mark as it stands: (epoch, seq, missed) of the lane's row
_READ_MARK = "SELECT epoch, seq, missed FROM taskengine.write_marks WHERE node = %s"
#: a transaction's changes that missed, kept with its mark: known again if its commit is in doubt
_MARK_MISSED = "UPDATE taskengine.write_marks SET missed = %s WHERE node = %s AND epoch = %s"
#: then the tasks' rows, locked and read as they now stand (a statement of its own: a snapshot
#: taken after the advisory locks, so it sees what their previous holder committed)
_LOCK_ROWS = ("SELECT id, counter, prune_mark, incarnation FROM taskengine.tasks WHERE id = ANY(%s) "
              "ORDER BY id FOR UPDATE")



class _Conflict(Exception):
    """A statement affected another number of rows than it must: the transaction is rolled back."""

    @classmethod
    def of(cls, counted: str) -> _Conflict:
        """``counted``: which rows, how many against how many."""
        return cls(f"{counted}: another writer changed the task, or it reached max_executions")


class _Stale(Exception):
    """A turn's transaction was lost before it committed, and its tasks' rows changed meanwhile."""


class _InDoubt(Exception):
    """The connection was lost during a write and its outcome could not be settled."""


@attrs.define
class _OpenTurn:
    """A turn's transaction, begun by PostgresWriter.begin and ended by its next write."""

    ids: list[str]
    rows: list[StoredTask]
    begun: bool = True  # False once the transaction it began is gone (a lost connection)
    #: a stamped turn's tasks and their incarnations (begin_stamped): nothing begun before its write
    stamped: dict[str, str | None] | None = None


class _Lost(Exception):
    """The fence found no row: this node no longer holds its lease."""


class PostgresWriter:
    """Applies groups of changes, each group one transaction, one at a time on one connection
    (the PostgreSQL :class:`Writer`), as the node it joined when made (see ``pg_nodes``); its other
    lanes (:meth:`lane`, the module's docstring) each on a connection of their own."""

    def __init__(self, store: PostgresStore, *, sync: bool, root: PostgresWriter | None = None) -> None:
        self._store = store
        self.sync = sync
        #: lane 0, which holds what the lanes share (this writer, unless it is another lane)
        self._root: PostgresWriter = self if root is None else root
        self._lanes: list[PostgresWriter] = [self] if root is None else root._lanes
        self._writes = 0
        self._changes = 0
        self._stamped = 0
        #: statements sent to the server by writes (a group made one set-based statement counts once)
        self.sent = 0
        self._lease = store.node_lease
        self._lock = threading.Lock()
        self._conn: Any = None  # set by _connect
        #: its server process: (pid, start time), set by _connect (a pid alone may name another later)
        self._backend: tuple[int, Any] = (0, None)
        self._prepared = pg_query.Prepared()  # the statements prepared on a connection (_session)
        self._turn: _OpenTurn | None = None
        #: the write mark of the newest transaction begun (the module's docstring)
        self._mark = 0
        self._stale = 0  # turns handed back in a row (TasksChanged)
        self.node: Node
        self._heartbeat: pg_nodes.Heartbeat
        if root is not None:
            self.node = root.node
            self._heartbeat = root._heartbeat
            self._mark_key = f"{self.node.id}{LANE_SEPARATOR}{len(self._lanes)}"
            with self._lock:
                self._join_lane(self._connect(deadline=time.monotonic() + 10))
            return
        self._failure: str | None = None
        self._closed = False
        self._on_write: Callable[[int, float], None] | None = None
        self._on_failure: Callable[[], None] | None = None
        with self._lock:
            conn = self._connect(deadline=time.monotonic() + 10)
            try:
                self.node = pg_nodes.join(conn, store.node_id, self._lease)
            except psycopg.Error as e:
                conn.close()
                raise StorageError(f"cannot join {store.path} as node {store.node_id!r}: {message(e)}") from None
        self._mark_key = self.node.id
        self._heartbeat = pg_nodes.Heartbeat(functools.partial(pg_nodes.connect, store.url, self._lease, store.tcp),
                                             self.node, self._lease, self._lost)
        try:
            self._heartbeat.start()
        except BaseException as e:
            self.close()  # the node leaves (its lease ends now, not when it expires) and its connection closes
            refused = thread_refusal(e, store.path, f"the heartbeat thread of node {self.node.id!r}")
            if refused is not None:
                raise refused from None
            raise

    def _join_lane(self, conn: Any) -> None:
        """This lane's write mark row, for this epoch (fenced: none if the node lost its lease)."""
        node = self.node
        try:
            made = conn.execute(_LANE_MARK, (self._mark_key, node.epoch, node.id, node.epoch)).rowcount
        except psycopg.Error as e:
            conn.close()
            raise StorageError(f"cannot open a writer connection to {self._store.path}: {message(e)}") from None
        if made != 1:
            conn.close()
            raise StorageError(pg_nodes.lease_lost(node))

    def lane(self, number: int) -> PostgresWriter:
        """Lane ``number`` of the node's writer (0: the writer itself), made on first use: a
        connection of its own, whose turns are in flight while other lanes' are."""
        root = self._root
        while len(root._lanes) <= number:
            root._check()
            root._lanes.append(PostgresWriter(root._store, sync=root.sync, root=root))
        return root._lanes[number]

    # what the lanes share, held by lane 0

    @property
    def failure(self) -> str | None:
        return self._root._failure

    @failure.setter
    def failure(self, why: str | None) -> None:
        self._root._failure = why

    @property
    def closed(self) -> bool:
        return self._root._closed

    @property
    def on_write(self) -> Callable[[int, float], None] | None:
        return self._root._on_write

    @on_write.setter
    def on_write(self, observe: Callable[[int, float], None] | None) -> None:
        self._root._on_write = observe

    @property
    def on_failure(self) -> Callable[[], None] | None:
        return self._root._on_failure

    @on_failure.setter
    def on_failure(self, call: Callable[[], None] | None) -> None:
        self._root._on_failure = call

    @property
    def writes(self) -> int:
        """Transactions written, by every lane."""
        return sum(lane._writes for lane in self._lanes)

    @property
    def changes(self) -> int:
        """Changes written, by every lane."""
        return sum(lane._changes for lane in self._lanes)

    @property
    def stamped(self) -> int:
        """Stamped turns written (``write_stamped``), by every lane."""
        return sum(lane._stamped for lane in self._lanes)

    def _connect(self, deadline: float) -> Any:
        """A new connection (also returned), retried until ``deadline`` (a server restarting
        refuses for a while): a node's session (``pg_nodes.session``), so a node paused inside a
        transaction cannot hold the reaper off.

        It stays in autocommit mode: a write transaction is begun by its first round trip
        (``_open``: ``BEGIN`` sent with the fence and the rows), not by a ``BEGIN`` of psycopg's of its
        own; ``commit`` and ``rollback`` act on the server's transaction all the same."""
        settings = {"synchronous_commit": "on" if self.sync else "off", **_PLANNER}
        while True:
            try:
                conn = pg_nodes.session(self._store.url, self._lease, 5, settings, self._store.tcp)
                self._backend = conn.execute(_BACKEND).fetchone()
                self._conn = conn
                return conn
            except psycopg.Error as e:
                if time.monotonic() >= deadline:
                    raise StorageError(f"cannot connect to {self._store.path}: {message(e)}") from None
                time.sleep(0.2)  # a server that is restarting: try again shortly

    def _lost(self, why: str) -> None:
        """The heartbeat found the lease lost: writes stop here (a turn in flight was fenced when
        it began, and the reaper waits for it), and the engine answers its waiters."""
        if self.failure is None:
            self.failure = why
            log.critical("%s", why)
        if self.on_failure is not None:
            self.on_failure()

    def close(self) -> None:
        """Close every lane (each once its turn in flight is written), then leave the database."""
        root = self._root
        root._heartbeat.stop()
        with contextlib.ExitStack() as held:
            for lane in root._lanes:
                held.enter_context(lane._lock)
            root._closed = True
            for lane in root._lanes[1:]:
                if lane._conn is not None:
                    lane._conn.close()
            root._leave()

    def _leave(self) -> None:
        """Lane 0, every lane locked: the node leaves, and its other lanes' marks go."""
        if self._conn is None or self._conn.closed:
            return
        if not self._conn.broken:  # fenced: nothing if the node lost its lease
            try:
                lanes = [lane._mark_key for lane in self._lanes[1:]]
                left = pg_nodes.leave(self._conn, self.node, INTERRUPTED, lanes)
                if left:
                    log.warning("node %r: %d execution(s) still running at close finished as FAILED (%s)",
                                self.node.id, len(left), INTERRUPTED)
            except psycopg.Error as e:
                log.warning("node %r could not leave cleanly (%s); another node reaps it once its lease "
                            "expires", self.node.id, message(e))
        self._conn.close()

    def backend_pid(self) -> int | None:
        """The server process of the writer's connection (None while it has none)."""
        conn = self._conn
        try:
            return None if conn is None or conn.closed else int(conn.info.backend_pid)
        except psycopg.Error:
            return None

    def backend_pids(self) -> set[int]:
        """The server processes of every lane's connection (those that have one)."""
        return {pid for pid in (lane.backend_pid() for lane in self._lanes) if pid is not None}

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

    def begin_stamped(self, tasks: Mapping[str, str | None]) -> bool:
        """A turn that only hands out indexes: nothing is sent now; its write locks the tasks and
        decides the indexes from their counters as they stand then (``write_stamped``), so a task's
        lock is held for that one round trip's commit only, not also while the turn is handled."""
        self._lock.acquire()
        try:
            self._check()
        except BaseException:
            self._lock.release()
            raise
        self._turn = _OpenTurn(sorted(tasks), [], begun=False, stamped=dict(tasks))
        return True

    def _begin_turn(self, ids: list[str]) -> list[StoredTask]:
        """Nothing is written yet, so a connection lost here is simply made again."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn, backend = self._conn, self._backend
            try:
                return self._open(conn, ids)
            except _Lost:
                self._rollback()
                self._fail(pg_nodes.lease_lost(self.node), outcome_unknown=False)
            except _LOST as e:
                if not connection_lost(conn, e):
                    self._rollback()
                    self._fail(message(e), outcome_unknown=False)
                log.warning("connection to %s lost at the start of a turn (%s); connecting again",
                            self._store.path, message(e))
            except psycopg.Error as e:
                self._rollback()
                self._fail(message(e), outcome_unknown=False)
            try:
                self._reconnect(backend, deadline)
            except (psycopg.Error, StorageError) as e:
                self._fail(f"connection lost and not made again: {message(e)}", outcome_unknown=False)

    def _open(self, conn: Any, ids: list[str]) -> list[StoredTask]:
        """Begin a transaction on ``conn``: its write mark, the fence and the tasks' locks, then
        their rows. One round trip: ``BEGIN`` and the statements (prepared, ``pg_query.Prepared``)
        as one query; each statement has a snapshot of its own, so the rows are read after the
        locks are held."""
        node = self.node
        self._mark += 1  # before it is sent: a connection lost on the way leaves it in doubt too
        # the ids as one array literal (pgarrays), not a list psycopg adapts element by element
        locked = pgarrays.TextArray(ids)
        params: list[Any] = [self._mark, self._mark_key, node.epoch, TASK_LOCKS, locked, node.id, node.epoch]
        prepare: list[str] = []
        prepared = self._session(conn)
        parts = [prepared.run(_FENCE_AND_LOCK, prepare)]
        if ids:
            parts.append(prepared.run(_LOCK_ROWS, prepare))
            params.append(locked)
        with psycopg.ClientCursor(conn) as cur:  # several statements, one round trip: values bound here
            cur.execute("; ".join(["BEGIN", *prepare, *parts]), params)
            for _ in range(1 + len(prepare)):
                cur.nextset()  # past BEGIN's and the PREPAREs'
            fenced = cur.fetchone()
            if fenced is None:
                raise _Lost()
            if not ids:
                return []
            cur.nextset()
            return [StoredTask(str(i), int(c), int(p), inc) for i, c, p, inc in cur.fetchall()]

    def _session(self, conn: Any) -> pg_query.Prepared:
        """The statements prepared on ``conn`` (a new connection, after a lost one, has none)."""
        self._prepared = self._prepared.of(conn)
        return self._prepared

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.rollback()

    def write(self, changes: Sequence[Change]) -> Collection[int]:
        turn = self._turn
        if turn is not None and not changes and self._conn is not None and not self._conn.broken:
            try:
                with contextlib.suppress(psycopg.Error):
                    self._conn.commit()  # a turn that only read: its locks go
                    # it went through (maybe as a turn handed back, decided again to write
                    # nothing): the turns handed back before it are not in a row with later ones
                    self._stale = 0
            finally:
                self._turn = None
                self._lock.release()
            return ()
        if turn is None and not changes:
            return ()
        return self._apply(changes, lambda: self._write(changes, turn))

    def write_stamped(self, changes: Sequence[Change]) -> dict[str, int]:
        """The write of a stamped turn (``begin_stamped``): its executions, at the indexes it
        assumed moved by their task's shift, and the counters; each task's shift (the counter its
        row held, less the one the turn assumed). TasksChanged if a task was deleted, made again or
        limited meanwhile: nothing was written, and the turn is decided again as ``begin``'s are."""
        turn = self._turn
        assert turn is not None and turn.stamped is not None
        if not changes:  # nothing was begun
            self._turn = None
            self._lock.release()
            return {}
        shifts = self._apply(changes, lambda: self._write_stamped(changes, turn))
        self._stamped += 1
        return shifts

    def _apply(self, changes: Sequence[Change], write: Callable[[], _T]) -> _T:
        """``write()`` of ``changes``, the writer locked (here, unless a turn holds it already),
        its failures made the writer's (``_fail``), or a turn handed back (TasksChanged)."""
        observe = self.on_write
        began = time.perf_counter()
        turn = self._turn
        if turn is None:
            self._lock.acquire()
        try:
            if turn is None:
                self._check()
            try:
                done = write()
            except _Lost:
                self._rollback()
                self._fail(pg_nodes.lease_lost(self.node), outcome_unknown=False)
            except _Conflict as e:
                self._rollback()
                self._fail(str(e), outcome_unknown=False)
            except _Stale as e:
                self._rollback()
                self._stale += 1
                why = str(e) or "the turn's tasks changed while its connection was lost; nothing of it was written"
                if self._stale >= STALE_TURNS:
                    self._fail(f"{why} ({self._stale} times in a row)", outcome_unknown=False)
                if self.failure is not None:
                    # writes stopped while the turn was handled (its lease judged lost): the turn
                    # refused its later messages already, and deciding it again would refuse them twice
                    self._fail(f"{why}, and {self.failure}", outcome_unknown=False)
                log.log(logging.INFO if e.args else logging.WARNING, "%s: the turn is decided again", why)
                raise TasksChanged(f"{why}; the turn is decided again") from None
            except _InDoubt as e:
                self._fail(str(e), outcome_unknown=True)
            except psycopg.Error as e:
                self._rollback()
                self._fail(message(e), outcome_unknown=False)
            self._writes += 1
            self._changes += len(changes)
            self._stale = 0
        finally:
            self._turn = None
            self._lock.release()
        if observe is not None:
            observe(len(changes), time.perf_counter() - began)
        return done

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

        def send(conn: Any) -> list[int]:
            if turn is None or not turn.begun:
                rows = self._open(conn, [] if turn is None else turn.ids)
                if turn is not None and rows != turn.rows:
                    raise _Stale()
            return self._statements(conn, changes, commit=True)

        def lost() -> None:
            if turn is not None:
                turn.begun = False

        return self._settled(changes, send, lambda missed: missed, lost)

    def _write_stamped(self, changes: Sequence[Change], turn: _OpenTurn) -> dict[str, int]:
        """A stamped turn's transaction as one query (``_stamp``). A connection lost on the way is
        settled by the write mark, as ``_write``'s: if it committed, the shifts are read from
        where its executions went; if not, the query is sent again (it assumed nothing of the
        rows: the shifts are decided by the one that commits)."""
        assert turn.stamped is not None
        if not pg_query.fits(changes):  # too many bytes for one query: locked first, sent group by group
            raise _Stale("the turn's values are too many bytes for one query; nothing of it was written")
        stamp = stamped(changes, turn.stamped)
        return self._settled(changes, lambda conn: self._stamp(conn, turn.ids, stamp), lambda _: self._placed(stamp))

    def _settled(self, changes: Sequence[Change], send: Callable[[Any], _T], committed: Callable[[list[int]], _T],
                 lost: Callable[[], None] = lambda: None) -> _T:
        """``send(conn)``'s outcome, sent again on a new connection as long as the one it went on
        was lost before it committed. A loss is settled by the write mark (``_reconnect``), after
        ``lost()``: if the write committed, ``committed(missed)`` (the positions of its changes that
        missed) is its outcome; if that cannot be read, the outcome is unknown (_InDoubt)."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn, backend = self._conn, self._backend
            try:
                return send(conn)
            except _LOST as e:
                if not connection_lost(conn, e):
                    raise  # the server refused the statement: rolled back by _apply, the connection lives
                log.warning("connection to %s lost during a write (%s); settling its outcome",
                            self._store.path, message(e))
            lost()
            try:
                missed = self._reconnect(backend, deadline, changes)
                outcome = None if missed is None else (committed(missed),)
            except (psycopg.Error, StorageError) as e:
                why = f"connection lost during a commit, and its outcome cannot be read: {message(e)}"
                raise _InDoubt(why) from None
            if outcome is not None:
                log.warning("the write in doubt had committed")
                return outcome[0]
            log.warning("the write in doubt had not committed; writing it again")

    def _stamp(self, conn: Any, ids: list[str], stamp: Stamp) -> dict[str, int]:
        """``BEGIN``, the write mark, the fence and the tasks' locks (``_FENCE_AND_LOCK_OR_FAIL``),
        the stamped statement, its notification and ``COMMIT``: one round trip. Each task's shift."""
        node = self.node
        self._mark += 1  # before it is sent: a connection lost on the way leaves it in doubt too
        prepare: list[str] = []
        prepared = self._session(conn)
        parts = [prepared.run(_FENCE_AND_LOCK_OR_FAIL, prepare), prepared.run(stamp.sql, prepare)]
        values: list[Any] = [self._mark, self._mark_key, node.epoch, node.id, node.epoch, TASK_LOCKS,
                             pgarrays.TextArray(ids), node.id, *stamp.params]
        if stamp.kinds:
            notice, notice_values = notification(stamp.kinds)
            parts.append(prepared.run(notice, prepare))
            values += notice_values
        self.sent += 1
        with psycopg.ClientCursor(conn) as cur:  # several statements, one round trip: values bound here
            try:
                cur.execute("; ".join(["BEGIN", *prepare, *parts, "COMMIT"]), values)
            except psycopg.errors.InvalidTextRepresentation as e:
                if _LEASE_LOST in str(e):
                    raise _Lost() from None
                if STAMP_CONFLICT in str(e):
                    raise _Stale("a task of the turn was deleted, made again or limited by another node before "
                                 "its write; nothing of it was written") from None
                raise
            for _ in range(2 + len(prepare)):
                cur.nextset()  # past BEGIN's, the PREPAREs' and the fence's
            return {str(task_id): int(shift) for task_id, shift, _ in cur.fetchall() if task_id is not None}

    def _placed(self, stamp: Stamp) -> dict[str, int]:
        """Each task's shift, from where a stamped write that committed put its executions (one
        of each task's is enough: they moved together)."""
        first: dict[str, tuple[str, int]] = {}
        for task_id, execution_id, index in stamp.assumed:
            first.setdefault(task_id, (execution_id, index))
        rows = self._conn.execute(_PLACED, (pgarrays.TextArray(first),
                                            pgarrays.TextArray(i for i, _ in first.values()))).fetchall()
        found = {str(i): int(x) for i, x in rows}
        shifts = {}
        for task_id, (execution_id, index) in first.items():
            if execution_id not in found:
                raise StorageError(f"the executions of task {task_id!r} that the write committed are gone (the "
                                   "task was deleted since): where their indexes went is not known")
            shifts[task_id] = found[execution_id] - index
        return shifts

    def _statements(self, conn: Any, changes: Sequence[Change], *, commit: bool = False) -> list[int]:
        """Send the write's statements in the plan's order, then its notification (and, with
        ``commit``, commit it); the positions of the changes that missed.

        One query of the simple protocol for all of it (``pg_query``), unless a change goes on after
        a soft statement, or the values are too many bytes for one query: then one group at a time
        (a big one in parts), each judged by its row count before the next is sent. Not in a
        pipeline: a server process waiting for the rest of a pipeline (no Sync yet) is not "idle in
        transaction", so a node cut off from the network in the middle of one would keep its
        transaction, and its locks, open past its lease (the reaper waits for it) until TCP gives
        up; after a query's Sync the session's idle timeout ends it within the lease."""
        groups = plan([(position, stmt) for position, change in enumerate(changes) for stmt in change])
        if not pg_query.fits(changes):
            missed = self._group_by_group(conn, groups)
            if commit:
                conn.commit()
            return missed
        query = pg_query.compose(groups, (self._mark_key, self.node.epoch), self._session(conn), commit=commit)
        self.sent += len(groups)
        with psycopg.ClientCursor(conn) as cur:  # several statements, one round trip: values bound here
            try:
                cur.execute(query.sql, query.params)
            except psycopg.errors.InvalidTextRepresentation as e:
                why = pg_query.conflict(e)
                if why is None:
                    raise
                raise _Conflict.of(why) from None
            return sorted(pg_query.read(cur, query, groups))

    def _group_by_group(self, conn: Any, groups: list[list[tuple[int, Stmt]]]) -> list[int]:
        """The groups one at a time (``_statements``), each judged before the next is sent."""
        missed: set[int] = set()
        notices: set[str] = set()
        for group in groups:
            run = [(p, s) for p, s in group if p not in missed]  # not the rest of a change that missed
            for part in pg_query.parts(run) if run else ():
                notices.update(self._judge(self._send(conn.cursor(), part), part, missed))
        if missed:  # one more statement, for a commit in doubt
            conn.execute(_MARK_MISSED, (sorted(missed), self._mark_key, self.node.epoch))
        notify(conn.cursor(), "".join(sorted(notices)))
        return sorted(missed)

    def _send(self, cur: Any, run: list[tuple[int, Stmt]]) -> Any:
        """One group as one statement (set-based: one array per parameter); ``cur`` returned."""
        stmt = run[0][1]
        self.sent += 1
        if len(run) == 1:
            cur.execute(stmt.sql, stmt.params)
        else:
            cur.execute(stmt.batch, pgarrays.columns(stmt.batch, [s.params for _, s in run]))
        return cur

    @staticmethod
    def _judge(cur: Any, run: list[tuple[int, Stmt]], missed: set[int]) -> set[str]:
        """A group's outcome from its row count (a soft one: from the keys it returned): the
        positions that missed go in ``missed``; a count not as expected is a _Conflict. The kinds
        of change to notify of, of the statements that applied."""
        stmt = run[0][1]
        applied = [s for _, s in run] if cur.rowcount else []
        if stmt.soft:  # each its own: the rows the group changed are those whose keys came back
            changed = {(str(t), int(i)) for t, i in cur.fetchall()} if len(run) > 1 else \
                {stmt.key} if cur.rowcount == 1 else set()
            missed.update(p for p, s in run if s.key not in changed)
            applied = [s for _, s in run if s.key in changed]
        elif stmt.expect is not None and cur.rowcount != stmt.expect * len(run):
            wanted = stmt.expect * len(run)
            raise _Conflict.of(f"a change did not apply as expected ({cur.rowcount} rows, not {wanted})")
        return {s.notify for s in applied if s.notify}

    def _reconnect(self, backend: tuple[int, Any], deadline: float,
                   changes: Sequence[Change] = ()) -> list[int] | None:
        """A new connection, once the server process ``backend`` (its pid and start time: the pid
        may be another process's by now) of the lost one is gone (so its transaction is decided
        and its locks released); if that transaction committed (its write mark, the module's
        docstring, is stored exactly when it did), the positions of its changes that missed
        (stored with the mark), else None."""
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        conn = self._connect(deadline)
        while True:  # looked at once at least: a connection made at the deadline reads the outcome too
            conn.execute(_END_BACKEND, backend)
            alive = conn.execute(_BACKEND_RUNS, backend).fetchone()
            if not alive[0]:
                break
            if time.monotonic() >= deadline:
                raise StorageError(f"the server process {backend[0]} of a lost connection did not exit")
            time.sleep(0.05)  # the old process is finishing: its commit is decided when it exits
        if not changes:
            return None
        row = conn.execute(_READ_MARK, (self._mark_key,)).fetchone()
        if row is None or int(row[0]) != self.node.epoch:
            raise StorageError(f"node {self.node.id!r} (epoch {self.node.epoch}) was taken over: its write "
                               "mark is gone")
        return sorted(int(p) for p in row[2]) if int(row[1]) == self._mark else None
