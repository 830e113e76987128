"""A counter actor's turn on PostgreSQL takes what arrives about the tasks it locked.

With several nodes on one task, a turn waits for the task's lock while other nodes' turns hold it.
What the node's callers send meanwhile joins that turn once it holds the lock (one transaction,
one synced commit), rather than waiting for the lock again in a turn of its own; a message about
a task the turn did not lock waits for the next turn, in the order it came.

The triggers have idempotency keys, so their turns lock their tasks before they are handled. A
stamped turn (test_pg_stamped) waits for the lock in its write, once handled: what arrives
meanwhile makes the next turn.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Gate, check_db, poll_until
from taskengine.storage.pg_writer import TASK_LOCKS

pytestmark = pytest.mark.timeout(60)

N = 20  # triggers that arrive while the first one's turn waits for the task's lock


def _waiting_for_a_lock(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND NOT granted",
                           (pid,)).fetchone()
    return bool(row and row[0])


def test_what_arrives_while_a_turn_waits_for_its_task_joins_it(make_engine: Any, pg_url: str) -> None:
    gate = Gate()
    engine = make_engine(pg_url, jobs={"g": gate}, workers=1, node_id="a")
    engine.create_task("t", job="g")
    engine.create_task("u", job="g")
    writer = engine._committer
    actor = engine._refs.counters[0]._actor_weakref()
    answers: dict[str, Any] = {}
    sizes: list[int] = []  # changes per write (the counter actor's turns, then executors' starts)
    write = writer.write

    def counted(changes: Any) -> Any:
        sizes.append(len(changes))
        return write(changes)

    writer.write = counted

    def trigger(name: str, task_id: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.update({name: engine.trigger(task_id, idempotency_key=name)}),
                                  daemon=True)
        thread.start()
        return thread

    other = psycopg.connect(pg_url)  # another node's turn, holding the task's lock
    try:
        other.execute("SELECT pg_advisory_xact_lock(%s, hashtext('t'))", (TASK_LOCKS,))
        threads = [trigger("first", "t")]
        poll_until("the first trigger's turn waits for the task's lock",
                   lambda: _waiting_for_a_lock(pg_url, writer.backend_pid()))
        for k in range(N):
            threads.append(trigger(f"more {k}", "t"))
            poll_until(f"trigger {k} waits in the inbox", lambda k=k: actor.actor_inbox.qsize() >= k + 1)
        threads.append(trigger("other task", "u"))
        poll_until("the other task's trigger waits in the inbox", lambda: actor.actor_inbox.qsize() >= N + 1)
        assert sizes == []  # nothing written while the lock is held elsewhere
    finally:
        other.commit()
        other.close()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    # every trigger of t in the turn that waited (an insert each and the counter), u's in a later one
    assert sizes[0] == N + 2
    indexes = [answers["first"].index] + [answers[f"more {k}"].index for k in range(N)]
    assert indexes == list(range(N + 1))  # in the order they came
    assert answers["other task"].index == 0
    assert engine.get_task("t").execution_count == N + 1
    gate.release()
    engine.close()
    check_db(pg_url)
