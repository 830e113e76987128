"""Another node, played by SQL on a connection of its own: it writes what a node writes (the rows,
and the one notification its transaction sends, or none, standing for a notification that was
lost). Used by the tests of waits across nodes and by measure_remote_wait.py."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from taskengine.actors.ids import new_id
from taskengine.storage import Execution, ExecutionStatus, Task, codec
from taskengine.storage.pgfeed import CHANNEL


class OtherNode:
    """Writes to the database as another node would, on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def _notify(self, cur: Any, kinds: str | None) -> None:
        if kinds is not None:
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, kinds))

    def create_task(self, task_id: str, job: str) -> Task:
        task = Task(id=task_id, job=job, created_at=time.time(), incarnation=f"inc-{task_id}")
        self.conn.execute("INSERT INTO taskengine.tasks (id, record, max_executions, job, incarnation) "
                          "VALUES (%s, %s, NULL, %s, %s)", (task_id, codec.encode_task(task), job, task.incarnation))
        return task

    def trigger(self, task_id: str, *, notify: bool = True, key: str | None = None) -> Execution:
        """A PENDING execution at the task's next index, with its counter, in one transaction."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            (index,) = cur.execute("UPDATE taskengine.tasks SET counter = counter + 1 WHERE id = %s "
                                   "RETURNING counter - 1", (task_id,)).fetchone()  # type: ignore[misc]
            execution_id = new_id()
            ex = Execution(id=execution_id, task_id=task_id, index=index, status=ExecutionStatus.PENDING,
                           blocking=False, data={"from": "other"}, created_at=time.time(), idempotency_key=key)
            cur.execute("INSERT INTO taskengine.executions (task_id, idx, id, status, idempotency_key, record) "
                        "VALUES (%s, %s, %s, 'P', %s, %s)",
                        (task_id, index, execution_id, None if key is None else key.encode(),
                         codec.encode_execution(ex)))
            cur.execute("INSERT INTO taskengine.live (task_id, idx) VALUES (%s, %s)", (task_id, index))
            self._notify(cur, "p" if notify else None)
        return ex

    def finish(self, ex: Execution, *, notify: bool = True) -> Execution:
        done = Execution(id=ex.id, task_id=ex.task_id, index=ex.index, status=ExecutionStatus.SUCCESS,
                         blocking=ex.blocking, data=ex.data, result={"ran": "elsewhere"}, created_at=ex.created_at,
                         started_at=time.time(), finished_at=time.time(), idempotency_key=ex.idempotency_key)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("UPDATE taskengine.executions SET status = 'S', record = %s WHERE task_id = %s AND id = %s",
                        (codec.encode_execution(done), ex.task_id, ex.id))
            assert cur.rowcount == 1
            cur.execute("DELETE FROM taskengine.live WHERE task_id = %s AND idx = %s", (ex.task_id, ex.index))
            self._notify(cur, "f" if notify else None)
        return done

    def delete_task(self, task_id: str) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            for table, column in (("live", "task_id"), ("executions", "task_id"), ("tasks", "id")):
                cur.execute(f"DELETE FROM taskengine.{table} WHERE {column} = %s", (task_id,))
            self._notify(cur, "f")
