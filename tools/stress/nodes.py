"""``taskengine stress URL --nodes N``: N node processes on one PostgreSQL database, and chaos.

Each node is a ``taskengine.tools.stress.child`` process: an engine opened with a node id of its
own and a short lease, and its clients. At random moments (about every ``crash_every`` seconds)
the supervisor either SIGKILLs a node and starts another in its place (half the time with the
same node id: a restart; else a new node id) or SIGSTOPs one for longer than its lease and then
SIGCONTs it: by then the other nodes have finished its running executions as interrupted, and
every write it tries is refused (the node reports that and ends; another takes its place).

What the nodes have in common goes through files: the task book of deletions
(``taskengine.tools.stress.shared``) and a marker file per node process that its jobs write
(``taskengine.tools.stress.markers``), which proves at the end that nothing ran twice and that a
node that lost its lease finished nothing. Before a node is replaced, the supervisor waits until
the server has no connection of the dead process left (each process connects with an
``application_name`` of its own), so nothing of it can still commit.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

import attrs

from ..common import EXIT_USAGE, ToolError
from .check import Ledger
from .diagnose import utc
from .driver import Child, Progress, StressConfig, reached, read_log, tail
from .gate import Gate
from .markers import file_size, marker_path, read_marks
from .netns import NetnsUnavailable, Place
from .report import NodeCounts
from .shared import create_book
from .workload import task_ids

log = logging.getLogger(__name__)

#: what a node's writer says when a server restart kept it away longer than its reconnect deadline
#: (storage.pg_common.RECONNECT_SECONDS): the one way a restart still stops a writer (a write the
#: restart cut is settled and made again, or its turn decided again, once the server is back)
RESTART_GAVE_UP = ("connection lost and not made again", "its outcome cannot be read")
#: seconds the supervisor waits for a dead node's connections to leave the server
GONE_TIMEOUT = 30.0
#: seconds a pause may wait for a job of the node to start (else it pauses anyway)
AIM_SECONDS = 2.0
#: how often a paused node's row is looked at
POLL_SECONDS = 0.1
#: starts in a row that may fail to reach the server (it is being restarted) before that is a violation
START_TRIES = 5
#: seconds the end of a run gives nodes let back after losing their lease to be refused and end
REFUSAL_SECONDS = 30.0
#: seconds the run waits for every node of its start to be ready before its clock starts anyway
READY_SECONDS = 300.0
#: events of the supervisor's record kept (the newest: the end of a run is what a failed final
#: check is about); older ones only counted
HISTORY = 500


def node_id_of(slot: int, generation: int) -> str:
    return f"stress-node-{slot}" if generation == 0 else f"stress-node-{slot}-{generation}"


@attrs.define
class _Node:
    slot: int
    generation: int
    instance: str
    child: Child
    stderr: IO[bytes]
    #: a pause is wanted until then: the node is stopped once one of its jobs runs
    aiming_until: float | None = None
    #: when it was stopped (SIGSTOP), while it is, and its marker file's size then
    paused_at: float | None = None
    pause_size: int = 0
    #: the pause under way or aimed at is a cut off the network (its place's link down), not a SIGSTOP
    cutting: bool = False
    #: while a pause is aimed at: the gate its jobs are held at when they start
    gate: Gate | None = None
    #: it was paused past its lease: refusals from it are expected
    lost_lease: bool = False
    #: earlier starts in this slot that could not reach the server
    tries: int = 0

    @property
    def busy(self) -> bool:
        """Paused, or about to be: the chaos leaves it alone."""
        return self.aiming_until is not None or self.paused_at is not None

    @property
    def node_id(self) -> str:
        return node_id_of(self.slot, self.generation)


class NodeSupervisor:
    """Runs the nodes and the chaos loop until the count or the duration is reached."""

    def __init__(
        self,
        cfg: StressConfig,
        ledger: Ledger,
        workdir: str,
        on_progress: Callable[[Progress], None] | None,
        tick: float,
    ) -> None:
        assert cfg.nodes is not None
        self.cfg = cfg
        self.ledger = ledger
        self.workdir = workdir
        self.on_progress = on_progress
        self.tick = tick
        self.rng = random.Random(cfg.seed)
        self.wake = threading.Event()
        self.counts = NodeCounts(nodes=cfg.nodes, lease=cfg.lease)
        self.book = os.path.join(workdir, "book")
        self.markers = os.path.join(workdir, "markers")
        os.makedirs(self.markers, exist_ok=True)
        create_book(self.book, task_ids(cfg.tasks), ledger.base_generations())
        #: instances SIGKILLed, and each paused instance's marker file size at each pause
        self.killed: list[str] = []
        self.paused: dict[str, list[int]] = {}
        #: each cut instance's marker file size just after each cut
        self.cut: dict[str, list[int]] = {}
        #: with ``netns``: each place's network namespace
        self.places: dict[int, Place] = {}
        self.started = 0.0
        #: ``started`` on the wall clock (the record's times are shown in UTC too)
        self.started_wall = 0.0
        #: what the supervisor did to which node process, and when (``history``): (monotonic, what)
        self._history: deque[tuple[float, str]] = deque(maxlen=HISTORY)
        self._history_dropped = 0
        #: when the run's duration started (``_clock``)
        self.clock_from: float | None = None
        self._server_started: object = None
        self._runs = 0
        self._logs: list[tuple[_Node, IO[bytes]]] = []
        self.log_lines = 0
        self.log_sample: list[str] = []

    # -- the run -------------------------------------------------------------------------

    def finished(self, nodes: list[_Node]) -> bool:
        clock = self._clock(nodes)
        if clock is None and self.cfg.count is None:
            return False  # the duration has not begun
        return reached(self.cfg, self.ledger, self.started if clock is None else clock)

    def _clock(self, nodes: list[_Node]) -> float | None:
        """When the run's duration and its chaos start: once every node of the start is ready
        (its engine open; a node that could not start counts once its new start is ready), or
        None before. The nodes' opening is no part of the chaos: on a loaded machine it can take
        longer than a short run, which then ended (its duration counted from the start, or from
        the first node ready while the others still opened) before the pause or cut it should
        show. Bounded: a node not ready after READY_SECONDS no longer holds the run up."""
        if self.clock_from is None:
            ready = [n.child.ready_at for n in nodes]
            if all(at is not None for at in ready):
                self.clock_from = max(at for at in ready if at is not None)
                self._note("every node ready: the run's duration and its chaos begin", self.clock_from)
            elif time.monotonic() >= self.started + READY_SECONDS:
                self.clock_from = self.started + READY_SECONDS
                self._note(f"not every node ready after {READY_SECONDS:.0f} s: the run's duration and its chaos "
                           "begin all the same", self.clock_from)
        return self.clock_from

    def run(self) -> float:
        assert self.cfg.nodes is not None
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._server_started = self._postmaster_start()
        self.ledger.begin()
        nodes: list[_Node] = []
        try:
            if self.cfg.netns:
                for slot in range(1, self.cfg.nodes + 1):
                    self.places[slot] = Place(slot)
                    self.places[slot].create()
            nodes += [self._start(slot, 0) for slot in range(1, self.cfg.nodes + 1)]
            self._loop(nodes)
            self._finish_pauses(nodes)
        except NetnsUnavailable as e:
            raise ToolError(f"--netns: {e}", EXIT_USAGE) from None
        finally:
            self._stop_all(nodes)
            for place in self.places.values():
                place.remove()
            elapsed = time.monotonic() - self.started
            self._read_logs()
        return elapsed

    def _loop(self, nodes: list[_Node]) -> None:
        """The chaos's events come about every ``crash_every`` seconds from the clock's start
        (``_clock``); one that finds no node it can act on (none alive and ready for a pause)
        waits for one, woken by a node's "ready", rather than being lost."""
        every = self.cfg.crash_every
        next_chaos: float | None = None
        next_tick = time.monotonic() + self.tick
        while not self.finished(nodes):
            self.wake.clear()  # before looking, so a wake-up while we look is not lost
            now = time.monotonic()
            for i, node in enumerate(nodes):
                self._pause_step(node, now, nodes)
                if not node.busy and not node.child.alive():
                    replacement = self._ended(node)
                    if replacement is None:
                        return
                    nodes[i] = replacement
            clock = self._clock(nodes)
            if every is not None and next_chaos is None and clock is not None:
                next_chaos = clock + self.rng.uniform(0.5, 1.5) * every
            if every is not None and next_chaos is not None and now >= next_chaos and self._chaos(nodes):
                next_chaos = time.monotonic() + self.rng.uniform(0.5, 1.5) * every
            if now >= next_tick:
                self._progress()
                next_tick = now + self.tick
            waits = [next_tick - now]
            if any(n.aiming_until is not None for n in nodes):
                waits.append(0.01)
            if any(n.paused_at is not None for n in nodes):
                waits.append(POLL_SECONDS)
            if next_chaos is not None and next_chaos > now:  # one due waits for a node's wake-up
                waits.append(next_chaos - now)
            if clock is None:
                waits.append(self.started + READY_SECONDS - now)
            elif self.cfg.duration is not None:
                waits.append(clock + self.cfg.duration - now)
            self.wake.wait(max(0.001, min(waits)))

    def _pause_step(self, node: _Node, now: float, nodes: list[_Node]) -> None:
        """One look at a pause aimed at or under way: stop (or cut) the node, or let it back once
        the server shows it lost."""
        if node.aiming_until is not None:
            self._aim(node, now)
        elif node.paused_at is not None and self._paused_enough(node, now, nodes):
            self._resume(node)

    def _finish_pauses(self, nodes: list[_Node]) -> None:
        """At the run's end, a pause aimed at or under way is carried through as in the run (the
        node let back once the server shows it lost, then counted), not cut short: on a loaded
        machine the one pause of a short run can begin just before its end, and a pause cut short
        is neither counted nor held to its checks. Bounded by ``_aim`` and ``_paused_enough``."""
        while any(n.busy for n in nodes):
            now = time.monotonic()
            for node in nodes:
                self._pause_step(node, now, nodes)
            aiming = any(n.aiming_until is not None for n in nodes)
            time.sleep(0.01 if aiming else POLL_SECONDS)  # marker files and the server, polled: nothing to wait on

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(time.monotonic() - self.started, self.ledger.acknowledged,
                                      self.counts.kills, self.ledger.violation_count))

    # -- the record ----------------------------------------------------------------------

    def _note(self, what: str, at: float | None = None) -> None:
        """Add ``what`` (it happened ``at``, monotonic, or now) to the record."""
        if len(self._history) == self._history.maxlen:
            self._history_dropped += 1
        self._history.append((time.monotonic() if at is None else at, what))

    def history(self) -> list[str]:
        """The record, oldest first, each line with its time since the run began and in UTC:
        node processes started (and when each was ready, with its epoch), killed, paused or cut
        off (aimed at, stopped, let back), ended by themselves, and stopped at the end."""
        events = list(self._history)
        earliest = min((at for at, _ in events), default=float("-inf")) if self._history_dropped else float("-inf")
        for node, _ in self._logs:
            ready = node.child.ready_at
            if ready is not None and ready >= earliest:
                events.append((ready, f"{node.instance} ready (node {node.node_id!r} epoch {node.child.epoch})"))
        events.sort(key=lambda e: e[0])
        lines = [f"({self._history_dropped} earlier events not kept)"] if self._history_dropped else []
        for at, what in events:
            lines.append(f"{at - self.started:9.3f} s  {utc(self.started_wall + at - self.started)}  {what}")
        return lines

    # -- nodes ---------------------------------------------------------------------------

    def _start(self, slot: int, generation: int) -> _Node:
        assert self.cfg.nodes is not None
        self._runs += 1
        instance = f"{node_id_of(slot, generation)}.r{self._runs}"
        extra = [
            "--node-id", node_id_of(slot, generation),
            "--lease", str(self.cfg.lease),
            "--slot", str(slot),
            "--book", self.book,
            "--markers", marker_path(self.markers, instance),
            "--first-client", str((slot - 1) * self.cfg.clients),
            "--delete-probability", str(self.cfg.settings.delete_probability),
        ]
        env = dict(os.environ, PGAPPNAME=app_name(instance))
        stderr = tempfile.TemporaryFile(prefix="taskengine-stress-node-")
        place = self.places.get(slot)
        child = Child(self.cfg, self.ledger, self.cfg.seed * 7919 + self._runs, stderr, self.wake, extra, env,
                      prefix=() if place is None else place.prefix(),
                      db=None if place is None else place.url(self.cfg.db))
        node = _Node(slot, generation, instance, child, stderr)
        self._logs.append((node, stderr))
        self.counts.started += 1
        self._note(f"started {instance} (pid {child.proc.pid})")
        log.info("started node %s (pid %d)", instance, child.proc.pid)
        return node

    def _replace(self, node: _Node) -> _Node:
        """Another node in the dead one's slot, once nothing of the dead one is left on the
        server: the same node id (a restart) or, half the time, a new one."""
        self._gone_from_server(node.instance)
        if self.rng.random() < 0.5:
            self.counts.restarts += 1
            return self._start(node.slot, node.generation)
        self.counts.new_nodes += 1
        return self._start(node.slot, node.generation + 1)

    def _ended(self, node: _Node) -> _Node | None:
        """A node whose process ended by itself: a fenced one as expected (replaced), else a
        violation (replaced, unless it could not even start: then the run ends, None)."""
        node.child.proc.wait()
        node.child.reader.join()
        self._note(f"{node.instance} ended by itself (exit status {node.child.proc.returncode}; "
                   f"{node.child.refused or node.child.error or 'no refusal or error reported'})")
        if node.child.refused is not None and self._excused(node, [node.child.refused]):
            return self._replace(node)
        error = node.child.error or ""
        if node.child.ready_at is None and error.startswith("StorageError: ") and node.tries < START_TRIES:
            # it could not reach the server (the harness restarts it): start it again once it answers
            log.info("node %s could not start (%s); starting it again", node.instance, error)
            self.counts.start_retries += 1
            self._gone_from_server(node.instance)
            again = self._start(node.slot, node.generation)
            again.tries = node.tries + 1
            return again
        why = node.child.refused or node.child.error or (
            f"exit status {node.child.proc.returncode}; {tail(node.stderr)}")
        self.ledger.add_violation(f"node {node.instance} stopped by itself: {why}")
        if node.child.ready_at is None:
            return None
        return self._replace(node)

    def _excused(self, node: _Node, why: list[str]) -> bool:
        """May this node's writes have been refused (``why``: the refusal, or the errors it
        logged)? Yes if it was paused past its lease, or if the server shows its lease lapsed
        anyway (the server was away longer than a lease: a restart), or if a server restart kept
        its writer away past its reconnect deadline (RESTART_GAVE_UP); else it is a violation."""
        if node.lost_lease:
            self.counts.fenced += 1
            return True
        # a node refused while the server restarts is judged once its row can be read again
        state = self._node_row(node.node_id, wait=GONE_TIMEOUT)
        if state is not None and (not state[0] or state[1]):
            node.lost_lease = True
            self.counts.lapsed += 1
            return True
        if why and all(any(said in line for said in RESTART_GAVE_UP) for line in why) and \
                self._server_started not in (None, self._postmaster_start()):
            # the server was restarted during the run and stayed away longer than the writer waits
            # for it: the writer stops until it is reopened (the contract's failed write)
            node.lost_lease = True
            self.counts.failed_at_restart += 1
            return True
        return False

    def _postmaster_start(self) -> object:
        """When the server started (changes with a restart), or None if it cannot be read now."""
        import psycopg

        try:
            with psycopg.connect(self.cfg.db, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        except psycopg.Error:
            return None
        return None if row is None else row[0]

    def _chaos(self, nodes: list[_Node]) -> bool:
        """One event of the chaos: a kill, or a pause (or cut) aimed at a node. False if no node
        can take it now (none awake; for a pause, none ready that still holds its lease): it is
        then made again later. A pause while another is under way is dropped (one at a time)."""
        awake = [n for n in nodes if not n.busy and n.child.alive()]
        if not awake:
            return False
        node = self.rng.choice(awake)
        if self.rng.random() < self.cfg.pause_share:
            # one pause at a time, and never again of a node let back after losing its lease (it is
            # on its way out, refused): each pause or cut counted is then one node's, fenced once.
            # Nor of a node still opening: a pause there fails its Engine.open, which the node can
            # only report as a failure to start (exit status 2), not as a refusal the run judges
            fresh = [n for n in awake if not n.lost_lease and n.child.ready_at is not None]
            if not fresh:
                return False
            if not any(n.busy for n in nodes):
                node = self.rng.choice(fresh)
                node.aiming_until = time.monotonic() + AIM_SECONDS
                node.cutting = self.cfg.netns and self.rng.random() < self.cfg.cut_share
                self._hold_jobs(node)
                self._note(f"aiming a {'cut' if node.cutting else 'pause'} at {node.instance}")
            return True
        node.child.kill()
        self.ledger.mark("killed")
        self.counts.kills += 1
        self.killed.append(node.instance)
        self._note(f"killed {node.instance} (SIGKILL)")
        log.info("killed node %s", node.instance)
        nodes[nodes.index(node)] = self._replace(node)
        return True

    def _aim(self, node: _Node, now: float) -> None:
        """Once a job of the node is running (held at its gate, ``gate``), or the aim's time is
        up, stop the node (SIGSTOP) or cut it off (its place's link down), note how far its marker
        file went, and then let the held job go: it ends paused, or cut off. Without a gate, a
        pause stops the node before it reads the marker file (``stopped_at_a_job``): a job read
        as running may otherwise end before the stop, and one that starts after the read be
        missed; a cut cannot stop the node, so it reads and then cuts."""
        if not node.child.alive():
            node.aiming_until = None
            self._release_jobs(node)
            self._note(f"{node.instance} ended while a {'cut' if node.cutting else 'pause'} was aimed at it")
            return
        path = marker_path(self.markers, node.instance)
        assert node.aiming_until is not None
        stopped = False
        if node.gate is not None:
            running = node.gate.held()
        elif node.cutting:
            running = bool(read_marks(path).in_progress())
        else:  # a look without stopping it first: most looks find nothing, and need not stop it
            running = stopped = bool(read_marks(path).in_progress()) and stopped_at_a_job(node.child.proc.pid, path)
        if not running and now < node.aiming_until:
            return
        if node.cutting:
            self.places[node.slot].cut()
        elif not stopped:
            os.kill(node.child.proc.pid, signal.SIGSTOP)
            wait_stopped(node.child.proc.pid)
        node.aiming_until = None
        node.paused_at = now
        node.pause_size = file_size(path)  # a job not ended by now ends paused or cut off
        held = node.gate is not None and node.gate.held()
        self._release_jobs(node)
        self._note(f"{'cut off the network' if node.cutting else 'paused (SIGSTOP)'} {node.instance}"
                   + (", a job of it held at the gate" if held else ", no job held at the gate"))
        log.info("cut node %s off the network" if node.cutting else "paused node %s", node.instance)

    def _hold_jobs(self, node: _Node) -> None:
        """Hold the node's jobs at their start from now on (``gate``); where the gate cannot be
        made (a marker path too long for a Unix socket), a job is looked for in the marker file."""
        try:
            node.gate = Gate(marker_path(self.markers, node.instance))
        except OSError as e:
            log.info("no gate for node %s (%s): a pause may miss its running jobs", node.instance, e)

    def _release_jobs(self, node: _Node) -> None:
        if node.gate is not None:
            node.gate.close()
            node.gate = None

    def _paused_enough(self, node: _Node, now: float, nodes: list[_Node]) -> bool:
        """Has the paused node lost its lease, and (with other nodes about) been reaped? Read
        from its row on the server."""
        assert node.paused_at is not None
        held = now - node.paused_at
        if held < self.cfg.lease:
            return False
        if held > 10 * self.cfg.lease + GONE_TIMEOUT:
            self.ledger.add_violation(
                f"node {node.instance} was paused {held:.0f} s and still not found lost on the server")
            return True
        others = len(nodes) > 1
        state = self._node_row(node.node_id)
        if state is None:
            return False
        alive, expired = state
        return not alive if others else expired

    def _node_row(self, node_id: str, wait: float = 0.0) -> tuple[bool, bool] | None:
        """(alive, lease expired) of a node's row, or None if it has none, or if the server
        cannot be reached (it is restarting) within ``wait`` seconds."""
        import psycopg

        deadline = time.monotonic() + wait
        while True:
            try:
                with psycopg.connect(self.cfg.db, autocommit=True, connect_timeout=5) as conn:
                    row = conn.execute("SELECT alive, lease_until < clock_timestamp() FROM taskengine.nodes "
                                       "WHERE id = %s", (node_id,)).fetchone()
                return None if row is None else (bool(row[0]), bool(row[1]))
            except psycopg.Error:
                if time.monotonic() >= deadline:
                    return None  # the server is restarting: look again later
                time.sleep(POLL_SECONDS)  # the server's state, polled: nothing to wait on

    def _resume(self, node: _Node, lost: bool = True) -> None:
        """SIGCONT; ``lost``: after its lease was lost (a pause the checks hold it to), else cut
        short by the run's end (its refusals are excused all the same: its lease may be gone)."""
        node.paused_at = None
        node.lost_lease = True
        if node.cutting:
            node.cutting = False
            self.places[node.slot].restore()
            if lost:
                self.cut.setdefault(node.instance, []).append(node.pause_size)
                self.counts.cuts += 1
            self._note(f"let {node.instance} back on the network" + ("" if lost else " (the run's end)"))
            log.info("let node %s back on the network", node.instance)
            return
        if lost:
            self.paused.setdefault(node.instance, []).append(node.pause_size)
            self.counts.pauses += 1
        os.kill(node.child.proc.pid, signal.SIGCONT)
        self._note(f"resumed {node.instance} (SIGCONT)" + ("" if lost else " (the run's end)"))
        log.info("resumed node %s", node.instance)

    def _await_refusals(self, nodes: list[_Node]) -> None:
        """A node let back after losing its lease ends by itself once a write of it is refused;
        the run's end must not cut that short, or the report cannot tell a fenced node from one
        that was never refused. After a network cut that may take a few seconds: its connections
        wait for TCP to send again. Bounded: a node still running at the deadline is stopped as
        any other, and the checks judge what it wrote."""
        deadline = time.monotonic() + REFUSAL_SECONDS
        for node in nodes:
            if node.lost_lease and node.paused_at is None and node.aiming_until is None:
                try:
                    node.child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.info("node %s was not refused within %.0f s of the run's end", node.instance,
                             REFUSAL_SECONDS)

    def _stop_all(self, nodes: list[_Node]) -> None:
        self._await_refusals(nodes)
        for node in nodes:
            node.aiming_until = None
            self._release_jobs(node)
            if node.paused_at is not None:
                self._resume(node, lost=False)
        self._note("asking every node to stop: " + ", ".join(n.instance for n in nodes))
        for node in nodes:
            node.child.close_stdin()
        for node in nodes:
            stopped = node.child.stop(self.cfg.stop_timeout)
            self._note(f"{node.instance} ended (exit status {node.child.proc.returncode})" if stopped else
                       f"{node.instance} did not stop within {self.cfg.stop_timeout:.0f} s: killed")
            if not stopped:
                self.ledger.add_violation(
                    f"node {node.instance} did not stop within {self.cfg.stop_timeout:.0f} s of being asked; "
                    "it was killed")
            elif node.child.refused is not None and self._excused(node, [node.child.refused]):
                pass
            elif node.child.proc.returncode != 0 or not node.child.closed:
                self.ledger.add_violation(
                    f"node {node.instance} did not close cleanly (exit status {node.child.proc.returncode}; "
                    f"{node.child.refused or node.child.error or tail(node.stderr)})")

    def _read_logs(self) -> None:
        """Every ERROR or CRITICAL line a node logged is a violation, except from a node that
        lost its lease (its refused writes are logged so), or whose only errors say a server
        restart kept its writer away past its reconnect deadline (excused as a refusal is,
        ``_excused``: a node still running at the end says so only in its log)."""
        for node, f in self._logs:
            lines, sample, errors = read_log(f)
            self.log_lines += lines
            for line in sample:
                if len(self.log_sample) < 10 and line not in self.log_sample:
                    self.log_sample.append(f"{node.instance}: {line}")
            if errors and not node.lost_lease and all(any(said in line for said in RESTART_GAVE_UP)
                                                      for line in errors):
                self._excused(node, errors)  # judged by the rule a refusal is
            if not node.lost_lease:
                for line in errors:
                    self.ledger.add_violation(f"node {node.instance} logged an error: {line}")
            f.close()

    def _gone_from_server(self, instance: str) -> None:
        """Wait until the server has no connection of the dead process ``instance`` (they are
        terminated, and a commit of theirs is settled when their server process exits)."""
        import psycopg

        deadline = time.monotonic() + GONE_TIMEOUT
        name = app_name(instance)
        while True:
            try:
                with psycopg.connect(self.cfg.db, autocommit=True, connect_timeout=5) as conn:
                    rows = conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (name,)).fetchall()
                if not rows:
                    return
            except psycopg.Error:
                pass  # the server is restarting (the harness does that): ask again
            if time.monotonic() >= deadline:
                self.ledger.add_violation(
                    f"node {instance}'s connections were still on the server {GONE_TIMEOUT:.0f} s after it died")
                return
            time.sleep(0.05)  # polling the server: it has nothing to wait on


def wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Until every thread of ``pid`` is stopped (SIGSTOP reaches threads running on another core
    a moment later), as /proc shows; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = []
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            return  # gone (or no /proc): nothing more to wait for
        if all(st in ("T", "t", "Z", "X") for st in states):
            return
        time.sleep(0.001)  # polling /proc: there is nothing to block on


def stopped_at_a_job(pid: int, marks: str) -> bool:
    """SIGSTOP the process ``pid``, and once it is stopped read its marker file ``marks``: True,
    the process left stopped, if a job of it is running; else SIGCONT, False. Stopped first, so
    what is read is what the pause holds."""
    os.kill(pid, signal.SIGSTOP)
    wait_stopped(pid)
    if read_marks(marks).in_progress():
        return True
    os.kill(pid, signal.SIGCONT)
    return False


def app_name(instance: str) -> str:
    """The ``application_name`` a node process connects with (libpq's ``PGAPPNAME``)."""
    return ("taskengine-stress-" + instance)[:63]


__all__ = ["NodeSupervisor", "app_name", "stopped_at_a_job", "wait_stopped"]
