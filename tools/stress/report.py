"""The report of a ``taskengine stress`` run: an attrs record, latency percentiles, rendering.

Every line of the rendered report says what it counts without the source: the acknowledged
executions are split into kinds that add up to their total, and the final check says what it
looked up, what it found and what it waited for.

Nothing here prints: :meth:`StressReport.render` returns the lines and the front-end
(``taskengine.tools.stress.command.run``) writes them.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..histogram import Histogram


@attrs.frozen
class Latency:
    """Latency percentiles in milliseconds of ``count`` samples (all None when there are none),
    and the histogram they come from (JSON, seconds), so a report's memory and size stay bounded."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None
    histogram: dict[str, Any] | None = None

    @classmethod
    def of(cls, samples: Histogram) -> Latency:
        """Summarise a histogram of samples in seconds."""
        if not samples.count:
            return cls()

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 3)

        return cls(
            count=samples.count,
            p50=ms(samples.quantile(0.50)),
            p95=ms(samples.quantile(0.95)),
            p99=ms(samples.quantile(0.99)),
            max=ms(samples.max),
            mean=ms(samples.mean),
            histogram=samples.to_json(),
        )

    def render(self) -> str:
        if not self.count:
            return "no samples"
        return (
            f"p50 {self.p50:.1f}  p95 {self.p95:.1f}  p99 {self.p99:.1f}  max {self.max:.1f} ms"
            f"  (mean {self.mean:.1f} ms, {self.count:,} triggers)"
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
    #: removed by retention (--keep-last): below the task's prune mark, so they had finished
    pruned: int = 0
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
class NodeCounts:
    """What the chaos did (part of the report)."""

    nodes: int = 0
    lease: float = 0.0
    #: node processes started, the first N included
    started: int = 0
    kills: int = 0
    #: of the killed or fenced nodes' replacements: with the same node id / with a new one
    restarts: int = 0
    new_nodes: int = 0
    pauses: int = 0
    #: paused nodes whose writes were refused after they resumed (they ended, and were replaced)
    fenced: int = 0
    #: nodes not paused whose lease lapsed all the same (the server away longer than a lease: a
    #: restart), refused every write from then on, and were replaced
    lapsed: int = 0
    #: nodes whose writer stopped after a server restart kept it away longer than its reconnect
    #: deadline (the contract's failed write, refused until reopened), replaced
    failed_at_restart: int = 0
    #: nodes cut off the network (a network namespace's link down) past their lease, then let back
    cuts: int = 0
    #: node starts that could not reach the server (it was being restarted) and were made again
    start_retries: int = 0


@attrs.define
class MarkerReport:
    """What the marker check found (its violations go to the run's ledger)."""

    #: instances (node processes) whose marker files were read
    instances: int = 0
    #: job runs marked, over every instance
    runs: int = 0
    #: executions in the database looked up against the marks
    checked: int = 0
    #: marked runs of executions gone with their deleted task
    gone: int = 0
    #: jobs in progress on an instance when it was SIGKILLed
    running_at_kill: int = 0
    #: jobs in progress on an instance when it was paused (past its lease)
    running_at_pause: int = 0
    #: jobs not ended on an instance when it was cut off the network (past its lease)
    running_at_cut: int = 0


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
    #: the kinds of acknowledged executions; they add up to ``acknowledged``
    acknowledged_nonblocking: int = 0
    acknowledged_blocking: int = 0
    #: blocking triggers that timed out on the client after their execution got an index
    acknowledged_blocking_timed_out: int = 0
    #: executions first made by a repeat with an idempotency key (the first trigger got no answer)
    acknowledged_by_repeat: int = 0
    #: crash mode: mean seconds between SIGKILLs
    crash_every: float | None = None
    #: acknowledged executions over time: {"bin_seconds": width, "counts": [per bin]}
    throughput: dict[str, Any] = attrs.Factory(dict)
    #: seconds since the workload started of each SIGKILL ("killed") and engine ready ("ready")
    events: dict[str, list[float]] = attrs.Factory(dict)
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
    #: the workload's engines' backpressure bound (--max-queued), and the triggers it refused
    max_queued: int | None = None
    queue_full: int = 0
    #: the workload's engines' retention policy (--keep-last)
    keep_last: int | None = None
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
    #: node mode: what the chaos did, and what the marker files proved
    nodes: NodeCounts | None = None
    markers: MarkerReport | None = None
    #: what the final check read about each execution it found unfinished when its time was up
    #: (``taskengine.tools.stress.diagnose``), printed after the report
    diagnostics: list[str] = attrs.Factory(list)

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
        """The human report, one string per line; each line says what it counts."""
        mode = (
            f"crash mode: the engine runs in a child process, SIGKILLed about every {self.crash_every:g} s "
            "and restarted"
            if self.mode == "crash" and self.crash_every
            else "in process"
        )
        if self.nodes is not None:
            n = self.nodes
            mode = f"{n.nodes} node process{'es' if n.nodes != 1 else ''} on one database, lease {n.lease:g} s" + (
                f", one SIGKILLed or paused about every {self.crash_every:g} s" if self.crash_every else "")
        kinds = [
            (self.acknowledged_nonblocking, "non-blocking (answered once the index was durable)"),
            (self.acknowledged_blocking, "blocking (answered once the execution finished)"),
            (self.acknowledged_blocking_timed_out,
             "blocking whose caller timed out after the execution had got an index"),
            (self.acknowledged_by_repeat,
             "first made by a repeat with an idempotency key (the first trigger got no answer)"),
        ]
        shown = [k for k in kinds if k[0]] or kinds[:2]
        pad = " " * 27
        lines = [
            f"stress report for {self.db} ({mode}; {self.clients} clients, {self.tasks} tasks, "
            f"{self.workers} workers, {self.counter_actors} counter actor{'s' if self.counter_actors != 1 else ''}, "
            f"seed {self.seed})",
            f"  workload time            {self.elapsed:.1f} s (restarts included, the final check not)",
            f"  executions acknowledged  {self.acknowledged:,} = {shown[0][0]:,} {shown[0][1]}",
            *(f"{pad}+ {n:,} {what}" for n, what in shown[1:]),
        ]
        if sum(n for n, _ in kinds) != self.acknowledged:
            lines.append(f"{pad}({self.acknowledged - sum(n for n, _ in kinds):,} not in any of these kinds: "
                         "a bookkeeping error of the tool)")
        lines += [
            f"  acknowledged per second  {self.rate:,.1f} (executions acknowledged / workload time)",
            f"  non-blocking latency     {self.ack_latency.render()}; trigger until the index was durable",
            f"  blocking latency         {self.blocking_latency.render()}; trigger until the execution finished",
        ]
        if self.mode == "crash":
            lines.append(
                f"  crashes survived         {self.crashes} SIGKILLs of the engine's process ({self.startup_crashes} "
                f"during its start-up and recovery); the replay check ran on the files after {self.crash_replays} "
                "of them, before the restart"
            )
        lines += self._render_nodes()
        lines += [
            f"  task deletions           {self.deletions:,} (with {self.rejected:,} triggers refused with "
            "TaskNotFound while their task was being deleted, as allowed)",
            f"  idempotent repeats       {self.idempotent_retries:,} operations triggered twice with one "
            "idempotency key; each repeat must answer the first execution",
            f"  blocking timeouts        {self.blocking_timeouts:,} blocking triggers or waits gave up on the "
            "client side (not a violation by itself: the final check decides)",
        ]
        if self.max_queued is not None:
            lines.append(f"  backpressure             {self.queue_full:,} triggers refused with QueueFull (max_queued "
                         f"{self.max_queued:,} per engine), as allowed: they changed nothing")
        lines += self._render_final(pad)
        lines += [
            f"  replay check             {self._render_replay()}",
            f"  violations               {len(self.violations)}",
        ]
        if self.engine_log_lines:
            lines.append(f"  engine log (stderr of the engine's process): {self.engine_log_lines} line(s), first ones:")
            lines.extend(f"    {line}" for line in self.engine_log)
        lines.append("OK: no violations" if self.ok else f"FAILED: {len(self.violations)} violation(s)")
        if self.diagnostics:
            lines.append("diagnostics of the executions the final check found unfinished:")
            lines.extend(f"  {line}" for line in self.diagnostics)
        return lines

    def _render_nodes(self) -> list[str]:
        n, m = self.nodes, self.markers
        if n is None:
            return []
        replaced = n.restarts + n.new_nodes
        lines = [
            f"  nodes                    {n.started} node processes started for {n.nodes} place(s); {n.kills} "
            f"SIGKILLed, {n.pauses} paused past their lease (SIGSTOP)"
            + (f", {n.cuts} cut off the network past their lease" if n.cuts else "")
            + f"; {n.fenced} of those it paused or cut refused every write when let go, and ended"
            + (f"; {n.lapsed} more lost their lease while the server was away, and ended" if n.lapsed else "")
            + (f"; {n.failed_at_restart} stopped writing as the server's restart outlasted their reconnect "
               "deadline, and ended" if n.failed_at_restart else "")
            + f"; {replaced} replacements ({n.restarts} restarts with their node id, {n.new_nodes} with a new one)"
            + (f"; {n.start_retries} starts found the server away and were made again" if n.start_retries else ""),
        ]
        if m is not None:
            lines.append(
                f"  job run markers          {m.runs:,} job runs marked by {m.instances} node processes, checked "
                f"against {m.checked:,} stored executions ({m.gone:,} runs of executions gone with their "
                f"deleted task); {m.running_at_kill} jobs were running at a SIGKILL, {m.running_at_pause} at a "
                f"pause and {m.running_at_cut} at a cut, each held to FAILED interrupted"
            )
        return lines

    def _render_final(self, pad: str) -> list[str]:
        f = self.final
        outcomes = [
            (f.success, "SUCCESS"),
            (f.failed, "FAILED as the workload planned"),
            (f.interrupted, "FAILED as interrupted by a kill"),
            (f.deleted, "gone or CANCELLED with their deleted task"),
            (f.pruned, f"pruned after they finished (keep_last {self.keep_last})"),
        ]
        other = f.checked - sum(n for n, _ in outcomes)
        if other:
            outcomes.append((other, "with a violation (listed below)"))
        shown = [o for o in outcomes if o[0]] or outcomes[:1]
        lines = [
            f"  final check              reopened the engine and looked up each of the {f.checked:,} acknowledged "
            f"executions ({f.seconds:.1f} s):",
            f"{pad}{' + '.join(f'{n:,} {what}' for n, what in shown)}",
        ]
        if f.waited:
            lines.append(f"{pad}({f.waited:,} of them were still unfinished when looked up, and were waited for)")
        lines += [
            f"  left by the last stop    {f.live_at_reopen:,} executions were PENDING or RUNNING on disk; the "
            "reopened engine recovered them",
            f"  never acknowledged       {f.unacknowledged_waited:,} more unfinished executions, whose trigger's "
            "answer a kill or the stop cut off, were waited for until finished",
            f"  idempotency keys         {f.idempotent_rechecked:,} repeated after the run, each answering its "
            "first execution",
        ]
        return lines

    def _render_replay(self) -> str:
        r = self.replay
        if not r:
            return "not run"
        return (
            f"{'OK' if r.get('ok') else 'FAILED'}: {r.get('tasks', 0)} task(s), "
            f"{r.get('executions', 0):,} execution(s) ({r.get('pending', 0)} pending, "
            f"{r.get('running', 0)} running, {r.get('success', 0):,} success, "
            f"{r.get('failed', 0):,} failed, {r.get('cancelled', 0):,} cancelled), "
            f"{r.get('violations', 0)} violation(s)"
        )
