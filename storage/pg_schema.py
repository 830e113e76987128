"""The PostgreSQL schema: its tables (FORMAT.md), its version in ``taskengine.meta``, the check a
store makes at open, and the upgrades an engine makes (one node at a time)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from . import codec, keys
from .errors import CorruptRecord, NotADatabase, StorageError, StorageLocked, UnknownSchema
from .pg_common import PAGE

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
KNOWN_SCHEMAS = (1, 2, 3, 4)
#: the session advisory lock a version-1 engine's writer holds: no upgrade while one writes
LEGACY_WRITER_LOCK = 0x74_61_73_6B_65_6E_67  # "taskeng"

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS taskengine",
    "CREATE TABLE taskengine.meta (name text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE taskengine.tasks (
        id text PRIMARY KEY COLLATE "C",
        record bytea NOT NULL,
        max_executions bigint,
        counter bigint NOT NULL DEFAULT 0,
        prune_mark bigint NOT NULL DEFAULT 0,
        CHECK (counter >= 0 AND (max_executions IS NULL OR counter <= max_executions)),
        CHECK (prune_mark >= 0 AND prune_mark <= counter))""",
    """CREATE TABLE taskengine.executions (
        task_id text NOT NULL COLLATE "C" REFERENCES taskengine.tasks (id) ON DELETE CASCADE,
        idx bigint NOT NULL,
        id text NOT NULL,
        status "char" NOT NULL,
        idempotency_key bytea,
        record bytea NOT NULL,
        PRIMARY KEY (task_id, idx),
        UNIQUE (task_id, id),
        UNIQUE (task_id, idempotency_key))""",
    "CREATE INDEX executions_live ON taskengine.executions (task_id, idx) WHERE status IN ('P', 'R')",
)
#: version 1 -> 2: several nodes (FORMAT.md)
_UPGRADE_2 = (
    """CREATE TABLE taskengine.nodes (
        id text PRIMARY KEY COLLATE "C",
        epoch bigint NOT NULL,
        lease_until timestamptz NOT NULL,
        alive boolean NOT NULL)""",
    "ALTER TABLE taskengine.tasks ADD COLUMN job text, ADD COLUMN incarnation text",
    "ALTER TABLE taskengine.executions ADD COLUMN runner text, ADD COLUMN runner_epoch bigint",
    "CREATE INDEX executions_runner ON taskengine.executions (runner, runner_epoch) WHERE status = 'R'",
)
#: version 2 -> 3: each node's write mark, which settles a commit in doubt (FORMAT.md)
_UPGRADE_3 = (
    """CREATE TABLE taskengine.write_marks (
        node text PRIMARY KEY COLLATE "C",
        epoch bigint NOT NULL,
        seq bigint NOT NULL,
        missed bigint[] NOT NULL DEFAULT '{}')""",
)
#: version 3 -> 4: a start or a finish is a HOT update of its row (no index names its columns),
#: the live set is a table of its own, no foreign key, no index entry for a row without an
#: idempotency key; ``nodes.version`` says which engine joined, and one that does not set it (an
#: earlier version) cannot join (FORMAT.md)
_UPGRADE_4 = (
    "ALTER TABLE taskengine.nodes ADD COLUMN version smallint NOT NULL DEFAULT 3",
    "ALTER TABLE taskengine.nodes ALTER COLUMN version DROP DEFAULT",
    """CREATE TABLE taskengine.live (
        task_id text NOT NULL COLLATE "C",
        idx bigint NOT NULL,
        PRIMARY KEY (task_id, idx))""",
    "INSERT INTO taskengine.live (task_id, idx) SELECT task_id, idx FROM taskengine.executions "
    "WHERE status IN ('P', 'R')",
    "ALTER TABLE taskengine.executions DROP CONSTRAINT executions_task_id_fkey",
    "ALTER TABLE taskengine.executions DROP CONSTRAINT executions_task_id_idempotency_key_key",
    "CREATE UNIQUE INDEX executions_idempotency ON taskengine.executions (task_id, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    "DROP INDEX taskengine.executions_live",
    "DROP INDEX taskengine.executions_runner",
    # room in each page for the new versions of its rows' start and finish (HOT updates)
    "ALTER TABLE taskengine.executions SET (fillfactor = 50)",
)

#: what each version adds to the one before (version 1: the first tables); a new database runs
#: them all, so it is what an upgraded one is
STEPS = {1: _DDL, 2: _UPGRADE_2, 3: _UPGRADE_3, 4: _UPGRADE_4}


def check_encoding(conn: Any, shown: str) -> None:
    """Task ids, job names and keys are any Unicode text: a database (or a client encoding set by
    the URL or PGCLIENTENCODING) in another encoding cannot store them all, and psycopg gives
    bytes, not text, for SQL_ASCII; refused before anything is written."""
    row = conn.execute("SELECT current_setting('server_encoding'), current_setting('client_encoding')").fetchone()
    server, client = (v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in row)
    if server != "UTF8" or client != "UTF8":
        raise StorageError(
            f"cannot open {shown}: its encoding is {server} (client encoding {client}); taskengine stores ids "
            "and data as Unicode text and needs both to be UTF8: create the database with ENCODING 'UTF8' "
            "(TEMPLATE template0), and leave client_encoding unset or UTF8")


def check_schema(conn: Any, shown: str, create: bool) -> int:
    """The stored schema version; with ``create``, the schema made if missing or upgraded to
    this version (one node at a time, under an advisory lock; every step in one transaction, so a
    refused one leaves the database as it was)."""
    with conn.transaction():
        if create:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('taskengine.schema'))")
        exists = conn.execute("SELECT to_regclass('taskengine.meta') IS NOT NULL").fetchone()[0]
        if not exists:
            if not create:
                raise NotADatabase(f"{shown} holds no taskengine schema (no table taskengine.meta)")
            for step in KNOWN_SCHEMAS:
                _run_steps(conn, step)
            conn.execute("INSERT INTO taskengine.meta (name, value) VALUES ('schema_version', %s)",
                         (str(SCHEMA_VERSION),))
            log.info("created the taskengine schema in %s (version %d)", shown, SCHEMA_VERSION)
            return SCHEMA_VERSION
        row = conn.execute("SELECT value FROM taskengine.meta WHERE name = 'schema_version'").fetchone()
        try:
            version = int(row[0]) if row is not None else None
        except ValueError:
            version = None
        if version is None:
            raise UnknownSchema(f"{shown} has no readable taskengine schema version")
        if version not in KNOWN_SCHEMAS:
            known = " and ".join(str(v) for v in KNOWN_SCHEMAS)
            raise UnknownSchema(f"{shown} has schema version {version}; this taskengine knows versions {known}")
        while create and version < SCHEMA_VERSION:
            version += 1
            upgrade = UPGRADES[version]
            if upgrade.refused_while_leased:
                _refuse_while_leased(conn, shown, version)
            upgrade.run(conn, shown)
            conn.execute("UPDATE taskengine.meta SET value = %s WHERE name = 'schema_version'", (str(version),))
            log.info("upgraded the taskengine schema in %s from version %d to %d", shown, version - 1, version)
    return version


def _refuse_while_leased(conn: Any, shown: str, version: int) -> None:
    """Refused (StorageLocked, in the caller's transaction) while any node holds a lease: the
    table locked against joins first, then each row, so a join or a transaction in flight ends
    before the look."""
    # no join or heartbeat commits between the look and the upgrade: a join in flight ends first
    # (and is seen), a later one waits for the upgrade (and, of an earlier version, then fails)
    conn.execute("LOCK TABLE taskengine.nodes IN SHARE ROW EXCLUSIVE MODE")
    held = conn.execute("SELECT id FROM taskengine.nodes WHERE alive AND lease_until > clock_timestamp() "
                        "ORDER BY id FOR UPDATE").fetchall()
    if held:
        names = ", ".join(repr(str(r[0])) for r in held[:5]) + (" ..." if len(held) > 5 else "")
        raise StorageLocked(shown, f"node(s) {names} hold a lease on it: an engine of an earlier taskengine version "
                            "may write to it; stop them (or wait until their lease runs out), then open this one "
                            f"(which upgrades the database's schema to version {version})", shared=True)


def _run_steps(conn: Any, version: int) -> None:
    for ddl in STEPS[version]:
        conn.execute(ddl)


def _upgrade_to_2(conn: Any, shown: str) -> None:
    """Version 1 -> 2: the nodes table, and the columns filled from each task's record. Refused
    while a version-1 engine writes (it holds its writer lock, a session advisory lock: taken at
    once, outside any transaction, so no join in flight can be missed; and there are no leases
    yet)."""
    if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LEGACY_WRITER_LOCK,)).fetchone()[0]:
        raise StorageLocked(shown, "an engine of an earlier taskengine version writes to it; stop it, then open "
                            "this one (which upgrades the database's schema to version 2)", shared=True)
    _run_steps(conn, 2)
    after = ""
    filled = 0
    while rows := conn.execute("SELECT id, record FROM taskengine.tasks WHERE id > %s ORDER BY id LIMIT %s",
                               (after, PAGE)).fetchall():
        updates = []
        for task_id, record in rows:
            try:
                task = codec.decode_task(keys.task_key(task_id), bytes(record))
            except CorruptRecord as e:
                log.error("schema upgrade leaves the job and incarnation of a task unset: %s", e)
                continue
            updates.append((task.job, task.incarnation, task_id))
        with conn.cursor() as cur:
            cur.executemany("UPDATE taskengine.tasks SET job = %s, incarnation = %s WHERE id = %s", updates)
        filled += len(updates)
        after = rows[-1][0]
    log.info("filled the job and incarnation of %d tasks in %s", filled, shown)


def _upgrade_to_3(conn: Any, shown: str) -> None:
    """Version 2 -> 3: the write marks. Nothing is refused: an engine of version 2 does not use
    the new table, and its writes are the same."""
    _run_steps(conn, 3)


def _upgrade_to_4(conn: Any, shown: str) -> None:
    """Version 3 -> 4. An engine of an earlier version writes rows this version would not find (no
    live row), and deletes tasks relying on the foreign key: so the upgrade is refused while any
    node holds a lease, and such an engine cannot join afterwards (it sets no ``nodes.version``)."""
    _run_steps(conn, 4)


@attrs.frozen
class Upgrade:
    """One step of the upgrade chain, run in the transaction of the schema check."""

    #: the step's work (a guard of its own, its tables, what it fills)
    run: Callable[[Any, str], None]
    #: refused while any node holds a lease (an engine of an earlier version may write); the
    #: look is made, with the nodes table locked, before the step's work
    refused_while_leased: bool = False


#: the version each step upgrades to -> the step; run in order from the stored version's next
UPGRADES = {
    2: Upgrade(_upgrade_to_2),
    3: Upgrade(_upgrade_to_3),
    4: Upgrade(_upgrade_to_4, refused_while_leased=True),
}
