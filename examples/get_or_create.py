"""The README's first example as a program that can run again and again on one database: the task
is created on the first run and found on every later one (``exist_ok=True``), and its indexes go on
where the last run stopped.

usage: python examples/get_or_create.py DB
"""

from __future__ import annotations

import sys

from taskengine import Engine, JobContext


def send_report(ctx: JobContext) -> dict[str, object]:
    return {"task": ctx.task_id, "index": ctx.index, "to": ctx.data["to"]}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/get_or_create.py DB")
    with Engine.open(sys.argv[1], jobs={"send_report": send_report}) as engine:
        engine.create_task("daily-report", job="send_report", config={"region": "eu"}, exist_ok=True)
        queued = engine.trigger("daily-report", data={"to": "ops"})  # PENDING, index assigned
        done = engine.trigger("daily-report", data={"to": "dev"}, blocking=True, timeout=5.0)
        waited = engine.wait("daily-report", queued.id, timeout=5.0)
        print(queued.index, done.index, waited.status.value, done.result)


if __name__ == "__main__":
    main()
