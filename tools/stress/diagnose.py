"""What the final check prints about an execution it found unfinished (still PENDING or RUNNING
when its time was up), so that a run that failed once can be understood from its output alone.

For each such execution, read at the moment the check gave up on it: the engine's record (status
and times), and on PostgreSQL its row (status, runner, runner_epoch), whether it has its live row,
the ``nodes`` table with the server's clock (which node holds which epoch, alive, how long its
lease has left or has been expired) and the server's sessions on the database that are in a
transaction or waiting (a lock held by a node's session would hold the reaper off). With
``--nodes``, the supervisor's record of what it did to which node process, and when, follows
(``history``). No URL is printed, so no password; a failed read prints its error instead.

The first few executions get every part (the tables are read again for each: the moment
matters); the others one line each, and a count beyond :data:`MAX_LINES`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from taskengine.storage import Execution, is_url

log = logging.getLogger(__name__)

#: executions that get the tables and the history (the others their own line only)
FULL = 3
#: lines kept in all; beyond them only counted
MAX_LINES = 400
#: sessions listed per reading
MAX_SESSIONS = 40


def utc(t: float | datetime.datetime | None) -> str:
    """A time as UTC, to the millisecond (the same for the engine's records, the server's
    timestamps and the supervisor's record, so they can be set side by side)."""
    if t is None:
        return "-"
    if isinstance(t, datetime.datetime):
        return t.astimezone(datetime.UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"


def describe(ex: Execution) -> str:
    """The engine's record of an execution, in one line."""
    return (f"{ex.status.name} (created {utc(ex.created_at)}, started {utc(ex.started_at)}, "
            f"finished {utc(ex.finished_at)}; blocking {ex.blocking}; error {ex.error!r})")


class Unfinished:
    """Collects the diagnostics of unfinished executions (``__call__`` at each) as lines.

    ``db``: the database (a PostgreSQL URL gets its tables read; it is never printed);
    ``history``: the lines of the supervisor's record, printed once, after the first execution's."""

    def __init__(self, db: str, history: Callable[[], list[str]] | None = None) -> None:
        self._db = db
        self._history = history
        self.lines: list[str] = []
        self.count = 0
        self.omitted = 0

    def __call__(self, task_id: str, execution_id: str, seen: Execution | None, waited: float,
                 since_open: float) -> None:
        """``seen``: the engine's record as read just after the wait gave up (None if that read
        failed); ``waited``: how long the check waited for this one; ``since_open``: seconds since
        the engine was reopened."""
        self.count += 1
        head = (f"unfinished execution {execution_id} of {task_id!r}: waited {waited:.1f} s for it, "
                f"{since_open:.1f} s after the engine was reopened; the engine reads it as "
                + ("nothing (the read failed)" if seen is None else describe(seen)))
        lines = [head]
        if self.count <= FULL:
            if is_url(self._db):
                lines += [f"  {line}" for line in self._postgres(task_id, execution_id)]
            if self.count == 1 and self._history is not None:
                lines.append("  what the supervisor did to the nodes (seconds since the run began, UTC):")
                lines += [f"    {line}" for line in self._history()] or ["    nothing"]
        self._add(lines)

    def _add(self, lines: list[str]) -> None:
        room = MAX_LINES - len(self.lines)
        self.lines += lines[:max(0, room)]
        self.omitted += max(0, len(lines) - max(0, room))

    def render(self) -> list[str]:
        out = list(self.lines)
        if self.omitted:
            out.append(f"... and {self.omitted} more lines of diagnostics not kept")
        return out

    def _postgres(self, task_id: str, execution_id: str) -> list[str]:
        import psycopg

        from taskengine.storage.pg_common import message

        try:
            with psycopg.connect(self._db, autocommit=True, connect_timeout=10) as conn:
                return postgres_state(conn, task_id, execution_id)
        except psycopg.Error as e:
            return [f"the database could not be read: {message(e)}"]


def postgres_state(conn: Any, task_id: str, execution_id: str) -> list[str]:
    """The execution's row and live row, the nodes table and the sessions in a transaction, as
    they stand (``conn``: autocommit, each statement its own snapshot; the server's clock read
    first)."""
    from taskengine.storage import codec, keys

    now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    lines = [f"the server's clock: {utc(now)}"]
    row = conn.execute("SELECT idx, status::text, runner, runner_epoch, record FROM taskengine.executions "
                       "WHERE task_id = %s AND id = %s", (task_id, execution_id)).fetchone()
    if row is None:
        lines.append("its row: none")
    else:
        index, status, runner, epoch, record = row
        try:
            ex = codec.decode_execution(keys.execution_key(task_id, int(index)), bytes(record), task_id, int(index))
            stored = describe(ex)
        except Exception as e:  # noqa: BLE001 - a record that does not decode is a finding too
            stored = f"a record that does not decode ({type(e).__name__}: {e})"
        live = conn.execute("SELECT count(*) FROM taskengine.live WHERE task_id = %s AND idx = %s",
                            (task_id, index)).fetchone()[0]
        lines.append(f"its row: index {index}, status {status!r}, runner {runner!r}, runner_epoch {epoch}; "
                     f"its live row: {'present' if live else 'NONE'}; its record: {stored}")
    lines.append("the nodes table (id, epoch, alive, lease until, lease left, version):")
    for node_id, epoch, alive, until, left, version in conn.execute(
            "SELECT id, epoch, alive, lease_until, extract(epoch FROM lease_until - clock_timestamp()), version "
            "FROM taskengine.nodes ORDER BY id").fetchall():
        lines.append(f"  {node_id} epoch {epoch} {'alive' if alive else 'not alive'}, lease until {utc(until)} "
                     f"({float(left):+.3f} s), version {version}")
    sessions = conn.execute(
        "SELECT pid, application_name, state, xact_start, state_change, wait_event_type, wait_event, "
        "left(regexp_replace(query, '\\s+', ' ', 'g'), 160) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND (xact_start IS NOT NULL OR wait_event_type IN ('Lock', 'LWLock')) "
        "ORDER BY xact_start NULLS LAST LIMIT %s", (MAX_SESSIONS,)).fetchall()
    lines.append(f"sessions in a transaction or waiting for a lock: {len(sessions)}"
                 + (" (at most the oldest shown)" if len(sessions) == MAX_SESSIONS else ""))
    for pid, app, state, xact, changed, wait_type, wait, query in sessions:
        lines.append(f"  pid {pid} {app or '-'}: {state}, transaction since {utc(xact)}, state since "
                     f"{utc(changed)}, waiting {wait_type or '-'}/{wait or '-'}: {query}")
    return lines


__all__ = ["Unfinished", "describe", "postgres_state", "utc"]
