"""The throwaway PostgreSQL of the tests (tests/pg.py) starts with the settings the backend is
measured and trusted with, and stops by its pid, leaving nothing behind."""

from __future__ import annotations

import os

import pytest

from pg import PgServer, running_server


@pytest.mark.timeout(90)
def test_a_throwaway_server_runs_with_durable_commits_and_stops_by_its_pid() -> None:
    with running_server() as server:
        import psycopg

        with psycopg.connect(server.url(), autocommit=True) as conn:
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'port', 'listen_addresses')"
            ).fetchall())
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert settings == {"fsync": "on", "synchronous_commit": "on", "port": str(server.port),
                            "listen_addresses": "127.0.0.1"}
        assert pid is not None
        assert (server.data / "postgresql.conf").read_text().count(f"port = {server.port}") == 1
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    assert not server.directory.exists()


@pytest.mark.timeout(60)
def test_a_tests_database_is_dropped_after_it_even_with_a_session_left_on_it(
    pg_server: PgServer, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """``pg_url``'s databases were never dropped: several GB a session, for the server's
    checkpoints to write. Each is dropped once the test's teardown is over (the hook is what
    pytest runs then), ending a session a test left on it; one that cannot be dropped is logged,
    and the test does not fail for it."""
    import attrs
    import psycopg

    import pg

    hooks = request.config.pluginmanager.hook.pytest_runtest_teardown.get_hookimpls()
    assert any(impl.function is pg.pytest_runtest_teardown for impl in hooks)

    url = request.getfixturevalue("pg_url")
    name = url.rsplit("/", 1)[1]
    left = psycopg.connect(url, autocommit=True)  # a session a test forgot
    try:

        def databases() -> set[str]:
            with psycopg.connect(pg_server.url(), autocommit=True) as conn:
                return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}

        assert name in databases()
        pg.drop_made()  # what the hook runs after this test's teardown
        assert name not in databases()
        with pytest.raises(psycopg.OperationalError):
            left.execute("SELECT 1")
    finally:
        left.close()

    gone = attrs.evolve(pg_server, port=_closed_port())
    pg._made.append((gone, "unreachable"))
    with caplog.at_level("WARNING", logger="pg"):
        pg.drop_made()  # no exception
    assert pg._made == []
    assert any("the test database unreachable could not be dropped" in r.getMessage() for r in caplog.records)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there
