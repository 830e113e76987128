"""``taskengine replay``: check on a database's files every guarantee of README.md they can show.

The check (:func:`check`) is separate from printing so the stress tool and the tests use
the same code the command does. What must hold is :mod:`taskengine.tools.invariants`; how
a LevelDB database is read for it, in one sequential pass, is
:mod:`taskengine.tools.leveldb_scan`; a PostgreSQL one, :mod:`taskengine.tools.postgres_scan`.
A value that does not decode is reported as a violation naming its key, and the walk goes on,
so one run reports everything that is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable

from taskengine.storage import Database, Execution, Store

from .common import EXIT_FAILED, EXIT_OK, ToolError, format_table, open_database
from .invariants import MAX_VIOLATIONS, Findings, Report, TaskReport, Violation
from .leveldb_scan import DatabaseScan

__all__ = ["MAX_VIOLATIONS", "Report", "TaskReport", "Violation", "check"]

log = logging.getLogger(__name__)


def check(
    db: Store,
    task: str | None = None,
    *,
    on_execution: Callable[[Execution], None] | None = None,
    max_violations: int = MAX_VIOLATIONS,
) -> Report:
    """Check the invariants of every task (or only ``task``) on a snapshot of ``db``.

    ``on_execution``, if given, receives every execution record decoded in full, in key
    order (task by task, index by index); decoding bodies also checks them. Without it
    only record headers are read. Never raises for what it finds in the data: a value
    that does not decode is a violation.
    """
    started = time.perf_counter()
    findings = Findings(max_violations)
    if isinstance(db, Database):
        with db.raw.snapshot() as snap:
            DatabaseScan(snap, task, on_execution, findings).run()
    else:  # a PostgreSQL store: its reader needs psycopg, which opening it has already imported
        from .postgres_scan import scan

        scan(db, task, on_execution, findings)
    report = findings.report()
    report.elapsed = time.perf_counter() - started
    log.info("replay checked %d executions in %.3f s", report.totals()["executions"], report.elapsed)
    return report


# -- the command ------------------------------------------------------------------------

SUMMARY = "Check every invariant of a stopped database (exit 1 on a violation)"
DESCRIPTION = (
    "Walk every task's executions in index order straight from the database files and check the "
    "guarantees of README.md that the files can show (indexes exactly from the prune mark to the "
    "counter with no gap, one record per index, id/idempotency/live keys consistent, no keys of "
    "deleted tasks). "
    "Prints a summary per task (MARK is the prune mark), or JSON lines with --json; exits 1 naming "
    "each violation on stderr, 0 if the database is clean."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", metavar="DB", help="database directory (of a stopped engine, or a backup), or a "
                        "postgresql:// URL")
    parser.add_argument("--task", metavar="T", help="check only this task")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print every execution as one JSON object per line, then a JSON summary object "
        '(with "summary": true and a "violations" list); decodes every record body',
    )


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    with open_database(args.db) as db:
        shown = db.path  # a URL without its password
        if args.json:
            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
            write = out.write

            def emit(ex: Execution) -> None:
                write(dumps(ex.to_json()) + "\n")

            report = check(db, args.task, on_execution=emit)
        else:
            report = check(db, args.task)
    if args.task is not None and not report.tasks:
        raise ToolError(f"no task {args.task!r} in {shown!r}", EXIT_FAILED)
    if args.json:
        out.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
    else:
        for line in summary_lines(report):
            out.write(line + "\n")
    out.flush()
    for v in report.violations:
        print(f"violation: {v}", file=sys.stderr)
    if report.violations_omitted:
        print(f"violation: ... and {report.violations_omitted} more not shown", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def summary_lines(report: Report) -> list[str]:
    """The human summary: one row per task, then one line of totals."""
    header = (
        "TASK", "COUNTER", "MARK", "EXECUTIONS", "PENDING", "RUNNING", "SUCCESS", "FAILED", "CANCELLED",
        "VIOLATIONS",
    )  # fmt: skip
    rows = [
        (
            t.task_id if t.exists else f"{t.task_id} (no task record)",
            "-" if t.counter is None else t.counter,
            t.prune_mark,
            t.executions,
            t.pending,
            t.running,
            t.success,
            t.failed,
            t.cancelled,
            t.violations,
        )
        for t in report.tasks
    ]
    lines = format_table(header, rows, (False,) + (True,) * 9) if rows else []
    tot = report.totals()
    verdict = "OK" if report.ok else "FAILED"
    lines.append(
        f"{verdict}: {tot['tasks']} task(s), {tot['executions']} execution(s) "
        f"({tot['pending']} pending, {tot['running']} running, {tot['success']} success, "
        f"{tot['failed']} failed, {tot['cancelled']} cancelled), {tot['violations']} violation(s); "
        f"checked in {report.elapsed:.2f} s"
    )
    return lines
