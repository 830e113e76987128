"""``taskengine recover``: open a damaged database again, accepting an explicit loss.

The engine opens a database with LevelDB's paranoid checks: if recovery would have to drop
log records (a bad block, a write that failed half-way and was followed by others), the
open fails with DatabaseDamaged instead of carrying on without them, because an index held
by a dropped record would be handed out again. This command is the explicit way past that:
it lets LevelDB drop what it cannot read (or runs its repairer), says what was dropped, and
leaves a database that opens. Run ``taskengine replay`` on it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib

from taskengine.storage import Database, DatabaseDamaged, NotADatabase, StorageError, StorageLocked
from taskengine.storage.db import recover

from .common import EXIT_OK, EXIT_USAGE, ToolError, locked_message, refuse_url

SUMMARY = "Open a damaged database again, accepting the loss of what cannot be read"
DESCRIPTION = (
    "Check that a stopped database opens; if LevelDB finds damage it would have to skip (a log "
    "record that fails its checksum), drop that part with --accept-loss and say what was dropped. "
    "Executions and indexes held by dropped records are lost, and such an index may be issued "
    "again: prefer restoring a backup if there is one. Run `taskengine replay` afterwards."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="database directory (no engine may be using it)")
    parser.add_argument(
        "--accept-loss", action="store_true", help="drop what LevelDB cannot read (without it: only check)"
    )


def run(args: argparse.Namespace) -> int:
    refuse_url(args.path, "recover repairs a LevelDB directory; a PostgreSQL server recovers its own database "
               "from its write-ahead log (check it with `taskengine replay`)")
    try:
        try:
            with contextlib.closing(Database.open(args.path)) as db:
                db.verify()  # a damaged table shows only when read
        except DatabaseDamaged as e:
            if not args.accept_loss:
                raise ToolError(f"{e}; nothing was changed (add --accept-loss to drop the damage)", EXIT_USAGE) \
                    from None
        except NotADatabase as e:  # no damage to drop: --accept-loss would only run the repairer over it
            raise ToolError(f"{e}; nothing was changed", EXIT_USAGE) from None
        else:
            print(f"{args.path}: opens and reads without loss; nothing to recover")
            return EXIT_OK
        dropped = recover(args.path)
        try:
            Database.open(args.path).close()  # it opens cleanly now
        except StorageError as e:
            raise ToolError(f"{e}: what LevelDB could save is not a usable database; restore a backup",
                            EXIT_USAGE) from None
    except StorageLocked:
        raise ToolError(locked_message(args.path), EXIT_USAGE) from None
    except StorageError as e:
        raise ToolError(str(e), EXIT_USAGE) from None
    for line in dropped:
        print(f"dropped: {line}")
    print(f"{args.path}: recovered ({len(dropped)} damaged part(s) dropped); check it with `taskengine replay`")
    return EXIT_OK
