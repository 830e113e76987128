"""``taskengine copy SRC DEST``: move a database from one backend to another.

SRC and DEST are each a LevelDB directory or a ``postgresql://`` URL, in either direction
(also LevelDB to LevelDB, PostgreSQL to PostgreSQL). The copy goes through the storage
interface only: it reads each task, its stored counter and prune mark and its executions in
index order, and writes them to DEST with the same changes the engine makes (create the task,
assign its executions, move its counter and its prune mark), a thousand executions per atomic
write. Nothing is re-numbered: every execution keeps its id and its index, and the counter and
prune mark are copied as they are, so no index can be issued twice on the copy. PENDING and
RUNNING executions are copied as they are; the engine that opens the copy recovers them (runs
the pending ones, finishes the running ones as interrupted), as it would have on SRC.

DEST must hold no task (a new directory, or a database without taskengine tables or with no
task in them), so nothing is ever overwritten. The copy is then checked with the replay
check; a copy that fails it ends the command with status 1. An interrupted copy leaves a
partial DEST: remove it (or drop its schema) and copy again.
"""

from __future__ import annotations

import argparse

from taskengine.storage import StorageError, Store, is_url, open_store
from taskengine.storage.db import new_directory_problem

from . import replay
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError, open_database

SUMMARY = "Copy a stopped database to another backend (a directory or a postgresql:// URL)"
DESCRIPTION = (
    "Copy every task of SRC, with its counter, prune mark and executions (same ids, same indexes), "
    "into DEST, which must hold no task; then run the replay check on DEST (exit 1 if it fails). "
    "Either may be a LevelDB directory or a postgresql:// URL."
)
#: executions per atomic write of the copy
CHUNK = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="database to copy: a directory (no engine using it) or a URL")
    parser.add_argument("dest", metavar="DEST", help="where the copy goes: a new directory, or a URL of a database "
                        "without tasks")


def _open_destination(src: str, dest: str) -> Store:
    problem = None if is_url(dest) else new_directory_problem(dest, "copy destination", src)
    if problem is not None:
        raise ToolError(problem, EXIT_USAGE)
    try:
        store = open_store(dest, create=True)
    except StorageError as e:
        raise ToolError(str(e), EXIT_USAGE) from None
    if store.list_tasks(limit=1):
        store.close()
        raise ToolError(f"copy destination {store.path} already holds tasks; copy into an empty one", EXIT_USAGE)
    return store


def copy(src: Store, dest: Store) -> tuple[int, int]:
    """Copy every task of ``src`` into ``dest`` (which holds none); returns (tasks, executions)."""
    ch = dest.changes
    writer = dest.writer(sync=True)
    tasks = executions = 0
    after: str | None = None
    while page := src.list_tasks(after, limit=1000):
        for task in page:
            group = [ch.create_task(task)]
            for ex in src.iter_executions(task.id):
                group.append(ch.assign(ex, with_counter=False))
                executions += 1
                if len(group) >= CHUNK:
                    writer.write(group)
                    group = []
            group.append(ch.counter(task.id, task.execution_count, 0))
            if task.prune_mark:
                group.append(ch.prune(task.id, [], task.prune_mark))
            writer.write(group)
            tasks += 1
        after = page[-1].id
    return tasks, executions


def run(args: argparse.Namespace) -> int:
    with open_database(args.src) as src:
        dest = _open_destination(args.src, args.dest)
        try:
            tasks, executions = copy(src, dest)
            report = replay.check(dest)
        finally:
            dest.close()
        shown = dest.path
    print(f"copied {tasks} task(s) and {executions} execution(s) from {src.path} to {shown}")
    if not report.ok:
        first = report.violations[0] if report.violations else "see taskengine replay"
        raise ToolError(
            f"the copy at {shown} fails the replay check: {report.violation_count} violation(s), the first: {first}",
            EXIT_FAILED,
        )
    print(f"verified: {report.totals()['tasks']} task(s), {report.totals()['executions']} execution(s), "
          "no violations")
    return EXIT_OK
