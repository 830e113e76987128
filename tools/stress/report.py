"""The report of a ``taskengine stress`` run: an attrs record, latency percentiles, rendering.

Nothing here prints: :meth:`StressReport.render` returns the lines and the front-end
(``taskengine.tools.stress.command.run``) writes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0 < p <= 100) of already sorted values, nearest-rank method:
    the smallest value such that at least ``p`` percent of the values are <= it."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], not {p}")
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@attrs.frozen
class Latency:
    """Latency percentiles in milliseconds of ``count`` samples (all None when there are none)."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        """Summarise samples given in seconds."""
        values = sorted(seconds)
        if not values:
            return cls()
        ms = [v * 1000.0 for v in values]
        return cls(
            count=len(ms),
            p50=round(percentile(ms, 50.0), 3),
            p95=round(percentile(ms, 95.0), 3),
            p99=round(percentile(ms, 99.0), 3),
            max=round(ms[-1], 3),
            mean=round(sum(ms) / len(ms), 3),
        )

    def render(self) -> str:
        if not self.count:
            return "no samples"
        return (
            f"p50 {self.p50:.1f}  p95 {self.p95:.1f}  p99 {self.p99:.1f}  max {self.max:.1f} ms"
            f"  (mean {self.mean:.1f} ms, {self.count} samples)"
        )


@attrs.frozen
class FinalCheck:
    """What the final check found for the acknowledged executions (see ``taskengine.tools.stress.check``)."""

    #: acknowledged executions looked up in the reopened engine
    checked: int = 0
    success: int = 0
    #: FAILED by the workload's planned job failures
    failed: int = 0
    #: FAILED because a crash interrupted them while running
    interrupted: int = 0
    #: of a task deleted after the acknowledgement: gone (or CANCELLED), as allowed
    deleted: int = 0
    #: executions left PENDING or RUNNING on disk by the last stop, recovered by the reopened engine
    live_at_reopen: int = 0
    #: acknowledged executions that had not finished when the check looked them up (waited for)
    waited: int = 0
    #: idempotency keys re-triggered after the run that returned the same execution
    idempotent_rechecked: int = 0
    #: unfinished executions nobody was told about (their trigger was cut by a crash) that
    #: the check also waited for, so the database is left with nothing live
    unacknowledged_waited: int = 0
    seconds: float = 0.0


@attrs.define
class StressReport:
    """Everything a stress run measured and found. ``violations`` must be empty."""

    db: str
    mode: str  # "in-process" or "crash"
    clients: int
    tasks: int
    workers: int
    seed: int
    counter_actors: int = 1
    #: seconds the workload ran (restarts included), not counting the final check
    elapsed: float = 0.0
    #: distinct executions whose trigger was answered to a client
    acknowledged: int = 0
    acknowledged_nonblocking: int = 0
    acknowledged_blocking: int = 0
    #: trigger acknowledgement latency of non-blocking triggers (index durable)
    ack_latency: Latency = attrs.Factory(Latency)
    #: trigger-to-finished latency of blocking triggers
    blocking_latency: Latency = attrs.Factory(Latency)
    #: SIGKILLs of the engine's process that were survived (crash mode)
    crashes: int = 0
    #: of which hit the engine's process before it was ready (while opening / recovering)
    startup_crashes: int = 0
    #: replay checks run on the database files right after a kill, before the restart
    crash_replays: int = 0
    deletions: int = 0
    idempotent_retries: int = 0
    #: triggers refused with TaskNotFound while their task was being deleted
    rejected: int = 0
    #: blocking triggers that timed out on the client side (not violations by themselves:
    #: the final check decides whether the execution finished)
    blocking_timeouts: int = 0
    final: FinalCheck = attrs.Factory(FinalCheck)
    #: the totals of ``taskengine.tools.replay.check`` on the database after the run, and its verdict
    replay: dict[str, Any] = attrs.Factory(dict)
    violations: list[str] = attrs.Factory(list)
    #: crash mode: lines the engine's process wrote on stderr (its warnings), and the first few
    engine_log_lines: int = 0
    engine_log: list[str] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def rate(self) -> float:
        """Acknowledged triggers per second of workload."""
        return self.acknowledged / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=True)
        out["ok"] = self.ok
        out["rate"] = round(self.rate, 1)
        out["elapsed"] = round(self.elapsed, 3)
        out["final"]["seconds"] = round(self.final.seconds, 3)
        return out

    def render(self) -> list[str]:
        """The human report, one string per line."""
        f = self.final
        replay = self.replay
        if replay:
            rep = (
                f"{'OK' if replay.get('ok') else 'FAILED'}: {replay.get('tasks', 0)} task(s), "
                f"{replay.get('executions', 0)} execution(s) ({replay.get('pending', 0)} pending, "
                f"{replay.get('running', 0)} running, {replay.get('success', 0)} success, "
                f"{replay.get('failed', 0)} failed, {replay.get('cancelled', 0)} cancelled), "
                f"{replay.get('violations', 0)} violation(s)"
            )
        else:
            rep = "not run"
        lines = [
            f"stress report for {self.db} ({self.mode}: {self.clients} clients, {self.tasks} tasks, "
            f"{self.workers} workers, {self.counter_actors} counter actor{'s' if self.counter_actors != 1 else ''}, "
            f"seed {self.seed})",
            f"  workload time          {self.elapsed:.1f} s",
            f"  executions acknowledged {self.acknowledged} ({self.acknowledged_nonblocking} non-blocking, "
            f"{self.acknowledged_blocking} blocking)",
            f"  acknowledged triggers  {self.rate:.1f} /s",
            f"  trigger ack latency    {self.ack_latency.render()}",
            f"  blocking latency       {self.blocking_latency.render()}",
            f"  crashes survived       {self.crashes}"
            + (
                f" ({self.startup_crashes} during start-up and recovery; replay run on the files after "
                f"{self.crash_replays} of them)"
                if self.mode == "crash"
                else ""
            ),
            f"  task deletions         {self.deletions} (triggers refused meanwhile: {self.rejected})",
            f"  idempotent retries     {self.idempotent_retries} (each must answer the first execution)",
            f"  blocking timeouts      {self.blocking_timeouts}",
            f"  final check            {f.checked} acknowledged executions checked in {f.seconds:.1f} s: "
            f"{f.success} success, {f.failed} failed (planned), {f.interrupted} interrupted, "
            f"{f.deleted} of deleted tasks (gone or cancelled)",
            f"  after reopening        {f.live_at_reopen} unfinished executions recovered; waited for "
            f"{f.waited} acknowledged and {f.unacknowledged_waited} unacknowledged ones; "
            f"{f.idempotent_rechecked} idempotency keys repeated (same execution)",
            f"  replay                 {rep}",
            f"  violations             {len(self.violations)}",
        ]
        if self.engine_log_lines:
            lines.append(f"  engine log (stderr of the engine's process): {self.engine_log_lines} line(s), first ones:")
            lines.extend(f"    {line}" for line in self.engine_log)
        lines.append("OK: no violations" if self.ok else f"FAILED: {len(self.violations)} violation(s)")
        return lines
