"""A throwaway PostgreSQL server for the tests (a pytest plugin, loaded by conftest.py).

``pg_server`` (session-scoped) runs ``initdb`` and ``pg_ctl start`` from the system's binaries on a
temporary directory and a free port, and stops the server by its pid at the end of the session.
``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user
(``runuser -u postgres --``) on a directory that user owns. The settings go into
``postgresql.conf``, not ``pg_ctl -o``: options given on the command line are lost when the server
restarts itself after a crash. ``pg_url`` gives each test a database of its own on that server.

Where the binaries or the psycopg driver are missing the tests skip with the reason, except in CI
(``CI=true``), where ``.ci/run`` installs them and a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

PG_BIN = Path(os.environ.get("TASKENGINE_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 60.0
_names = itertools.count()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"PostgreSQL tests must run in CI: {reason} (.ci/run installs postgresql)")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.frozen
class PgServer:
    """A running server: ``url(dbname)`` connects to one of its databases as its superuser."""

    directory: Path
    port: int
    user: str
    pid: int

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def as_owner(user: str | None) -> list[str]:
    return [] if user is None else ["runuser", "-u", user, "--"]


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def start_server() -> PgServer:
    """initdb + pg_ctl start on a fresh directory and port; the caller stops it (``stop_server``)."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        _unavailable(f"no initdb/pg_ctl in {PG_BIN}")
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as e:
        _unavailable(f"the psycopg driver is not installed ({e}; pip install 'taskengine[postgres]')")
    owner: str | None = None
    if os.geteuid() == 0:  # initdb refuses root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run initdb as")
        owner = "postgres"
    directory = Path(tempfile.mkdtemp(prefix="taskengine-pg-"))
    (directory / "sock").mkdir()
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for p in (directory, directory / "sock"):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    user = owner or pwd.getpwuid(os.geteuid()).pw_name
    data = directory / "data"
    _run([*as_owner(owner), str(PG_BIN / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
          "--no-sync", "-E", "UTF8", "--locale=C"], "initdb")
    port = _free_port()
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(
            f"\nport = {port}\n"
            f"unix_socket_directories = '{directory / 'sock'}'\n"
            "listen_addresses = '127.0.0.1'\n"
            "max_connections = 200\n"
            "fsync = on\nsynchronous_commit = on\n"
        )
    _run([*as_owner(owner), str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"),
          "-w", "-t", str(int(START_TIMEOUT)), "start"], "pg_ctl start")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return PgServer(directory, port, user, pid)


def stop_server(server: PgServer) -> None:
    """SIGINT is PostgreSQL's fast shutdown; its pid gone is the end (bounded, then SIGKILL). The
    pid is the one in postmaster.pid if the server was started again since (a restart test)."""
    pid = server.pid
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((server.data / "postmaster.pid").read_text().split()[0])
    try:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)  # polling a process we do not parent: no wait() to block on
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    shutil.rmtree(server.directory, ignore_errors=True)


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A throwaway server for the ``with`` block, stopped by its pid however the block ends."""
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()
