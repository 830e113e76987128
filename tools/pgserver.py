"""A throwaway PostgreSQL server from the system's binaries, for the tests and ``make cluster``.

``start_server()`` runs ``initdb`` and ``pg_ctl start`` on a temporary directory and a free port;
``stop_server()`` stops it by its pid and removes the directory; ``running_server()`` does both
around a ``with`` block; ``restart_server()`` kills it the hard way (``pg_ctl stop -m immediate``:
no checkpoint, every client cut) and starts it again on the same directory, which is how the
scenario tests and ``make cluster`` take the server away under load.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user
(``runuser -u postgres --``) on a directory that user owns. The settings go into
``postgresql.conf``, not ``pg_ctl -o``: options given on the command line are lost when the server
restarts itself after a crash. Where the binaries, the user or the driver are missing,
:class:`ServerUnavailable` says why (the tests turn it into a skip, or a failure in CI).
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

PG_BIN = Path(os.environ.get("TASKENGINE_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 60.0
_names = itertools.count()


class ServerUnavailable(Exception):
    """No throwaway server can be started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.frozen
class PgServer:
    """A running server: ``url(dbname)`` connects to one of its databases as its superuser.
    ``owner`` is the user the server's programs run as (``postgres`` when run by root)."""

    directory: Path
    port: int
    user: str
    pid: int
    owner: str | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "sock"

    @property
    def log(self) -> Path:
        return self.directory / "log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop one of its databases, ending the sessions still on it first (``WITH (FORCE)``: an
        engine a test left open must not keep its database, and its disk, for the whole session).
        psycopg's error if it cannot be dropped."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def current_pid(self) -> int:
        """The postmaster's pid now (it changes with a restart)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return self.pid


def as_owner(user: str | None) -> list[str]:
    return [] if user is None else ["runuser", "-u", user, "--"]


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def start_server(netns: bool = False) -> PgServer:
    """initdb + pg_ctl start on a fresh directory and port; the caller stops it (``stop_server``).
    ``netns``: it also takes connections from the node namespaces of ``stress --netns`` (it listens
    on every address, and trusts 10.231.0.0/16 besides the loopback)."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        raise ServerUnavailable(f"no initdb/pg_ctl in {PG_BIN}")
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as e:
        raise ServerUnavailable(
            f"the psycopg driver is not installed ({e}; pip install 'taskengine[postgres]')"
        ) from None
    owner: str | None = None
    if os.geteuid() == 0:  # initdb refuses root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable("running as root and there is no `postgres` user to run initdb as") from None
        owner = "postgres"
    directory = Path(tempfile.mkdtemp(prefix="taskengine-pg-"))
    (directory / "sock").mkdir()
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for p in (directory, directory / "sock"):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    user = owner or pwd.getpwuid(os.geteuid()).pw_name
    data = directory / "data"
    try:
        _run([*as_owner(owner), str(PG_BIN / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
              "--no-sync", "-E", "UTF8", "--locale=C"], "initdb")
        port = _free_port()
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {port}\n"
                f"unix_socket_directories = '{directory / 'sock'}'\n"
                f"listen_addresses = '{'*' if netns else '127.0.0.1'}'\n"
                "max_connections = 200\n"
                "fsync = on\nsynchronous_commit = on\n"
            )
        if netns:
            with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:
                hba.write("host all all 10.231.0.0/16 trust\n")
        _pg_ctl(owner, data, "start", "-w", "-t", str(int(START_TIMEOUT)), "-l", str(directory / "log"))
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return PgServer(directory, port, user, pid, owner)


def _pg_ctl(owner: str | None, data: Path, *args: str) -> None:
    _run([*as_owner(owner), str(PG_BIN / "pg_ctl"), "-D", str(data), *args], f"pg_ctl {args[0]}")


def restart_server(server: PgServer) -> None:
    """Kill the server the hard way (``pg_ctl stop -m immediate``: no checkpoint, every client
    connection cut, crash recovery at the next start) and start it again on the same port."""
    _pg_ctl(server.owner, server.data, "stop", "-m", "immediate", "-w")
    _pg_ctl(server.owner, server.data, "start", "-w", "-t", str(int(START_TIMEOUT)), "-l", str(server.log))


def stop_server(server: PgServer) -> None:
    """SIGQUIT is PostgreSQL's immediate shutdown: no shutdown checkpoint, which would write and
    fsync everything the server's databases dirtied since the last one (a test session's hundreds
    of databases: seconds on a quiet machine, up to this wait's bound on a loaded one) only for the
    directory to be removed next. Its pid gone is the end (bounded, then SIGKILL). The pid is the
    one in postmaster.pid if the server was started again since (a restart)."""
    pid = server.current_pid()
    try:
        os.kill(pid, signal.SIGQUIT)
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


__all__ = [
    "PG_BIN", "PgServer", "ServerUnavailable", "as_owner", "restart_server", "running_server", "start_server",
    "stop_server",
]
