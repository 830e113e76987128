"""The PostgreSQL side of ``taskengine bench --backend postgresql://...``.

Every figure gets a database of its own on the server the URL names (``CREATE DATABASE``, so the
URL's user needs the CREATEDB right); they are named ``taskengine_bench_<pid>_<figure>`` and dropped
at the end of the run. The database in the URL itself is only used to create and drop them: the
bench never writes to a database it did not create.

Baselines measured on the same server in the same run:

* the naive design: each trigger is its own transaction (update the task's counter row, insert the
  execution row, commit with ``synchronous_commit`` on), 64 caller threads with a connection each;
* the peer queue: procrastinate (the ``bench`` extra), its enqueue-to-done rate for the same
  no-op job: 64 threads defer the jobs, one procrastinate worker runs them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import urllib.parse
from typing import Any

from taskengine.storage import codec
from taskengine.storage.pgurl import redact, scrub

log = logging.getLogger(__name__)

_names = itertools.count()


def database_url(url: str, name: str) -> str:
    """``url`` pointing at the database ``name`` (user, password, host, port and options kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


class Server:
    """The server of ``url``: makes a database per figure and drops them all at the end."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._made: list[str] = []
        self._prefix = f"taskengine_bench_{os.getpid()}"
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                row = conn.execute(
                    "SELECT version(), current_setting('synchronous_commit'), current_setting('fsync'), "
                    "current_setting('shared_buffers'), current_setting('max_connections'), "
                    "current_setting('wal_level'), current_setting('commit_delay')"
                ).fetchone()
        except psycopg.Error as e:
            raise RuntimeError(f"cannot connect to {redact(url)}: {scrub(str(e).strip(), url)}") from None
        assert row is not None
        self.settings = dict(zip(("version", "synchronous_commit", "fsync", "shared_buffers", "max_connections",
                                  "wal_level", "commit_delay"), row, strict=True))

    def database(self, figure: str) -> str:
        """A new, empty database for ``figure``; its URL."""
        import psycopg

        name = f"{self._prefix}_{next(_names)}_{figure}".lower().replace("-", "_")[:63]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._made.append(name)
        return database_url(self.url, name)

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self._made:
                try:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except psycopg.Error as e:
                    log.warning("could not drop the bench database %s: %s", name, e)
        self._made.clear()


class NaivePostgres:
    """The naive design on PostgreSQL over ``tasks`` tasks: ``op(k, i)`` is one trigger, its own
    transaction (counter row moved, execution row inserted, synced commit)."""

    def __init__(self, url: str, tasks: int, callers: int) -> None:
        import psycopg
        import psycopg_pool

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE naive_tasks (id text PRIMARY KEY, counter bigint NOT NULL)")
            conn.execute("CREATE TABLE naive_executions (task_id text NOT NULL, index bigint NOT NULL, "
                         "id text NOT NULL UNIQUE, record bytea NOT NULL, PRIMARY KEY (task_id, index))")
            self._ids = [f"naive-{t}" for t in range(tasks)]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO naive_tasks VALUES (%s, 0)", [(t,) for t in self._ids])
        self._pool = psycopg_pool.ConnectionPool(url, min_size=callers, max_size=callers, open=True)
        self._pool.wait()
        self._tasks = tasks

    def op(self, k: int, i: int) -> Any:
        from .baselines import new_execution

        task_id = self._ids[(k * 31 + i) % self._tasks]
        ex = new_execution(task_id)
        with self._pool.connection() as conn:  # one transaction, committed as the block ends
            row = conn.execute(
                "UPDATE naive_tasks SET counter = counter + 1 WHERE id = %s RETURNING counter - 1", (task_id,)
            ).fetchone()
            assert row is not None
            conn.execute("INSERT INTO naive_executions VALUES (%s, %s, %s, %s)",
                         (task_id, row[0], ex.id, codec.encode_execution(ex)))
        return row[0]

    def close(self) -> None:
        self._pool.close()


def peer_queue(url: str, total: int, callers: int = 64, concurrency: int = 16) -> dict[str, Any]:
    """procrastinate's enqueue-to-done rate: ``callers`` threads defer ``total`` no-op jobs while
    one worker (``concurrency`` jobs at once, the engine's default workers) runs them; the clock
    runs from the first defer until the worker has finished the last job."""
    import procrastinate

    from .measure import run_fixed

    # the worker is procrastinate's asyncio worker; the callers defer through its sync connector,
    # one connection each, as a threaded application would
    worker_app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    defer_app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(
        conninfo=url, min_size=callers, max_size=callers))
    done = [0]
    finished = threading.Event()
    lock = threading.Lock()

    @worker_app.task(name="noop")
    def noop() -> None:
        with lock:
            done[0] += 1
            if done[0] == total:
                finished.set()

    worker_error: list[BaseException] = []

    def serve() -> None:
        async def main() -> None:
            async with worker_app.open_async():
                worker = asyncio.create_task(worker_app.run_worker_async(
                    concurrency=concurrency, wait=True, install_signal_handlers=False))
                while not finished.is_set() and not worker.done():
                    await asyncio.sleep(0.01)
                worker.cancel()
                try:
                    await worker
                except asyncio.CancelledError:
                    pass

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            worker_error.append(e)

    with defer_app.open():
        defer_app.schema_manager.apply_schema()
        task = defer_app.configure_task("noop")
        thread = threading.Thread(target=serve, name="bench-procrastinate-worker", daemon=True)
        t0, c0 = time.perf_counter(), time.process_time()
        thread.start()
        defer_seconds, _ = run_fixed(callers, total, lambda k, i: task.defer())
        if not finished.wait(max(120.0, total / 50)):
            raise RuntimeError(f"procrastinate ran {done[0]} of {total} jobs")
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        thread.join(30)
    if worker_error:
        raise RuntimeError(f"the procrastinate worker failed: {worker_error[0]!r}")
    version = getattr(procrastinate, "__version__", None)
    return {
        "value": total / elapsed, "unit": "jobs/s", "jobs": total, "callers": callers, "concurrency": concurrency,
        "seconds": round(elapsed, 3), "defer_phase_per_s": round(total / defer_seconds, 1),
        "cpu_percent": round(100 * cpu / elapsed), "cpu_us_per_op": round(1e6 * cpu / total, 1),
        "peer": f"procrastinate {version}" if version else "procrastinate",
    }
