"""What other nodes changed in a PostgreSQL database: one LISTEN connection (the PostgreSQL
:class:`~taskengine.storage.interface.ChangesFeed`).

Every write transaction that creates PENDING executions or finishes executions sends one
notification on :data:`CHANNEL` at its commit (postgres.py), its payload the kinds of change it
made. A node's own writes are left out here (their notifications carry the writer's server
process id): its actors already know what they wrote. A notification can be lost (while this
connection is down, or if the server restarts), so callers poll as well; after a reconnect
:meth:`PostgresFeed.wait` reports every kind of change, since notifications were missed.

A node that has no use for notifications for a while (:meth:`PostgresFeed.listen`) stops
listening: otherwise every write of every node, its own included, wakes its server process and
its feed thread for nothing. When it listens again, its caller reads what it may have missed, as
after a reconnect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from .interface import ALL_CHANGES, PENDING_CREATED
from .pg_common import message

log = logging.getLogger(__name__)

#: the channel every write that needs it notifies, and every node listens to
CHANNEL = "taskengine"
#: how long between two attempts to connect again
RETRY_SECONDS = 0.5


def notify(cur: Any, kinds: str) -> None:
    """In the caller's transaction: tell the other nodes, at its commit, of ``kinds`` of change.
    Once per transaction at most: NOTIFY takes a lock at commit that serialises the commits of
    every transaction that notifies."""
    if kinds:
        cur.execute(*notification(kinds))


def notification(kinds: str, setting: str = "") -> tuple[str, tuple[str, ...]]:
    """The statement that tells the other nodes, at its transaction's commit, of ``kinds`` of change
    and of those the transaction's earlier statements added to the transaction's own ``setting``
    (a custom setting, see ``pg_changes.KINDS``), if one is named: one notification, each kind once
    and in order, or none if there are none (as :func:`notify`'s). The statement and its values."""
    if not setting:
        return "SELECT pg_notify(%s, %s)", (CHANNEL, kinds)
    return ("SELECT pg_notify(%s, k) FROM (SELECT string_agg(DISTINCT c, '' ORDER BY c) AS k FROM "
            "regexp_split_to_table(%s || coalesce(current_setting(%s, true), ''), '') AS c) AS n WHERE k <> ''",
            (CHANNEL, kinds, setting))


class PostgresFeed:
    """One connection that LISTENs; :meth:`wait` returns the kinds of change others made.

    Used by one thread; :meth:`close` may be called from any thread and ends a wait at once."""

    def __init__(self, url: str, shown: str, own: Callable[[], set[int]], tcp: dict[str, Any] | None = None) -> None:
        self._url = url
        self._tcp = tcp or {}  # libpq's TCP settings (pg_common.tcp_settings): an idle LISTEN's dead peer is found
        self._shown = shown
        self._own = own  # the server process ids of this node's writers
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = threading.Event()
        self._fds_lock = threading.Lock()
        self.reconnects = 0
        self._lost = False  # a loss was logged, and no connection made since
        self._listening = True  # LISTEN on each connection made (listen())
        self._connect()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def backend_pid(self) -> int | None:
        """The listening connection's server process (None while it is down)."""
        conn = self._conn
        return None if conn is None else conn.info.backend_pid

    def _connect(self) -> bool:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5, **self._tcp)
        except psycopg.Error as e:
            # said once: a server that is down refuses every attempt
            log.log(logging.DEBUG if self._lost else logging.WARNING,
                    "cannot listen to %s (%s); polling until it answers",
                    self._shown, (str(e).strip().splitlines() or ["?"])[0])
            self._lost = True
            return False
        try:
            if self._listening:
                conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error:
            conn.close()
            return False
        self._conn = conn
        self._lost = False
        return True

    def wait(self, timeout: float) -> set[str]:
        """The kinds of change (interface.PENDING_CREATED, FINISHED) other nodes notified within
        ``timeout`` seconds, at the first one (and all that came with it); empty if none came or
        the feed is closed. Every kind after a reconnect (what was notified meanwhile is lost)."""
        if self._closed.is_set():
            return set()
        conn = self._conn
        if conn is None:
            if self._closed.wait(min(timeout, RETRY_SECONDS)) or not self._connect():
                return set()
            self.reconnects += 1
            log.info("%s %s again", "listening to" if self._listening else "connected to", self._shown)
            return set(ALL_CHANGES)
        try:
            ready, _, _ = select.select([conn.fileno(), self._wake_r], [], [], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
                return set() if self._closed.is_set() else {PENDING_CREATED}
            if not ready:
                return set()
            own = self._own()
            return {kind for n in conn.notifies(timeout=0) if n.pid not in own for kind in n.payload}
        except (psycopg.Error, OSError, ValueError) as e:
            self._lose(e)
            return set(ALL_CHANGES)

    @property
    def listening(self) -> bool:
        return self._listening

    def listen(self, on: bool) -> bool:
        """LISTEN (``on``) or UNLISTEN, from the thread that waits. True if it listens again after
        it did not: what was notified meanwhile was missed, and the caller reads it (as after a
        reconnect). A connection lost on the way is made again by the next wait."""
        if on == self._listening:
            return False
        self._listening = on
        conn = self._conn
        if conn is not None:
            try:
                conn.execute(f"LISTEN {CHANNEL}" if on else f"UNLISTEN {CHANNEL}")
            except psycopg.Error as e:
                self._lose(e)
        return on

    def _lose(self, e: BaseException) -> None:
        """The connection failed (``e``): said, and dropped; the next wait connects again."""
        log.warning("the listening connection to %s was lost (%s); polling until it is back",
                    self._shown, message(e))
        self._lost = True
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def wake(self) -> None:
        """Ends a wait in progress as if PENDING executions had been made (a job was registered
        here: work for it may wait in the database)."""
        with self._fds_lock, contextlib.suppress(OSError):  # not on a descriptor release() closed
            if self._wake_w >= 0:
                os.write(self._wake_w, b"w")

    def close(self) -> None:
        """Ends a wait in progress; later waits return at once."""
        if not self._closed.is_set():
            self._closed.set()
            self.wake()

    def release(self) -> None:
        """Close the connection and the wake-up pipe, after the waiting thread has ended."""
        self.close()
        self._drop()
        with self._fds_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

