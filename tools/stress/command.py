"""``taskengine stress``: many concurrent client actors against one engine, optionally with the
engine's process SIGKILLed and restarted, then every acknowledgement checked and the replay run.

The command is a front-end: the workload is ``taskengine.tools.stress.workload``, the child process
``taskengine.tools.stress.child``, the orchestration ``taskengine.tools.stress.driver``, the final check
``taskengine.tools.stress.check`` and the report ``taskengine.tools.stress.report``. Only this module prints.

Exit status: 0 when no violation was found, 1 when any was (each printed on one line on
stderr), 2 for a usage mistake or a database that cannot be used (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from taskengine.actors.engine import DEFAULT_COUNTER_ACTORS_POSTGRES, default_counter_actors
from taskengine.storage import is_url

from ..common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError, output_path
from ..common import seconds as _seconds
from ..common import whole_number as _int

DEFAULT_CLIENTS = 48
DEFAULT_TASKS = 16
DEFAULT_WORKERS = 4
#: seconds, when neither --count nor --duration is given
DEFAULT_DURATION = 10.0
MIN_CRASH_EVERY = 0.2
DEFAULT_LEASE = 2.0
MAX_NODES = 32

DESCRIPTION = (
    "Drive an engine on DB with many concurrent client actors (pykka) over many tasks: blocking and "
    "non-blocking triggers, idempotent retries, task deletions and re-creations, failing and slow jobs. "
    "With --crash-every the engine and its clients run in a child process that is killed with SIGKILL "
    "at random moments and restarted on the same database. With --nodes N (PostgreSQL) N node processes "
    "run at once, and nodes are SIGKILLed, replaced, and paused past their lease. At the end every "
    "execution acknowledged to a client is checked on a reopened engine (same index, finished), the "
    "replay check is run, and a report with throughput and latency percentiles is printed. Exits 1 if "
    "any violation was found."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # numbers are parsed in run(), so a bad one is one line on stderr with exit status 2
    parser.add_argument("db", metavar="DB", help="database directory (created if missing), or a postgresql:// "
                        "URL (its schema created if missing)")
    parser.add_argument("--clients", metavar="N", default=str(DEFAULT_CLIENTS),
                        help=f"concurrent client actors (default {DEFAULT_CLIENTS})")
    parser.add_argument("--tasks", metavar="M", default=str(DEFAULT_TASKS),
                        help=f"tasks the clients share (default {DEFAULT_TASKS})")
    parser.add_argument("--count", metavar="K", default=None,
                        help="stop after K acknowledged executions")
    parser.add_argument("--duration", metavar="SECONDS", default=None,
                        help=f"stop after SECONDS of workload (default {DEFAULT_DURATION:g} if --count is not given)")
    parser.add_argument("--crash-every", metavar="SECONDS", default=None,
                        help="run the engine in a child process and SIGKILL it about every SECONDS "
                        "(uniformly 0.5..1.5 x SECONDS after it is ready; some kills hit its start-up)")
    parser.add_argument("--nodes", metavar="N", default=None,
                        help="PostgreSQL only: run N node processes at once on the database, each an engine with a "
                        "node id of its own and its clients; with --crash-every, about every SECONDS one node is "
                        "SIGKILLed and replaced (same node id or a new one) or paused past its lease (SIGSTOP) and "
                        "resumed. At the end the nodes' job-run markers prove nothing ran twice")
    parser.add_argument("--lease", metavar="SECONDS", default=None,
                        help=f"with --nodes: each node's lease (default {DEFAULT_LEASE:g}); a node paused longer "
                        "loses it")
    parser.add_argument("--pause-share", metavar="FRACTION", default=None,
                        help="with --nodes and --crash-every: the share of chaos events that pause a node past its "
                        "lease rather than kill one (default 0.3)")
    parser.add_argument("--netns", action="store_true",
                        help="with --nodes (root, iproute2): run each node place in a network namespace of its own, "
                        "joined to the host by a veth pair, and make half the pauses cuts off the network (its "
                        "link down until it lost its lease) instead of SIGSTOPs; the server must take connections "
                        "from 10.231.0.0/16 at the host's ends (each place a /30 of it that the host does not use yet)")
    parser.add_argument("--keep-last", metavar="N", default=None,
                        help="open the workload's engines with keep_last=N (retention): an acknowledged execution "
                        "found pruned is checked by the task's prune mark (above its index: it had finished)")
    parser.add_argument("--max-queued", metavar="N", default=None,
                        help="open the workload's engines with max_queued=N (backpressure): triggers over the bound "
                        "are refused with QueueFull, which is counted, not a violation")
    parser.add_argument("--workers", metavar="W", default=str(DEFAULT_WORKERS),
                        help=f"executor actors of the engine (default {DEFAULT_WORKERS})")
    parser.add_argument("--counter-actors", metavar="C", default=None,
                        help="counter actors of the engine (default: the engine's, 1 on LevelDB and "
                        f"{DEFAULT_COUNTER_ACTORS_POSTGRES} on PostgreSQL)")
    parser.add_argument("--seed", metavar="S", default=None,
                        help="seed of the workload's choices (default: a random one, shown in the report)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON to PATH")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also draw acknowledged executions per second over the run, with each SIGKILL and "
                        "restart marked, and the latency distributions, into FILE.png (needs matplotlib, in the "
                        "tools extra)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def _fraction(value: Any, flag: str) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ToolError(f"{flag} must be a number from 0 to 1, not {value!r}", EXIT_USAGE)
    return x


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's :class:`taskengine.tools.stress.driver.StressConfig`, or ToolError (exit 2) naming the mistake."""
    from .driver import StressConfig

    db = args.db
    if not isinstance(db, str) or not db.strip():
        raise ToolError("DB must be a directory path or a postgresql:// URL", EXIT_USAGE)
    if not is_url(db) and os.path.exists(db) and not os.path.isdir(db):
        raise ToolError(f"{db!r} is a file, not a database directory", EXIT_USAGE)
    clients = _int(args.clients, "--clients", 1, 1024)
    tasks = _int(args.tasks, "--tasks", 1, 100_000)
    workers = _int(args.workers, "--workers", 1, 256)
    counter_actors = (default_counter_actors(db) if args.counter_actors is None
                      else _int(args.counter_actors, "--counter-actors", 1, 64))
    if args.count is not None and args.duration is not None:
        raise ToolError("give either --count or --duration, not both", EXIT_USAGE)
    count = None if args.count is None else _int(args.count, "--count", 1, 10**9)
    duration = None
    if count is None:
        duration = DEFAULT_DURATION if args.duration is None else _seconds(args.duration, "--duration", 0.1, 86400)
    crash_every = None
    if args.crash_every is not None:
        crash_every = _seconds(args.crash_every, "--crash-every", MIN_CRASH_EVERY, 86400)
    nodes = None
    lease = DEFAULT_LEASE
    if getattr(args, "nodes", None) is not None:
        if not is_url(db):
            raise ToolError("--nodes needs a postgresql:// URL: a LevelDB database belongs to one process", EXIT_USAGE)
        nodes = _int(args.nodes, "--nodes", 1, MAX_NODES)
    if getattr(args, "lease", None) is not None:
        if nodes is None:
            raise ToolError("--lease is a setting of --nodes", EXIT_USAGE)
        lease = _seconds(args.lease, "--lease", 0.5, 3600)
    netns = bool(getattr(args, "netns", False))
    if netns:
        if nodes is None:
            raise ToolError("--netns is a setting of --nodes", EXIT_USAGE)
        from . import netns as netns_tool

        try:
            netns_tool.check()
        except netns_tool.NetnsUnavailable as e:
            raise ToolError(f"--netns: {e}", EXIT_USAGE) from None
    pause_share = 0.3
    if getattr(args, "pause_share", None) is not None:
        if nodes is None:
            raise ToolError("--pause-share is a setting of --nodes", EXIT_USAGE)
        pause_share = _fraction(args.pause_share, "--pause-share")
    keep_last = None
    if getattr(args, "keep_last", None) is not None:
        keep_last = _int(args.keep_last, "--keep-last", 0, 10**9)
    max_queued = None
    if getattr(args, "max_queued", None) is not None:
        max_queued = _int(args.max_queued, "--max-queued", 1, 10**9)
    if args.seed is None:
        seed = int.from_bytes(os.urandom(4), "big") % 1_000_000
    else:
        seed = _int(args.seed, "--seed", 0, 2**31 - 1)
    if args.json is not None:
        output_path("--json", args.json)
    if getattr(args, "plot", None) is not None:
        from ..plots import require

        require(args.plot)
    return StressConfig(
        db=db, clients=clients, tasks=tasks, count=count, duration=duration, crash_every=crash_every,
        workers=workers, counter_actors=counter_actors, seed=seed, nodes=nodes, lease=lease,
        pause_share=pause_share, netns=netns, max_queued=max_queued, keep_last=keep_last,
    )


class ProgressLine:
    """One updating line on a terminal (``\\r``); on a pipe or file, a line every 5 s instead."""

    def __init__(self, out: TextIO, enabled: bool, nodes: bool = False) -> None:
        self.out = out
        self.nodes = nodes
        self.enabled = enabled
        self.tty = enabled and out.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        text = (
            f"stress {p.elapsed:6.1f} s  acked {p.acknowledged:>8}  {p.rate:7.1f}/s  "
            f"{'kills' if self.nodes else 'crashes'} {p.crashes:>3}  violations {p.violations}"
        )
        if self.tty:
            self.out.write("\r" + text + "\x1b[K")
            self.out.flush()
            self._shown = True
        elif time.monotonic() - self._last >= 5.0:
            self._last = time.monotonic()
            self.out.write(text + "\n")
            self.out.flush()

    def clear(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._shown = False


def run(
    args: argparse.Namespace,
    observe: Callable[[Any], None] | None = None,
    after_workload: Callable[[], None] | None = None,
) -> int:
    """The command; ``observe`` is also given the run's progress, and ``after_workload`` called
    before the checks (a harness that restarts the server during the run:
    ``taskengine.tools.cluster``)."""
    nodes = getattr(args, "nodes", None) is not None
    progress = ProgressLine(sys.stderr, not getattr(args, "no_progress", False), nodes)

    def on_progress(p: Any) -> None:
        progress(p)
        if observe is not None:
            observe(p)

    try:
        cfg = config_from_args(args)
        from .driver import execute

        report = execute(cfg, on_progress, after_workload=after_workload)
    except ToolError as e:
        progress.clear()
        print(f"taskengine stress: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        progress.clear()
        print("taskengine stress: interrupted", file=sys.stderr)
        return 130
    progress.clear()
    for line in report.render():
        print(line)
    sys.stdout.flush()
    for v in report.violations:
        print(f"violation: {v}", file=sys.stderr)
    if args.json is not None:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report.to_json(), f, indent=2)
                f.write("\n")
        except OSError as e:
            print(f"taskengine stress: error: cannot write --json {args.json!r}: {e.strerror}", file=sys.stderr)
            return EXIT_USAGE
    if getattr(args, "plot", None) is not None:
        from ..plots import stress_figure

        try:
            stress_figure(report.to_json(), args.plot)
        except ToolError as e:
            print(f"taskengine stress: error: {e.message}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK if report.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """``python -m taskengine.tools.stress.command`` (the same as ``taskengine stress``)."""
    parser = argparse.ArgumentParser(prog="taskengine stress", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
