"""What the PostgreSQL modules share: psycopg's message as a user may see it, how long a lost
connection is tried again, and the page size of reads that go through a whole table."""

from __future__ import annotations

#: how long a lost connection is retried before a write gives up (and the writer fails)
RECONNECT_SECONDS = 30.0
PAGE = 1000


def message(e: BaseException) -> str:
    """psycopg's message, first line: it never carries the connection's password."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
