"""The throwaway PostgreSQL of the tests (tests/pg.py) starts with the settings the backend is
measured and trusted with, and stops by its pid, leaving nothing behind."""

from __future__ import annotations

import os

import pytest

from pg import running_server


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
