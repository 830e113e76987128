"""A node process the lifecycle tests stop with real signals.

usage: signal_child.py DB MODE TIMEOUT

Opens an engine at DB (1 worker), calls ``close_on_signals(timeout=TIMEOUT)`` unless MODE is
``nohandler``, triggers task ``t`` twice and prints ``PID <pid>`` and then ``RUNNING 0`` once
the first execution runs: its job blocks until a line arrives on stdin (never, if stdin stays
open), so the second execution stays queued. Log records go to stdout as
``LOG <logger> <level> <message>``. The main thread then waits: MODE ``with`` inside
``with engine:``, MODE ``bare`` (and ``nohandler``) in ``signal.pause()`` with no ``with``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from taskengine import Engine, JobContext


def say(line: str) -> None:
    """One write per line: lines from two threads never mix."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


#: set once both triggers are acknowledged: the job says RUNNING only then, so a test that signals
#: on RUNNING finds the second execution queued (a job can start before the second trigger returns)
triggered = threading.Event()


def hold(ctx: JobContext) -> dict[str, int]:
    triggered.wait()
    say(f"RUNNING {ctx.index}")
    sys.stdin.readline()
    return {"index": ctx.index}


def main() -> None:
    path, mode, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(name)s %(levelname)s %(message)s")
    engine = Engine.open(path, jobs={"hold": hold}, workers=1)
    if mode != "nohandler":
        engine.close_on_signals(timeout=timeout)
    say(f"PID {os.getpid()}")
    engine.create_task("t", job="hold")
    engine.trigger("t")
    engine.trigger("t")
    triggered.set()
    if mode == "with":
        with engine:
            signal.pause()
    else:
        signal.pause()


if __name__ == "__main__":
    main()
