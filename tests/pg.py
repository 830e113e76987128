"""A throwaway PostgreSQL server for the tests (a pytest plugin, loaded by conftest.py).

``pg_server`` (session-scoped) is one server of ``taskengine.tools.pgserver`` for the whole session
(initdb + ``pg_ctl start`` on a temporary directory and a free port, stopped by its pid at the
end); ``pg_url`` gives each test a database of its own on it; ``cutter`` a proxy to it that can
cut a connection at COMMIT (``pg_proxy``); ``running_server()`` is a server of a test's own (one
it kills and restarts).

Where the binaries or the psycopg driver are missing the tests skip with the reason, except in CI
(``CI=true``), where ``.ci/run`` installs them and a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from pg_proxy import CommitCutter
from taskengine.tools import pgserver
from taskengine.tools.pgserver import PgServer, restart_server

__all__ = ["PgServer", "cutter", "in_ci", "pg_server", "pg_url", "restart_server", "running_server"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"PostgreSQL tests must run in CI: {reason} (.ci/run installs postgresql)")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@contextlib.contextmanager
def running_server(netns: bool = False) -> Iterator[PgServer]:
    """A throwaway server for the ``with`` block (skipped, or failed in CI, where none can start)."""
    try:
        server = pgserver.start_server(netns=netns)
    except pgserver.ServerUnavailable as e:
        _unavailable(str(e))
        raise AssertionError("unreachable") from e
    try:
        yield server
    finally:
        pgserver.stop_server(server)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()


@pytest.fixture
def cutter(pg_server: PgServer) -> Iterator[CommitCutter]:
    proxy = CommitCutter(pg_server.port)
    try:
        yield proxy
    finally:
        proxy.close()
