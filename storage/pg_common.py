"""What the PostgreSQL modules share: psycopg's message as a user may see it, whether an error
says the connection is gone, how long a lost connection is tried again, and the page size of
reads that go through a whole table."""

from __future__ import annotations

from typing import Any

#: how long a lost connection is retried before a write gives up (and the writer fails)
RECONNECT_SECONDS = 30.0
PAGE = 1000
#: the longest TCP user timeout the engine asks for: Linux gives up on unacknowledged data after
#: about 15 minutes by default, and a longer lease must not make a dead connection slower to find
MAX_TCP_USER_TIMEOUT_MS = 600_000
#: between a node id and a writer lane's number in that lane's write mark key (pg_writer); a
#: node id is printable, so it holds none
LANE_SEPARATOR = "\x1f"


#: the server ended a session that sat idle inside a transaction for too long
IDLE_IN_TRANSACTION = "25P03"


def idle_in_transaction_ms(lease: float) -> int:
    """The ``idle_in_transaction_session_timeout`` of a node's sessions that take locks: a node
    stopped or cut off inside a transaction loses it, and its locks, within its lease (the server
    would otherwise keep them until TCP gives up on the connection, hours by default)."""
    return max(1000, int(lease * 1000))


def tcp_settings(url: str, lease: float) -> dict[str, Any]:
    """libpq's TCP settings for the connections of a node that holds a lease of ``lease`` seconds,
    those ``url`` does not set itself (the URL's own win). Without them a connection whose peer is
    gone without a word (a cut network, a server host that died) is found dead only when TCP gives
    up: about 15 minutes for one with data in flight, never for an idle one. With them a statement
    in flight fails once its bytes go unacknowledged for half a lease (10 minutes at most: never
    later than TCP would), and an idle connection (the LISTEN, a reader's) once keepalives go
    unanswered for about a lease; the writer then connects again or fails, and the heartbeat finds
    the lease lost, as for any lost connection. libpq ignores them on a Unix socket, and a libpq
    older than 12 knows no ``tcp_user_timeout`` (it would refuse to connect): not asked of it."""
    import psycopg  # with the driver, as every caller is
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    settings: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": max(1, int(lease / 2)),
        "keepalives_interval": max(1, int(lease / 4)),
        "keepalives_count": 2,
    }
    if psycopg.pq.version() >= 120000:
        settings["tcp_user_timeout"] = min(MAX_TCP_USER_TIMEOUT_MS, max(1000, int(lease * 500)))
    return {name: value for name, value in settings.items() if name not in given}


def connection_lost(conn: Any, e: BaseException) -> bool:
    """``e``, raised by a statement on ``conn``, says the connection is gone, not that the server
    refused the statement. An error with no SQLSTATE comes from the client's side: psycopg raises one
    ("connection socket closed") when the socket reports a hang-up while libpq still counts the
    connection as open, and every later statement on it would then fail too."""
    import psycopg  # imported by the caller already; this module is read without the driver too

    return bool(conn.closed or conn.broken or (isinstance(e, psycopg.OperationalError) and e.sqlstate is None))


def message(e: BaseException) -> str:
    """psycopg's message, first line: it never carries the connection's password. The server's
    own words for an idle session it ended do not name the setting that ended it: this does
    (also when the error is the context of another, raised while giving up the connection)."""
    cause: BaseException | None = e
    while cause is not None:
        if getattr(cause, "sqlstate", None) == IDLE_IN_TRANSACTION:
            return ("the server ended the session: it sat idle inside a transaction for longer than "
                    f"idle_in_transaction_session_timeout (SQLSTATE {IDLE_IN_TRANSACTION})")
        cause = cause.__cause__ or cause.__context__
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
