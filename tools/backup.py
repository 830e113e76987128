"""``taskengine backup``: copy a stopped database to a new directory.

LevelDB lets one process open a database, and a running engine keeps its database open,
so this command copies only a database no engine is using; a running one is copied with
``Engine.backup(dest)`` by the process that runs it. The copy is a consistent snapshot
(``Database.backup``), written key by key into a fresh LevelDB, and is refused onto a
destination that holds anything, so nothing is ever overwritten.
"""

from __future__ import annotations

import argparse
import os

from taskengine.storage import NotADatabase
from taskengine.storage.db import backup_problem

from . import replay
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError, open_database, refuse_url

SUMMARY = "Copy a stopped database to a new directory"
DESCRIPTION = (
    "Copy a stopped database (no engine running on it) to DEST, a new or empty directory; prints "
    "the number of keys copied. A running engine's database is locked: copy it with "
    "Engine.backup(dest) from the process that runs the engine."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="database directory to copy (no engine may be using it)")
    parser.add_argument("dest", metavar="DEST", help="new (or empty) directory for the copy")
    parser.add_argument(
        "--verify", action="store_true", help="run the replay check on the copy afterwards (exit 1 if it fails)"
    )


def _check_destination(src: str, dest: str) -> None:
    problem = backup_problem(src, dest)
    if problem is not None:
        raise ToolError(problem, EXIT_USAGE)
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise ToolError(f"cannot create the backup {dest!r}: {parent!r} is not a directory", EXIT_USAGE)


def run(args: argparse.Namespace) -> int:
    refuse_url(args.src, "backup copies a LevelDB directory; copy a stopped PostgreSQL database with "
               "`taskengine copy URL DIR`, or back it up with pg_dump")
    _check_destination(args.src, args.dest)  # before opening, so a refused copy touches nothing
    with open_database(args.src) as db:
        try:
            copied = db.backup(args.dest)
        except NotADatabase as e:  # the destination filled up since the check above
            raise ToolError(str(e), EXIT_USAGE) from None
    print(f"copied {copied} keys from {args.src} to {args.dest}")
    if args.verify:
        with open_database(args.dest) as copy:
            report = replay.check(copy)
        if not report.ok:
            first = report.violations[0] if report.violations else "see taskengine replay"
            raise ToolError(
                f"the copy at {args.dest!r} fails the replay check: {report.violation_count} violation(s), "
                f"the first: {first}",
                EXIT_FAILED,
            )
        totals = report.totals()
        print(f"verified: {totals['tasks']} task(s), {totals['executions']} execution(s), no violations")
    return EXIT_OK
