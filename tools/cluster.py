"""``make cluster``: a throwaway PostgreSQL, a multi-node stress run on it, server restarts, replay.

``python -m taskengine.tools.cluster [stress options] [--server-restarts K]`` starts a server of its
own (``taskengine.tools.pgserver``: initdb on a temporary directory, a free port), makes a database,
and runs ``taskengine stress URL --nodes N`` on it (default: 3 nodes for 60 s, a node SIGKILLed or
paused about every 4 s). The stress tool does not own
the server, so taking the server away is this harness's part: K times during the run, at random
moments of its middle, it kills the server (``pg_ctl stop -m immediate``: no checkpoint, every
connection cut) and starts it again, while the nodes keep triggering. Then ``taskengine replay URL``
runs once more, as a process of its own, and the server is stopped and its directory removed.

Exit status: 0 when the stress run and the replay found no violation, 1 when either did (or a
server restart failed), 2 when no server could be started or an option is wrong.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import pgserver
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError
from .stress import command as stress_command

DEFAULTS = {"nodes": "3", "duration": "60", "crash_every": "4", "clients": "8", "tasks": "16", "lease": "2"}


class ServerRestarts:
    """Restarts ``server`` at given moments of a run (seconds since it began), from a thread of
    its own, so the run's loop is never held up. :meth:`observe` is the run's progress callback."""

    def __init__(self, server: pgserver.PgServer, at: Sequence[float], say: Any = None) -> None:
        self.server = server
        self.at = sorted(at)
        self.done = 0
        self.failures: list[str] = []
        self._say = say
        self._due = threading.Event()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    def observe(self, progress: Any) -> None:
        """Called with the run's progress (``.elapsed``): starts the next restart when due."""
        if self.done + len(self.failures) >= len(self.at) or progress.elapsed < self.at[self.done + len(self.failures)]:
            return
        if not self._busy.acquire(blocking=False):
            return  # one restart at a time
        self._thread = threading.Thread(target=self._restart, args=(progress.elapsed,), name="server-restart",
                                        daemon=True)
        self._thread.start()

    def _restart(self, elapsed: float) -> None:
        try:
            t0 = time.monotonic()
            pgserver.restart_server(self.server)
            self.done += 1
            if self._say is not None:
                self._say(f"server killed (pg_ctl stop -m immediate) and started again at {elapsed:.1f} s of the "
                          f"run ({time.monotonic() - t0:.1f} s away); restart {self.done} of {len(self.at)}")
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            self.failures.append(str(e))
        finally:
            self._busy.release()

    def join(self, timeout: float = 120.0) -> None:
        """Wait for a restart under way (no more start after the run's end)."""
        self.at = self.at[: self.done + len(self.failures) + (1 if self._busy.locked() else 0)]
        if self._thread is not None:
            self._thread.join(timeout)


def restart_moments(rng: random.Random, count: int, duration: float) -> list[float]:
    """``count`` moments in the middle 80 % of a ``duration``-second run."""
    return sorted(rng.uniform(0.1 * duration, 0.9 * duration) for _ in range(count))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m taskengine.tools.cluster",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    stress_command.add_arguments(parser)
    parser.add_argument("--server-restarts", metavar="K", type=int, default=1,
                        help="kill and restart the server K times during the run (default 1)")
    parser.set_defaults(**DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(["<throwaway server>", *(sys.argv[1:] if argv is None else argv)])
    if args.server_restarts < 0:
        print("cluster: error: --server-restarts must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.count is not None:
        args.duration = None
    args.db = "postgresql://throwaway-server"  # checked as the run will be, before a server is made for it
    try:
        cfg = stress_command.config_from_args(args)
    except ToolError as e:
        print(f"cluster: error: {e.message}", file=sys.stderr)
        return e.exit_code
    try:
        server = pgserver.start_server(netns=bool(args.netns))
    except (pgserver.ServerUnavailable, RuntimeError) as e:
        print(f"cluster: error: cannot start a throwaway PostgreSQL server: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.db = server.create_database()
        say = _say
        say(f"throwaway server on port {server.port} ({server.directory}); database {args.db}")
        duration = cfg.duration if cfg.duration is not None else 60.0
        args.seed = str(cfg.seed)
        restarts = ServerRestarts(server, restart_moments(random.Random(cfg.seed), args.server_restarts, duration),
                                  say)
        status = stress_command.run(args, observe=restarts.observe, after_workload=restarts.join)
        for failure in restarts.failures:
            print(f"cluster: violation: a server restart failed: {failure}", file=sys.stderr)
        say(f"{restarts.done} server restart(s) of {len(restarts.at)} planned; now the replay check, "
            "as a process of its own")
        replayed = subprocess.run([sys.executable, "-m", "taskengine", "replay", args.db], check=False)
        ok = status == EXIT_OK and replayed.returncode == 0 and not restarts.failures
        say("OK: no violations" if ok else "FAILED")
        if status == EXIT_USAGE:
            return EXIT_USAGE
        return EXIT_OK if ok else EXIT_FAILED
    finally:
        pgserver.stop_server(server)


def _say(line: str) -> None:
    print(f"cluster: {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
