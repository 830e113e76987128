"""The process the fault-injection and power-loss tests fault, kill and cut back.

usage: fault_child.py DB CONFIG_JSON

Opens an engine at DB, creates its tasks if they do not exist, prints ``READY``, then triggers
from several threads, printing one line per acknowledged execution on stdout (a pipe: the record
of what was acknowledged lives outside the file system under test):

    ACK <task> <execution id> <index> <blocking 0|1>

Kinds of job (tests/crash_child.py's): ``fast`` returns at once, ``block`` never returns (so
RUNNING executions are left at a kill; only the first two triggers of a run ask for it), ``slow``
takes a moment. 8 workers: a run's own two blocked jobs and the two an earlier run on the same
database may have left PENDING (recovered, they block too) still leave workers free; with 4, all
four could block and every later execution waited for ever. A thread stops at its first error and prints
``ERR <thread> <exception type> <message>``; ``OPENFAIL <type> <message>`` if the open failed.
Once every thread stopped or ``acks`` executions were acknowledged it prints ``DONE`` and waits
to be killed (a clean close would wait for the blocked jobs).

CONFIG keys: counter_actors, sync, threads, tasks, acks, payload (bytes of padding per trigger,
to make LevelDB switch log files), no_dirsync (drop the directory fsync: a negative control).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import zlib

from taskengine import Engine, errors

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crash_child import job  # noqa: E402 - the crash tests' job kinds: fast, block (never returns), slow

PRINT = threading.Lock()


def task_ids(n: int, actors: int) -> list[str]:
    """``n`` task ids spread over the counter actors as the engine maps them (CRC-32 of the id),
    so that with two actors both write."""
    ids: list[str] = []
    k = 0
    while len(ids) < n:
        tid = f"t{k}"
        if zlib.crc32(tid.encode()) % actors == len(ids) % actors:
            ids.append(tid)
        k += 1
    return ids


def say(line: str) -> None:
    """One line on the pipe, in one write(2); retried when an injector (fiu) fails the write."""
    data = (line + "\n").encode()
    with PRINT:
        for _ in range(10_000):
            try:
                os.write(1, data)
                return
            except OSError:
                continue


def main() -> None:
    path, cfg = sys.argv[1], json.loads(sys.argv[2])
    if cfg.get("no_dirsync"):
        from taskengine.storage import durable

        durable.SYNC_DIRECTORIES = False
    try:
        engine = Engine.open(
            path, jobs={"faultjob": job}, workers=8, sync=cfg.get("sync", True),
            counter_actors=cfg.get("counter_actors", 1),
        )
        tasks = task_ids(cfg.get("tasks", 2), cfg.get("counter_actors", 1))
        for tid in tasks:
            try:
                engine.create_task(tid, job="faultjob")
            except errors.TaskAlreadyExists:
                pass
    except Exception as e:  # noqa: BLE001 - reported to the parent, which judges it
        say(f"OPENFAIL {type(e).__name__} {e}".replace("\n", " "))
        sys.stdin.read()
        return
    say("READY")
    limit = cfg.get("acks", 1_000_000)
    pad = "x" * cfg.get("payload", 0)
    acked, blocked = [0], [0]
    stopped = threading.Semaphore(0)

    def client(c: int) -> None:
        try:
            for i in range(1_000_000):
                if acked[0] >= limit:
                    return
                tid = tasks[c % len(tasks)]  # one task per thread: a thread on a healthy actor goes on
                blocking = i % 5 == 4
                kind = "fast" if blocking or i % 3 else "slow"
                with PRINT:
                    if kind == "slow" and blocked[0] < 2:
                        kind, blocked[0] = "block", blocked[0] + 1
                data = {"kind": kind, "pad": pad}
                ex = engine.trigger(tid, data=data, blocking=blocking, timeout=60)
                acked[0] += 1
                say(f"ACK {tid} {ex.id} {ex.index} {int(blocking)}")
        except Exception as e:  # noqa: BLE001
            say(f"ERR {c} {type(e).__name__} {e}".replace("\n", " "))
        finally:
            stopped.release()

    n = cfg.get("threads", 3)
    for c in range(n):
        threading.Thread(target=client, args=(c,), daemon=True).start()
    for _ in range(n):
        stopped.acquire()
    say("DONE")
    sys.stdin.read()


if __name__ == "__main__":
    main()
