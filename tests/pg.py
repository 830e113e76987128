"""A throwaway PostgreSQL server for the tests (a pytest plugin, loaded by conftest.py).

``pg_server`` (session-scoped) is one server of ``taskengine.tools.pgserver`` for the whole session
(initdb + ``pg_ctl start`` on a temporary directory and a free port, stopped by its pid at the
end); ``pg_url`` gives each test a database of its own on it, dropped once the test's teardown is
over (every fixture's: an engine a fixture closes is closed by then), so a session does not pile up
gigabytes of them for the server's checkpoints to write; ``cutter`` a proxy to it that can
cut a connection at COMMIT (``pg_proxy``); ``running_server()`` is a server of a test's own (one
it kills and restarts).

Where the binaries or the psycopg driver are missing the tests skip with the reason, except in CI
(``CI=true``), where ``.ci/run`` installs them and a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from pg_proxy import CommitCutter
from taskengine.tools import pgserver
from taskengine.tools.pgserver import PgServer, restart_server

__all__ = ["PgServer", "cutter", "in_ci", "pg_server", "pg_url", "pytest_runtest_teardown", "restart_server",
           "running_server"]

log = logging.getLogger(__name__)

#: the databases ``pg_url`` made for the test running now: dropped after its teardown
_made: list[tuple[PgServer, str]] = []


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
    """A fresh, empty database on the session's server (dropped after the test: ``drop_made``)."""
    url = pg_server.create_database()
    _made.append((pg_server, url.rsplit("/", 1)[1]))
    return url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    """After every fixture of the test is torn down (a finalizer of ``pg_url`` itself would run
    before those of fixtures set up earlier, such as the engines ``make_engine`` closes), drop
    the databases it made."""
    yield
    drop_made()


def drop_made() -> None:
    """Drop the databases ``pg_url`` made; one that cannot be dropped is logged, never a failure
    of the test (its server may be the session's, stopped after the last test: then nothing is
    left to drop)."""
    while _made:
        server, name = _made.pop()
        if not server.data.exists():
            continue  # the server was stopped and its directory removed: the database went with it
        try:
            server.drop_database(name)
        except Exception as e:  # noqa: BLE001 - psycopg's or the OS's: whatever it is, only logged
            log.warning("the test database %s could not be dropped: %s", name, e)


@pytest.fixture
def cutter(pg_server: PgServer) -> Iterator[CommitCutter]:
    proxy = CommitCutter(pg_server.port)
    try:
        yield proxy
    finally:
        proxy.close()
