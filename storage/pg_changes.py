"""The changes as PostgreSQL statements (:class:`PostgresChanges`), and the order a write sends
them in (:func:`plan`): one set-based statement per kind where no two of them conflict."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import codec, pgarrays
from .interface import FINISHED, PENDING_CREATED, Change
from .records import Execution, ExecutionStatus, Task

if TYPE_CHECKING:
    from .postgres import PostgresStore


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
    #: a soft one's ``batch`` as a write sent as one query sends it (``pg_query``): it also adds its
    #: ``notify`` kind to the transaction's (:data:`KINDS`) for the rows it changed, and appends the
    #: positions of the rows it missed to the write mark's ``missed``. Its parameters: ``batch``'s,
    #: the kind, the rows' positions, task ids and indexes, the write mark's key and epoch, the number of rows
    marked: str = ""
    #: what it reads and writes, for the order a write sends its statements in (see ``plan``):
    #: (task id, index) one execution row of the task; (task id, None) the task as a whole (its
    #: row, or every execution of it); None: not declared, kept in place among all the others
    touches: tuple[str, int | None] | None = None
    #: about how many bytes its values take, where they can be large (a record, a job's name):
    #: a write of too many goes group by group (``pg_query.fits``); ids and numbers are not counted
    size: int = 0


_STATUS = {status: status.code.decode() for status in ExecutionStatus}


Flat = Sequence[tuple[int, Stmt]]


def plan(flat: Flat) -> list[list[tuple[int, Stmt]]]:
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
    and write disjoint rows (an execution's statement reads and writes only its row and its live
    row; an INSERT also meets the task's other rows through its unique execution id and
    idempotency key, but only INSERTs set those, and two INSERTs that collide fail in either
    order), so swapping two neighbours that do not conflict changes neither's row count nor the
    end state; the plan is such swaps away from the original order, and so gives every statement
    the row count it had there and the transaction the same end state. A group holds no two conflicting statements, so
    its set-based form changes each of its rows once, as its statements one after another would.
    A change whose soft statement missed is cancelled exactly as before: the rest of that change
    comes after it (one change: conflict), so the writer leaves it out when its group is sent (such
    a write goes one group at a time: ``pg_query.fits``).
    A failure (a row count not as expected, a constraint) rolls everything back in any order."""
    groups: list[list[tuple[int, Stmt]]] = []
    of_kind: dict[tuple[str, int | None, bool], list[int]] = {}  # a kind's groups, in order
    last = -1  # the last group of any statement
    barrier = -1  # the last group of a statement with no footprint
    change_at: dict[int, int] = {}  # a change's last group
    task_at: dict[str, int] = {}  # the last group of any statement of a task
    whole_at: dict[str, int] = {}  # the last group of a whole-task statement of a task
    row_at: dict[tuple[str, int | None], int] = {}  # the last group of an execution's statement
    for position, stmt in flat:  # (max() and helpers written out: this runs for every statement)
        touches = stmt.touches
        after = change_at.get(position, -1)
        if touches is None:
            after = last
        else:
            if barrier > after:
                after = barrier
            task = touches[0]
            if touches[1] is None:
                seen = task_at.get(task, -1)
            else:
                seen = whole_at.get(task, -1)
                row = row_at.get(touches, -1)  # touches is the (task id, index) key
                if row > seen:
                    seen = row
            if seen > after:
                after = seen
        at = len(groups)
        # it can go in a group made one set-based statement: it has that form, and it expects
        # nothing, or one row it picks by its key (so the group's row count is the number of its
        # statements exactly when each touched its row; a soft one's returned keys say which did)
        if stmt.batch and (stmt.expect is None or (stmt.expect == 1 and stmt.key)):
            same = of_kind.setdefault((stmt.batch, stmt.expect, stmt.soft), [])
            found = bisect.bisect_right(same, after)
            if found < len(same):
                at = same[found]
            else:
                same.append(at)
        if at == len(groups):
            groups.append([(position, stmt)])
        else:
            groups[at].append((position, stmt))
        if at > last:
            last = at
        change_at[position] = at
        if touches is None:
            barrier = at
        else:
            if at > task_at.get(task, -1):
                task_at[task] = at
            if touches[1] is None:
                whole_at[task] = at
            else:
                row_at[touches] = at
    return groups


def _rows_of(*columns: str) -> str:
    """``unnest`` of one array parameter per column (``name type``), as rows named ``v``."""
    arrays = ", ".join(f"%s::{c.split()[1]}[]" for c in columns)
    names = ", ".join(c.split()[0] for c in columns)
    return f"unnest({arrays}) AS v ({names})"


_EXECUTION_KEY = "e.task_id = v.task_id AND e.idx = v.idx AND e.id = v.id"


def _with_live(insert: str) -> str:
    """An INSERT of execution rows (``RETURNING task_id, idx, status``) and the live rows of the
    PENDING and RUNNING ones, as one statement."""
    return (f"WITH e AS ({insert} RETURNING task_id, idx, status) INSERT INTO taskengine.live (task_id, idx) "
            "SELECT task_id, idx FROM e WHERE status IN ('P', 'R')")


def _ending(update: str, *more: str) -> str:
    """An UPDATE that finishes execution rows (``RETURNING`` their task_id, idx) and the removal
    of their live rows, as one statement that returns the keys of the rows it finished (``more``:
    other parts of its ``WITH``)."""
    return (f"WITH u AS ({update}), gone AS (DELETE FROM taskengine.live AS l USING u "
            "WHERE l.task_id = u.task_id AND l.idx = u.idx)" + "".join(", " + m for m in more)
            + " SELECT task_id, idx FROM u")


#: the setting, local to a transaction, that the soft statements of a write sent as one query add
#: the notification kinds of the rows they changed to (``Stmt.marked``; read by ``pg_query``)
KINDS = "taskengine.kinds"
#: the positions of a soft statement's rows it missed (not among its ``u``), appended to the write
#: mark's ``missed`` when there are any (see ``Stmt.marked``)
_MISSES = ("m AS (UPDATE taskengine.write_marks SET missed = missed || ARRAY(SELECT w.p FROM "
           "unnest(%s::bigint[], %s::text[], %s::bigint[]) AS w (p, task_id, idx) WHERE NOT EXISTS "
           "(SELECT FROM u WHERE u.task_id = w.task_id AND u.idx = w.idx)) "
           "WHERE node = %s AND epoch = %s AND (SELECT count(*) FROM u) < %s)")


def _soft(update: str, *, ends: bool, marked: bool = False) -> str:
    """A soft set-based statement: ``update`` (an UPDATE of execution rows ``e``, without its
    ``RETURNING``), returning the keys of the rows it changed; ``ends``: with the removal of their
    live rows; ``marked``: its ``Stmt.marked`` form."""
    returning = f"{update} RETURNING e.task_id, e.idx"
    if marked:
        returning += f", set_config('{KINDS}', coalesce(current_setting('{KINDS}', true), '') || %s, true)"
    if ends:
        return _ending(returning, *([_MISSES] if marked else []))
    return f"WITH u AS ({returning}), {_MISSES} SELECT task_id, idx FROM u" if marked else returning


_COLUMNS = "task_id, idx, id, status, idempotency_key, record, runner, runner_epoch"
#: the set-based forms (Stmt.batch) of the statements PostgresChanges makes, parameter for parameter
_INSERT_EXECUTIONS = _with_live(
    f"INSERT INTO taskengine.executions ({_COLUMNS}) "
    "SELECT task_id, idx, id, status::\"char\", idempotency_key, record, runner, runner_epoch FROM "
    + _rows_of("task_id text", "idx bigint", "id text", "status text", "idempotency_key bytea", "record bytea",
               "runner text", "runner_epoch bigint"))
_RAISE_COUNTERS = ("UPDATE taskengine.tasks AS t SET counter = greatest(t.counter, v.value) FROM "
                   + _rows_of("value bigint", "id text") + " WHERE t.id = v.id")
_MOVE_COUNTERS = ("UPDATE taskengine.tasks AS t SET counter = v.value FROM "
                  + _rows_of("value bigint", "id text", "was bigint", "top bigint")
                  + " WHERE t.id = v.id AND t.counter = v.was "
                  "AND (t.max_executions IS NULL OR v.top <= t.max_executions)")
_CLAIM = ("UPDATE taskengine.executions AS e SET status = v.status::\"char\", record = v.record, runner = v.runner, "
          "runner_epoch = v.runner_epoch FROM "
          + _rows_of("status text", "record bytea", "runner text", "runner_epoch bigint", "task_id text", "idx bigint",
                     "id text")
          + f" WHERE {_EXECUTION_KEY} AND e.status = 'P'")
_CANCEL = ("UPDATE taskengine.executions AS e SET status = v.status::\"char\", record = v.record FROM "
           + _rows_of("status text", "record bytea", "task_id text", "idx bigint", "id text")
           + f" WHERE {_EXECUTION_KEY} AND e.status = 'P'")
_COMPLETE = ("UPDATE taskengine.executions AS e SET status = v.status::\"char\", record = v.record FROM "
             + _rows_of("status text", "record bytea", "task_id text", "idx bigint", "id text", "node text")
             + f" WHERE {_EXECUTION_KEY} AND e.status = 'R' AND (e.runner IS NULL OR e.runner = v.node)")
#: one execution's forms of those (assign, update: one statement alone in its group)
_INSERT_EXECUTION = _with_live(f"INSERT INTO taskengine.executions ({_COLUMNS}) "
                               "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")
_ONE_EXECUTION = "task_id = %s AND idx = %s AND id = %s"
_START_ONE = (f"UPDATE taskengine.executions SET status = %s, record = %s, runner = %s, runner_epoch = %s "
              f"WHERE {_ONE_EXECUTION} AND status = 'P'")
_END_PENDING_ONE = _ending(f"UPDATE taskengine.executions SET status = %s, record = %s WHERE {_ONE_EXECUTION} "
                           "AND status = 'P' RETURNING task_id, idx")
_FINISH_ONE = _ending(f"UPDATE taskengine.executions SET status = %s, record = %s WHERE {_ONE_EXECUTION} "
                      "AND status = 'R' AND (runner IS NULL OR runner = %s) RETURNING task_id, idx")
#: (batch, marked) of a start, of an end of a PENDING one, of a finish
_START = (_soft(_CLAIM, ends=False), _soft(_CLAIM, ends=False, marked=True))
_END_PENDING = (_soft(_CANCEL, ends=True), _soft(_CANCEL, ends=True, marked=True))
_FINISH = (_soft(_COMPLETE, ends=True), _soft(_COMPLETE, ends=True, marked=True))
_DELETE_TASKS = ("WITH l AS (DELETE FROM taskengine.live WHERE task_id = ANY(%s::text[])), "
                 "x AS (DELETE FROM taskengine.executions WHERE task_id = ANY(%s::text[])) "
                 "DELETE FROM taskengine.tasks WHERE id = ANY(%s::text[])")
_CREATE_TASK = ("INSERT INTO taskengine.tasks (id, record, max_executions, job, incarnation) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING")
_RAISE_COUNTER = "UPDATE taskengine.tasks SET counter = greatest(counter, %s) WHERE id = %s"
#: the counter moves only from the value the writer knows, and never past the limit
_MOVE_COUNTER = ("UPDATE taskengine.tasks SET counter = %s WHERE id = %s AND counter = %s "
                 "AND (max_executions IS NULL OR %s <= max_executions)")
_PRUNE_ROWS = ("DELETE FROM taskengine.executions WHERE task_id = %s AND idx >= %s AND idx < %s "
               "AND status NOT IN ('P', 'R')")
_PRUNE_MARK = "UPDATE taskengine.tasks SET prune_mark = %s WHERE id = %s"
#: every statement, in each of its forms, that a change sends with a row count it must change
#: (``Stmt.expect``, not soft): a write sent as one query checks that count in SQL (``pg_query``)
COUNTED = (_CREATE_TASK, _RAISE_COUNTER, _RAISE_COUNTERS, _MOVE_COUNTER, _MOVE_COUNTERS, _PRUNE_ROWS, _PRUNE_MARK)
#: a RUNNING execution finished by its node's reaper or at its node's leave: status, record, task_id, idx
END_ONE = _ending("UPDATE taskengine.executions SET status = %s, record = %s WHERE task_id = %s AND idx = %s "
                  "AND status = 'R' RETURNING task_id, idx")


#: a turn that only hands out indexes (``stamped``), as one statement: each task's counter moved by
#: as many indexes as the turn handed out, from the value its row holds now (the update locks it),
#: not the one the turn assumed (``was``); the executions inserted each at its assumed index moved by
#: its task's *shift* (the counter found, less the one assumed), with their live rows; each task's
#: shift returned. A task gone, of another incarnation, or whose limit the moved counter would pass is
#: not moved, and the statement fails (:data:`STAMP_CONFLICT`), as its executions must not be made
#: (``k.ok`` is in the result so that the check is evaluated: a column nothing reads may not be).
#: Each row finds its shift in ``c`` by a ``LATERAL`` subquery that ``OFFSET 0`` keeps apart: as a
#: join, the planner (which counts one row in ``c``, and may not hash: ``pg_writer._PLANNER``) puts
#: ``c`` outside and reads the rows again for each task
_STAMP_TASKS = _rows_of("id text", "n bigint", "was bigint", "incarnation text")
_STAMP_ROWS = _rows_of("task_id text", "idx bigint", "id text", "status text", "idempotency_key bytea",
                       "record bytea", "runner text", "runner_epoch bigint")
_STAMP = (
    f"WITH c AS (UPDATE taskengine.tasks AS t SET counter = t.counter + v.n FROM {_STAMP_TASKS} "
    "WHERE t.id = v.id AND (t.incarnation IS NULL OR t.incarnation = v.incarnation) "
    "AND (t.max_executions IS NULL OR t.counter + v.n <= t.max_executions) "
    "RETURNING t.id, t.counter - v.n - v.was AS shift), "
    f"e AS (INSERT INTO taskengine.executions ({_COLUMNS}) "
    "SELECT v.task_id, v.idx + s.shift, v.id, v.status::\"char\", v.idempotency_key, v.record, v.runner, "
    f"v.runner_epoch FROM {_STAMP_ROWS}, LATERAL (SELECT c.shift FROM c WHERE c.id = v.task_id OFFSET 0) AS s "
    "RETURNING task_id, idx, status), "
    "l AS (INSERT INTO taskengine.live (task_id, idx) SELECT task_id, idx FROM e WHERE status IN ('P', 'R')) "
    "SELECT c.id, c.shift, k.ok FROM c RIGHT JOIN (SELECT CASE count(*) WHEN %s THEN 0 "
    "ELSE ('taskengine: ' || (%s - count(*)) || ' task(s) changed under a stamped turn')::int END AS ok "
    "FROM c) AS k ON true"
)
#: what the error of :data:`_STAMP` says when a task was not moved
STAMP_CONFLICT = "task(s) changed under a stamped turn"


@attrs.frozen
class Stamp:
    """A stamped turn's write as one statement (:func:`stamped`)."""

    sql: str
    params: list[Any]
    #: the kinds of change to notify of
    kinds: str
    #: (task id, execution id, the index the turn assumed) of each execution it writes
    assumed: list[tuple[str, str, int]]


def stamped(changes: Sequence[Change], incarnations: Mapping[str, str | None]) -> Stamp:
    """A stamped turn's changes (executions assigned, with the counters moved past them: nothing
    else) as :data:`_STAMP`. ``incarnations``: each task's, as the turn knew it. ValueError for
    any other change."""
    executions: list[tuple[Any, ...]] = []
    counters: list[tuple[Any, ...]] = []
    kinds = set()
    for change in changes:
        for stmt in change:
            if stmt.batch == _INSERT_EXECUTIONS:
                executions.append(stmt.params)
                if stmt.notify:
                    kinds.add(stmt.notify)
            elif stmt.sql == _MOVE_COUNTER:
                value, task_id, was, _ = stmt.params
                counters.append((task_id, value - was, was, incarnations[task_id]))
            else:
                raise ValueError(f"a stamped turn makes no such change: {stmt.sql}")
    if not counters or not executions:
        raise ValueError("a stamped turn's write hands out no index")
    params = [*pgarrays.columns(_STAMP_TASKS, counters), *pgarrays.columns(_STAMP_ROWS, executions),
              len(counters), len(counters)]
    return Stamp(_STAMP, params, "".join(sorted(kinds)), [(row[0], row[2], row[1]) for row in executions])


class PostgresChanges:
    """The changes as statements (the PostgreSQL :class:`Changes`), made as the store's node
    (``store.node``: the runner a start records, the runner a finish must match)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def create_task(self, task: Task) -> Change:
        record = codec.encode_task(task)
        return [Stmt(
            _CREATE_TASK, (task.id, record, task.max_executions, task.job, task.incarnation), expect=1,
            touches=(task.id, None), size=len(record) + len(task.job),
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
        record = codec.encode_execution(ex)
        out: Change = [Stmt(
            _INSERT_EXECUTION,
            (ex.task_id, ex.index, ex.id, _STATUS[ex.status], key, record,
             *(self._runner(ex) if started else (None, None))),
            notify=_notice(ex),
            batch=_INSERT_EXECUTIONS,
            touches=(ex.task_id, ex.index),
            size=len(record),
        )]
        if with_counter:
            out += self.counter(ex.task_id, execution.index + 1, None)
        return out

    def counter(self, task_id: str, value: int, was: int | None = None) -> Change:
        if was is None:
            return [Stmt(_RAISE_COUNTER, (value, task_id), expect=1, key=(task_id,), batch=_RAISE_COUNTERS,
                         touches=(task_id, None))]
        return [Stmt(_MOVE_COUNTER, (value, task_id, was, value), expect=1, key=(task_id,), batch=_MOVE_COUNTERS,
                     touches=(task_id, None))]

    def update(self, execution: Execution) -> Change:
        ex = execution
        record = codec.encode_execution(ex)
        params: tuple[Any, ...] = (_STATUS[ex.status], record, ex.task_id, ex.index, ex.id)
        if ex.status is ExecutionStatus.RUNNING:  # a start is a claim: of a PENDING one, once
            params = (params[0], params[1], *self._runner(ex), *params[2:])
            sql, forms = _START_ONE, _START
        elif ex.started_at is None:  # cancelled or failed before it started: still PENDING
            sql, forms = _END_PENDING_ONE, _END_PENDING
        else:  # a finish: of one this node runs (or ran in an earlier epoch, or a version-1 one)
            node = self._store.node
            params = (*params, None if node is None else node.id)
            sql, forms = _FINISH_ONE, _FINISH
        return [Stmt(
            sql, params, expect=1, soft=True,
            notify=_notice(ex), key=(ex.task_id, ex.index), batch=forms[0], marked=forms[1],
            touches=(ex.task_id, ex.index), size=len(record),
        )]

    def prune(self, task_id: str, executions: Sequence[Execution], mark: int) -> Change:
        low = min((ex.index for ex in executions if ex.index is not None), default=mark)
        return [
            Stmt(_PRUNE_ROWS, (task_id, low, mark), expect=len(executions), touches=(task_id, None)),
            Stmt(_PRUNE_MARK, (mark, task_id), expect=1, touches=(task_id, None)),
        ]

    def delete_task(self, task_id: str) -> Change:
        # its unfinished executions end with it: their waiters on other nodes are told
        return [Stmt(_DELETE_TASKS.replace("ANY(%s::text[])", "%s"), (task_id, task_id, task_id), notify=FINISHED,
                     batch=_DELETE_TASKS, touches=(task_id, None))]


def _notice(ex: Execution) -> str:
    """What other nodes are told of a write of ``ex``: a new PENDING one may be theirs to run,
    a finished one may be waited for there; a start concerns nobody else."""
    if ex.status is ExecutionStatus.PENDING:
        return PENDING_CREATED
    return FINISHED if ex.status.is_finished else ""
