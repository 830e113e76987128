"""Several nodes on one hot task (``taskengine bench --backend URL``, figure ``nodes``).

The scale-out issue asks that three nodes triggering one task together do no worse than one. A
node is a process of its own (its own interpreter, its own writer connection, its own node id),
so each is a child process here (``python -m taskengine.tools.bench.nodes child PARAMS_JSON``):
it opens an engine with its defaults on the round's database, makes sure the task exists, says
``ready`` and waits for ``go`` on its stdin, so every node's measured window starts together;
then its callers trigger the one task (jobs held at a gate, as for the acks figures) and it prints
its result as one JSON line.

The same 64 callers are spread over the nodes (64 on one node; 22, 21, 21 on three): the figure
says what sharing a task between nodes costs, not what more callers add. One-node and three-node
rounds interleave, each on a new database, and every database gets the replay check.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from typing import IO, Any

from .baselines import _median_of
from .measure import run_callers

#: callers in all, spread over the nodes of a round
CALLERS = 64
NODE_COUNTS = (1, 3)
#: seconds a node may take to open its engine, and to report after its window
STARTUP_SECONDS = 60.0


def spread(callers: int, nodes: int) -> list[int]:
    """``callers`` over ``nodes`` as evenly as can be (22, 21, 21)."""
    return [callers // nodes + (1 if k < callers % nodes else 0) for k in range(nodes)]


def read_line(stream: IO[str], deadline: float) -> str | None:
    """One line from a child's stdout pipe, or None if it has not said one by ``deadline``
    (monotonic): read byte by byte from the descriptor, so nothing after the line is taken from
    the pipe (the rest is read later through ``stream``, whose buffer this leaves empty). A child
    that ends first gives what it said, maybe ``""``."""
    fd = stream.fileno()
    said = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            return said.decode(errors="replace")
        said += byte


def measure_round(path: str, nodes: int, opts: Any, module: str = "taskengine.tools.bench.nodes",
                  startup: float = STARTUP_SECONDS) -> dict[str, Any]:
    """One round: ``nodes`` child processes on ``path``, measured together; their summed rate, and
    each node's own result (``nodes``). ``module`` runs a child (``python -m MODULE child``): the
    probe's instruments one. A node that has not opened its engine within ``startup`` seconds is a
    ``StorageError`` (every node of the round killed), not a bench that hangs."""
    from taskengine.errors import StorageError
    from taskengine.storage import shown

    from .engine_figures import engine_kwargs

    procs = []
    try:
        for k, callers in enumerate(spread(CALLERS, nodes)):
            params = {"path": path, "node": f"bench-node-{k}", "callers": callers, "duration": opts.duration,
                      "warmup": opts.warmup, **engine_kwargs(opts)}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", module, "child", json.dumps(params)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        deadline = time.monotonic() + startup
        for k, p in enumerate(procs):  # every node open, the task there: then all start at once
            assert p.stdout is not None
            line = read_line(p.stdout, deadline)
            if line is None:
                raise StorageError(f"bench node {k} of {nodes} did not open its engine on {shown(path)} within "
                                   f"{startup:g} s; the round's node processes were killed")
            if line.strip() != "ready":
                raise RuntimeError(f"a bench node did not start (it said {line.strip()!r})")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=STARTUP_SECONDS + opts.duration + opts.warmup)
            lines = [ln for ln in out.splitlines() if ln.strip()]
            if p.returncode != 0 or not lines:
                raise RuntimeError(f"a bench node failed with exit status {p.returncode}")
            results.append(json.loads(lines[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ops = sum(r["ops"] for r in results)
    return {
        "rate": sum(r["ops"] / r["seconds"] for r in results if r["seconds"] > 0),
        "cpu_us_per_op": 1e6 * sum(r["cpu_seconds"] for r in results) / ops if ops else None,
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "nodes": results,
    }


def nodes_on_one_task(opts: Any, out: dict[str, Any], invariants: dict[str, Any]) -> None:
    """``nodes_acks_64c_1t_1n`` and ``..._3n``: durable acks of 64 callers on one task, on one
    node and spread over three, interleaved round by round."""
    from .engine_figures import _replay_ok, location

    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in NODE_COUNTS}
    for r in range(opts.rounds):
        for nodes in NODE_COUNTS:
            name = f"nodes_acks_64c_1t_{nodes}n"
            path = location(opts, f"{name}_r{r}")
            rounds[nodes].append(measure_round(path, nodes, opts))
            check = _replay_ok(path)
            if name not in invariants or not check.get("ok"):
                invariants[name] = check
    for nodes, runs in rounds.items():
        entry: dict[str, Any] = {
            "value": statistics.median(x["rate"] for x in runs), "unit": "acks/s", "callers": CALLERS, "tasks": 1,
            "nodes": nodes, "callers_per_node": spread(CALLERS, nodes), "rounds": [round(x["rate"], 1) for x in runs],
            "cpu_us_per_op": _median_of(x["cpu_us_per_op"] for x in runs),
            "errors": sum(x["errors"] for x in runs),
        }
        first = next((x["first_error"] for x in runs if x["first_error"]), None)
        if first:
            entry["first_error"] = first
        out[f"nodes_acks_64c_1t_{nodes}n"] = entry


def child(p: dict[str, Any]) -> dict[str, Any]:
    """One node of a round (see the module's docstring)."""
    from taskengine import Engine

    gate = threading.Event()

    def held(ctx: Any) -> None:
        gate.wait()

    engine = Engine.open(p["path"], jobs={"held": held}, node_id=p["node"], workers=p["workers"],
                         counter_actors=p["counter_actors"], sync=p["sync"])
    try:
        engine.create_task("t", job="held", exist_ok=True)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise RuntimeError("the bench did not say go")
        run = run_callers(p["callers"], lambda k, i: engine.trigger("t"), duration=p["duration"],
                          warmup=p["warmup"], record_latency=False)
    finally:
        gate.set()
        engine.close()
    return {"ops": run.ops, "seconds": run.seconds, "cpu_seconds": run.cpu_seconds, "errors": run.errors,
            "first_error": run.first_error}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "child":
        print("usage: python -m taskengine.tools.bench.nodes child PARAMS_JSON", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    result = child(json.loads(argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
