"""A long-running node: one engine, a task created once (get-or-create, so a restart finds it), a
trigger every INTERVAL seconds, and a graceful stop on SIGTERM or SIGINT (systemd, ``docker stop``,
Ctrl-C): running jobs get up to 5 s, then the process exits with 143 (SIGTERM) or 130 (SIGINT).

usage: python examples/node.py DB [INTERVAL]
"""

from __future__ import annotations

import logging
import sys
import time

from taskengine import Engine, JobContext


def heartbeat(ctx: JobContext) -> dict[str, float]:
    return {"index": ctx.index, "at": time.time()}


def main() -> None:
    if not 2 <= len(sys.argv) <= 3:
        sys.exit("usage: python examples/node.py DB [INTERVAL]")
    path = sys.argv[1]
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    engine = Engine.open(path, jobs={"heartbeat": heartbeat})
    engine.close_on_signals(timeout=5.0)  # from the main thread, before the node starts its work
    with engine:
        engine.create_task("heartbeat", job="heartbeat", exist_ok=True)
        print(f"node ready at {path}; next index {engine.next_index('heartbeat')}", flush=True)
        while True:
            execution = engine.trigger("heartbeat")
            print(f"triggered index {execution.index}", flush=True)
            time.sleep(interval)


if __name__ == "__main__":
    main()
