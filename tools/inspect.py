"""``taskengine inspect``: look inside a database without an engine.

Three views, all read-only (nothing is assigned or changed, as for the engine's reads):

* ``inspect DB``: tasks in id order with their job, counter (the next index), prune mark (the
  lowest stored index), status, and how many of their executions are PENDING / RUNNING (from
  the live keys, the engine's own list of unfinished work); a page of ``--limit`` tasks after
  the id ``--after``, as ``Engine.list_tasks`` pages;
* ``inspect DB --task T``: that task's executions in index order (``--newest-first``
  reverses, ``--limit`` bounds the list, ``--after N`` starts after index N);
* ``inspect DB --task T --execution ID`` (or ``--index N``): one execution's full record
  as JSON (a failed job's traceback is its ``traceback`` member); ``--traceback`` prints that
  traceback as Python printed it, for a person to read.

It shows what is stored; judging it is ``taskengine replay``'s job.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter

from taskengine.storage import CorruptRecord, Execution, ExecutionStatus, Store, Task
from taskengine.storage.keys import MAX_INDEX

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError, format_table, format_time, one_line, open_database

log = logging.getLogger(__name__)

SUMMARY = "List a database's tasks, a task's executions, or one execution"
DESCRIPTION = (
    "Show what a database holds: its tasks in id order (job, next index, prune mark, status, "
    "pending and running executions), a page at a time; with --task, that task's executions in "
    "index order; with --execution ID or --index N, one execution's full record as JSON "
    "(--traceback: the traceback of its failed job, as text). Reads only."
)

#: tasks or executions listed when --limit is not given
DEFAULT_LIMIT = 50
#: characters of an error message shown in a listing (the full text is in --execution)
ERROR_WIDTH = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", metavar="DB", help="database directory (of a stopped engine, or a backup), or a "
                        "postgresql:// URL")
    parser.add_argument("--task", metavar="T", help="list this task's executions")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--execution", metavar="ID", help="with --task: print this execution's full record")
    which.add_argument("--index", metavar="N", type=int, help="with --task: print the execution at index N")
    parser.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"list at most N tasks, or with --task N executions (default {DEFAULT_LIMIT}; 0 lists all)",
    )
    parser.add_argument(
        "--after",
        metavar="X",
        help="start after task id X (the last one of the previous page), or with --task after index X",
    )
    parser.add_argument("--newest-first", action="store_true", help="with --task: highest index first")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="with --execution or --index: print the traceback of the execution's failed job as text",
    )


def run(args: argparse.Namespace) -> int:
    if args.task is None and (args.execution is not None or args.index is not None):
        raise ToolError("--execution and --index need --task", EXIT_USAGE)
    if args.traceback and args.execution is None and args.index is None:
        raise ToolError("--traceback needs --task and --execution or --index", EXIT_USAGE)
    if args.newest_first and (args.task is None or args.execution is not None or args.index is not None):
        raise ToolError("--newest-first orders a task's executions: it needs --task, without --execution or --index",
                        EXIT_USAGE)
    if args.limit < 0:
        raise ToolError(f"--limit must be 0 (all) or more, not {args.limit}", EXIT_USAGE)
    if args.index is not None and not 0 <= args.index <= MAX_INDEX:
        raise ToolError(f"--index must be an index from 0 to {MAX_INDEX}, not {args.index}", EXIT_USAGE)
    after_index = None
    if args.task is not None and args.after is not None:
        if args.execution is not None or args.index is not None:
            raise ToolError("--after lists a page; it does not go with --execution or --index", EXIT_USAGE)
        try:
            after_index = int(args.after)
        except ValueError:
            after_index = -1
        if not 0 <= after_index <= MAX_INDEX:
            raise ToolError(f"with --task, --after must be an index from 0 to {MAX_INDEX}, not {args.after!r}",
                            EXIT_USAGE)
    with open_database(args.db) as db:
        if args.task is None:
            lines = task_lines(db, args.after, args.limit or None)
        elif args.traceback:
            lines = [traceback_text(find_execution(db, args))]
        elif args.execution is not None or args.index is not None:
            lines = [json.dumps(find_execution(db, args).to_json(), indent=2, ensure_ascii=False)]
        else:
            lines = execution_lines(db, args.task, args.limit or None, args.newest_first, after_index)
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    return EXIT_OK


def live_counts(db: Store) -> dict[str, Counter[ExecutionStatus]]:
    """PENDING / RUNNING executions per task, from the live entries and their records."""
    counts: dict[str, Counter[ExecutionStatus]] = {}
    for task_id, index, _execution_id in db.iter_live(on_corrupt=_skipped):
        record = db.get_execution_at(task_id, index)  # one that does not decode: a one-line error
        if record is not None:  # a live entry without a record: replay reports it
            counts.setdefault(task_id, Counter())[record.status] += 1
    return counts


def _skipped(e: CorruptRecord) -> None:
    """A live entry that does not decode: the count still comes from the record at its index."""
    log.warning("%s", e)


def task_lines(db: Store, after: str | None = None, limit: int | None = None) -> list[str]:
    live = live_counts(db)
    rows: list[tuple[object, ...]] = []
    more = False
    for task_id in db.iter_task_ids(after):
        if limit is not None and len(rows) == limit:
            more = True
            break
        task = db.get_task(task_id)
        counts = live.get(task_id, Counter())
        pending, running = counts[ExecutionStatus.PENDING], counts[ExecutionStatus.RUNNING]
        if task is None:  # keys left without a task record: not a task, but worth seeing
            counter, mark = db.read_counter(task_id), db.read_prune_mark(task_id)
            rows.append((task_id, "-", counter, mark, "-", "NO TASK RECORD", pending, running))
            continue
        max_text = "-" if task.max_executions is None else task.max_executions
        row = (task_id, task.job, task.execution_count, task.prune_mark, max_text, task.status.value)
        rows.append((*row, pending, running))
    header = ("TASK", "JOB", "NEXT INDEX", "PRUNE MARK", "MAX", "STATUS", "PENDING", "RUNNING")
    lines = format_table(header, rows, (False, False, True, True, True, False, True, True)) if rows else []
    where = f"in {db.path}" if after is None else f"after {after!r} in {db.path}"
    if more:
        lines.append(f"{len(rows)} task(s) {where} shown; --after {rows[-1][0]!r} shows the next page")
    else:
        lines.append(f"{len(rows)} task(s) {where}")
    return lines


def _task(db: Store, task_id: str) -> Task:
    task = db.get_task(task_id)
    if task is None:
        raise ToolError(f"no task {task_id!r} in {db.path!r}", EXIT_FAILED)
    return task


def execution_lines(
    db: Store, task_id: str, limit: int | None, newest_first: bool, after: int | None = None
) -> list[str]:
    task = _task(db, task_id)
    limit_text = "none" if task.max_executions is None else str(task.max_executions)
    lines = [
        f"task {task.id!r}: job {task.job!r}, {task.status.value}, next index {task.execution_count}, "
        f"prune mark {task.prune_mark}, max_executions {limit_text}, created {format_time(task.created_at)}"
    ]
    executions = list(db.iter_executions(task_id, after=after, limit=limit, newest_first=newest_first))
    rows = [_execution_row(ex) for ex in executions]
    if rows:
        header = ("INDEX", "ID", "STATUS", "CREATED", "FINISHED", "ERROR")
        lines += format_table(header, rows, (True, False, False, False, False, False))
    shown = len(rows)
    stored = task.execution_count - task.prune_mark
    if limit is not None and shown == limit and (after is not None or shown < stored):
        lines.append(f"{shown} of {stored} stored execution(s) shown; --after or --limit 0 shows more")
    else:
        lines.append(f"{shown} execution(s)")
    return lines


def _execution_row(ex: Execution) -> tuple[object, ...]:
    error = "" if ex.error is None else one_line(ex.error, ERROR_WIDTH)
    return (ex.index, ex.id, ex.status.value, format_time(ex.created_at), format_time(ex.finished_at), error)


def traceback_text(ex: Execution) -> str:
    if ex.traceback is not None:
        return ex.traceback.rstrip("\n")
    if ex.status is ExecutionStatus.FAILED:
        raise ToolError(f"execution {ex.id} failed without a traceback: {ex.error}", EXIT_FAILED)
    raise ToolError(f"execution {ex.id} is {ex.status.value}: it has no traceback", EXIT_FAILED)


def find_execution(db: Store, args: argparse.Namespace) -> Execution:
    _task(db, args.task)
    if args.execution is not None:
        found = db.get_execution(args.task, args.execution)
        what = f"execution {args.execution!r}"
    else:
        found = db.get_execution_at(args.task, args.index)
        what = f"execution at index {args.index}"
    if found is None:
        raise ToolError(f"no {what} in task {args.task!r}", EXIT_FAILED)
    return found
