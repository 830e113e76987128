"""How long a wait on one node takes to return after another node's finish commits (PostgreSQL):
through a notification, and with the notification lost (polling); and between two real engines,
from the job's return on one to the wait's return on the other. Then what one look for other nodes'
PENDING executions costs as the backlog grows. A measurement, not a test:
``python tests/measure_remote_wait.py [ROUNDS]`` starts a throwaway server, prints the figures,
and stops it."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pg import running_server  # noqa: E402
from pg_other import OtherNode  # noqa: E402
from taskengine import Engine, JobContext  # noqa: E402


def _wait(engine: Engine, task: str, execution_id: str, returned: list[float]) -> None:
    engine.wait(task, execution_id, timeout=60)
    returned.append(time.perf_counter())


def measure(url: str, *, notify: bool, poll: float, rounds: int) -> list[float]:
    """Seconds from the other node's COMMIT to the return of ``wait`` on this one, per round."""
    other = OtherNode(url)
    task = f"t-{notify}"
    out = []
    with Engine.open(url, poll_interval=poll) as engine:
        other.create_task(task, job="elsewhere")
        for _ in range(rounds):
            ex = other.trigger(task)
            returned: list[float] = []
            thread = threading.Thread(target=_wait, args=(engine, task, ex.id, returned))
            thread.start()
            while not any(e == ex.id and s is not None for _, e, s in engine._board.remote()):
                time.sleep(0.001)  # until the wait has read it unfinished
            other.finish(ex, notify=notify)
            committed = time.perf_counter()
            thread.join()
            out.append(returned[0] - committed)
    other.close()
    return out


def measure_two_engines(url: str, rounds: int) -> list[float]:
    """Seconds from the return of a job on engine B to the return of ``wait`` for it on engine A
    (B's finish turn and commit, the notification, A's read)."""
    go = threading.Semaphore(0)
    returned_at: list[float] = []

    def job(ctx: JobContext) -> None:
        go.acquire()
        returned_at.append(time.perf_counter())

    out = []
    with Engine.open(url, node_id="b", jobs={"j": job}, poll_interval=3600) as b, \
            Engine.open(url, node_id="a", poll_interval=3600) as a:
        b.create_task("t", job="j")
        for _ in range(rounds):
            ex = b.trigger("t")
            returned: list[float] = []
            thread = threading.Thread(target=_wait, args=(a, "t", ex.id, returned))
            thread.start()
            while not any(e == ex.id and s is not None for _, e, s in a._board.remote()):
                time.sleep(0.001)
            go.release()
            thread.join()
            out.append(returned[0] - returned_at[-1])
    return out


def measure_discovery(url: str) -> None:
    """What one look for other nodes' PENDING executions costs against the size of the backlog."""
    from taskengine.actors.ids import new_id
    from taskengine.storage import Execution, ExecutionStatus, codec, open_store

    Engine.open(url).close()  # the schema
    other = OtherNode(url)
    other.create_task("t", job="j")
    for n in (1000, 10_000, 100_000):
        have = other.conn.execute("SELECT counter FROM taskengine.tasks WHERE id = 't'").fetchone()[0]  # type: ignore[index]
        rows = []
        for i in range(have, n):
            ex = Execution(id=new_id(), task_id="t", index=i, status=ExecutionStatus.PENDING, blocking=False)
            rows.append(("t", i, ex.id, codec.encode_execution(ex)))
        with other.conn.cursor() as cur:
            cur.executemany("INSERT INTO taskengine.executions (task_id, idx, id, status, record) "
                            "VALUES (%s, %s, %s, 'P', %s)", rows)
        other.conn.execute("UPDATE taskengine.tasks SET counter = %s WHERE id = 't'", (n,))
        other.conn.execute("ANALYZE")
        store = open_store(url)
        for limit in (4, 64):
            began, repeats = time.perf_counter(), 20
            for _ in range(repeats):
                store.pending_elsewhere(["j"], limit, new_id())
            print(f"one look for others' work, {n:>7,} PENDING rows, limit {limit:>2}: "
                  f"{(time.perf_counter() - began) / repeats * 1000:5.1f} ms")
        store.close()
    other.close()


def show(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print(f"{name:<34} n={len(ms):<4} median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  "
          f"max {ms[-1]:7.1f} ms")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with running_server() as server:
        show("notification (poll_interval 3600 s)", measure(server.create_database(), notify=True, poll=3600,
                                                            rounds=rounds))
        show("two engines (job end on B -> A)", measure_two_engines(server.create_database(), rounds))
        for poll in (1.0, 0.2):
            show(f"notification lost (poll {poll} s)", measure(server.create_database(), notify=False, poll=poll,
                                                               rounds=max(5, rounds // 5)))
        measure_discovery(server.create_database())


if __name__ == "__main__":
    main()
