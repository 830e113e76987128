"""Several node processes on one PostgreSQL database (contract §3 across all of them, §8).

Every scenario is a run of ``taskengine stress URL --nodes N`` (``taskengine.tools.stress.driver``):
real node processes, each an engine with a node id of its own, SIGKILLed, replaced and paused
(SIGSTOP past the lease, then SIGCONT) by the run's chaos loop, on a real server that one
scenario kills and restarts. Each is checked three ways: every acknowledgement the nodes'
clients printed against the database (same id at the same index, finished; unique, gap-free and
ordered per caller), the replay check, and the job-run marker files (nothing ran twice, no job
cut by a kill or a pause ended SUCCESS).

Sized for CI (2 cores, the suite on three Pythons): each run is a few seconds with a few
clients per node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pg import PgServer, running_server
from taskengine.tools.cluster import ServerRestarts
from taskengine.tools.stress.driver import StressConfig, execute
from taskengine.tools.stress.report import StressReport
from taskengine.tools.stress.workload import Settings

pytestmark = pytest.mark.timeout(180)

MANY = 3


def _run(url: str, **kwargs: Any) -> StressReport:
    kwargs.setdefault("nodes", MANY)
    kwargs.setdefault("clients", 3)
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("lease", 1.0)
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("final_timeout", 60.0)
    report = execute(StressConfig(db=url, **kwargs))
    assert report.violations == [], "\n".join(report.render())
    assert report.replay["ok"] and report.replay["violations"] == 0
    assert report.replay["pending"] == report.replay["running"] == 0
    assert report.markers is not None and report.markers.checked > 0
    assert report.final.checked == report.acknowledged > 0
    return report


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own: it is killed and restarted."""
    with running_server() as server:
        yield server


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seed", "abc"], "--seed must be a whole number, not 'abc'"),  # a ValueError traceback
        (["--duration", "abc"], "--duration must be a number of seconds, not 'abc'"),  # the same
        (["--duration", "-1"], "--duration must be a number of seconds between 0.1 and 86400, not -1"),
        (["--nodes", "0"], "--nodes must be between 1 and 32, not 0"),
    ],
)
def test_cluster_options_are_checked_before_a_server_is_made(argv: list[str], expected: str) -> None:
    """Refused in one line, without a server (it was made, the run refused, and replay run on the
    empty database added a second error)."""
    done = subprocess.run([sys.executable, "-m", "taskengine.tools.cluster", *argv], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"cluster: error: {expected}"], done.stderr
    assert done.stdout == ""  # no "throwaway server on port ..."


def test_nodes_needs_a_postgresql_url(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "taskengine", "stress", str(tmp_path / "db"), "--nodes", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "taskengine stress: error: --nodes needs a postgresql:// URL: a LevelDB database belongs to one process"
    ]
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("tasks", [1, 100], ids=["hot-task", "100-tasks"])
def test_nodes_on_one_hot_task_and_on_many_tasks(pg_url: str, tasks: int) -> None:
    """N nodes × a few client threads each, no chaos: unique, gap-free, ordered per caller."""
    report = _run(pg_url, tasks=tasks, clients=4, count=400 if tasks == 1 else 800, duration=None)
    assert report.nodes is not None and report.nodes.started == MANY and report.nodes.kills == 0
    assert report.markers is not None and report.markers.runs >= report.final.success


def test_nodes_killed_mid_run(pg_url: str) -> None:
    """SIGKILLed nodes: their running executions end FAILED interrupted (after their lease, on
    another node, or when their id restarts), their acknowledged PENDING ones run elsewhere, and
    nothing runs twice; the killed nodes are replaced, with their id or a new one. The nodes run
    the engine's default counter actors: two lanes each, as a user's node does."""
    from taskengine.actors.engine import DEFAULT_COUNTER_ACTORS_POSTGRES

    report = _run(pg_url, tasks=8, duration=6.0, crash_every=1.0, pause_share=0.0)
    assert report.counter_actors == DEFAULT_COUNTER_ACTORS_POSTGRES > 1
    assert report.nodes is not None and report.nodes.kills >= 2
    assert report.nodes.restarts + report.nodes.new_nodes == report.nodes.kills


def test_a_node_paused_past_its_lease(pg_url: str) -> None:
    """SIGSTOP while one of its jobs runs, until the server shows the node lost (reaped by
    another node, or its lease run out), then SIGCONT: its late completions are refused (the jobs
    cut by the pause end FAILED interrupted, never SUCCESS), and it writes nothing more."""
    report = _run(pg_url, tasks=8, duration=8.0, crash_every=1.0, pause_share=1.0,
                  settings=Settings(delete_probability=0.0))
    assert report.nodes is not None and report.nodes.pauses >= 1
    assert report.markers is not None and report.markers.running_at_pause >= 1
    assert report.nodes.fenced >= 1


def test_the_server_killed_and_restarted_mid_run(own_server: PgServer) -> None:
    """``pg_ctl stop -m immediate`` and start, twice, while the nodes trigger (and are killed):
    they reconnect, no acknowledged execution is lost or doubled, a commit in doubt is settled."""
    restarts = ServerRestarts(own_server, [2.0, 5.0])
    url = own_server.create_database()
    report = execute(StressConfig(db=url, nodes=MANY, clients=3, workers=2, tasks=8, lease=2.0, seed=11,
                                  duration=8.0, crash_every=3.0, pause_share=0.0, final_timeout=60.0),
                     on_progress=restarts.observe, after_workload=restarts.join)
    assert restarts.failures == []
    assert restarts.done == 2
    assert report.violations == [], "\n".join(report.render())
    assert report.replay["ok"] and report.replay["pending"] == report.replay["running"] == 0


@pytest.mark.timeout(120)
def test_an_execution_left_running_is_reported_with_what_explains_it(pg_url: str) -> None:
    """The final check's failure is printed with what someone needs to find its cause: an
    execution that another node (alive, its lease renewed) keeps RUNNING past the check's time is
    reported with how long the check waited for it, its row (runner, epoch), its live row, the
    nodes table with the server's clock, the sessions in a transaction, and what the supervisor
    did to which node and when; never the URL's password."""
    import threading

    from taskengine import Engine, JobContext
    from taskengine.tools.stress.workload import JOB_NAME, task_ids

    secret = "pw-never-shown-7781"
    url = pg_url.replace("@", f":{secret}@", 1)
    release = threading.Event()
    started = threading.Event()
    holders: list[Engine] = []

    def held(ctx: JobContext) -> dict[str, str]:
        started.set()
        release.wait(60)
        return {"node": "holder"}

    def hold_one() -> None:
        # after the workload, before the checks: a node that keeps one execution running
        holder = Engine.open(url, jobs={JOB_NAME: held}, node_id="holder", node_lease=30.0, workers=1)
        holders.append(holder)
        holder.trigger(task_ids(2)[0], {"held": True})
        assert started.wait(30)

    try:
        report = execute(StressConfig(db=url, nodes=2, clients=2, workers=2, tasks=2, lease=1.0, seed=3,
                                      duration=2.0, crash_every=0.7, pause_share=0.0, final_timeout=3.0,
                                      settings=Settings(delete_probability=0.0)),
                         after_workload=hold_one)
    finally:
        release.set()
        for holder in holders:
            holder.close()
    text = "\n".join([*report.render(), *report.violations])
    assert secret not in text
    # the holder runs one execution, its own or one it recovered (then an acknowledged one: the
    # check's first part gives up on it too, with the time it waited for it)
    unfinished = [v for v in report.violations if "after the engine was reopened" in v]
    assert unfinished and all("the check waited" in v for v in unfinished), text
    assert len({v.split()[1] for v in unfinished}) == 1 and any("still RUNNING" in v for v in unfinished), text
    diagnosis = "\n".join(report.diagnostics)
    assert "unfinished execution" in diagnosis and "the engine reads it as RUNNING" in diagnosis, text
    assert "runner 'holder', runner_epoch 1; its live row: present" in diagnosis, text
    assert "the server's clock:" in diagnosis and "the nodes table" in diagnosis, text
    assert "holder epoch 1 alive" in diagnosis and "stress-check epoch 1 alive" in diagnosis, text
    assert "sessions in a transaction or waiting for a lock:" in diagnosis, text
    assert "what the supervisor did to the nodes" in diagnosis, text
    assert "started stress-node-1.r1" in diagnosis, text
    assert re.search(r"stress-node-\S+ ready \(node 'stress-node-\S+' epoch 1\)", diagnosis), text
    assert "killed stress-node-" in diagnosis and "asking every node to stop" in diagnosis, text
    assert "diagnostics of the executions the final check found unfinished:" in text


@pytest.mark.timeout(120)
def test_the_chaos_begins_once_nodes_that_open_slowly_are_ready(pg_url: str, tmp_path: Path) -> None:
    """On a loaded machine nodes can take longer to open than a short run lasts: the run's
    duration counted from its start (or from the first node ready) and its chaos's events came
    while no node could be paused, so it ended with no pause (or cut) at all. Here every node's
    open waits for the schema's lock, held for longer than the run's duration: the duration and
    the chaos begin once every node is ready, and the pause it was asked for happens."""
    import threading

    import psycopg

    from taskengine import Engine
    from taskengine.tools.stress.check import Ledger
    from taskengine.tools.stress.nodes import NodeSupervisor
    from taskengine.tools.stress.workload import JOBS, ensure_tasks, task_ids

    ids = task_ids(2)
    with Engine.open(pg_url, jobs=JOBS, node_id="setup") as engine:
        ensure_tasks(engine, ids)
    cfg = StressConfig(db=pg_url, nodes=2, clients=2, workers=2, tasks=2, lease=1.0, seed=1, duration=2.0,
                       crash_every=0.5, pause_share=1.0, settings=Settings(delete_probability=0.0))
    ledger = Ledger(ids)
    supervisor = NodeSupervisor(cfg, ledger, str(tmp_path), None, 0.5)
    opening = threading.Event()  # never set: the nodes' opening is slow by this long, not waiting for it
    with psycopg.connect(pg_url) as lock:
        lock.execute("SELECT pg_advisory_xact_lock(hashtext('taskengine.schema'))")  # what Engine.open takes
        run = threading.Thread(target=supervisor.run)
        run.start()
        opening.wait(2 * 2.0 + 1.0)  # longer than the run's duration, and than the duration after it
        lock.rollback()
    run.join(100)
    assert not run.is_alive()
    history = "\n".join(supervisor.history())
    assert supervisor.counts.pauses >= 1, history
    assert ledger.violations == [], ledger.violations
    assert history.index("every node ready: the run's duration and its chaos begin") < history.index("aiming a pause")


def test_tasks_deleted_and_recreated_while_other_nodes_trigger_them(pg_url: str) -> None:
    """Two tasks, one of them deleted and re-created again and again by the clients of every node while
    every node triggers it and runs its jobs: what a deletion began after may be gone (or
    CANCELLED), everything else is held to its index."""
    report = _run(pg_url, tasks=2, clients=4, duration=6.0, settings=Settings(delete_probability=0.1))
    assert report.deletions >= 10


def test_the_marker_check_finds_a_double_run_and_a_cut_job_that_succeeded(pg_url: str, tmp_path: Path) -> None:
    """The check itself can fail: an execution whose run is marked on two node processes ran
    twice, and a SUCCESS whose job a kill (or a pause past the lease) had cut was written by a node
    that should have been unable to."""
    from taskengine import Engine
    from taskengine.tools.common import open_database
    from taskengine.tools.stress.markers import check_marks, marked_jobs, marker_path

    with Engine.open(pg_url, jobs=marked_jobs(marker_path(str(tmp_path), "a"), "a")) as engine:
        engine.create_task("t", job="stress")
        done = [engine.trigger("t", {}, blocking=True, timeout=30) for _ in range(3)]
    assert [ex.status.name for ex in done] == ["SUCCESS"] * 3

    def check(killed: list[str], paused: dict[str, list[int]]) -> list[str]:
        found: list[str] = []
        with open_database(pg_url) as store:
            report = check_marks(store, str(tmp_path), killed, paused, found.append)
        assert report.checked == 3
        return found

    assert check([], {}) == []
    Path(marker_path(str(tmp_path), "b")).write_text(f"S {done[0].id}\nE {done[0].id}\n")
    Path(marker_path(str(tmp_path), "c")).write_text(f"S {done[1].id}\n")
    Path(marker_path(str(tmp_path), "d")).write_text(f"S {done[2].id}\n")
    found = check(["c"], {"d": [len(f"S {done[2].id}\n")]})
    assert any(f"{done[0].id}" in v and "ran 2 times (on a, b)" in v for v in found), found
    assert any(f"{done[1].id}" in v and "running on c when it was SIGKILLed, yet it ended SUCCESS" in v
               for v in found), found
    assert any(f"{done[2].id}" in v and "paused past its lease, yet it ended SUCCESS" in v for v in found), found


def test_a_node_cut_off_by_a_network_namespace() -> None:
    """The stronger form of the pause: each node in a network namespace of its own, one cut off
    (its link down: packets dropped, the process and its jobs running on) until the server shows it
    lost, then let back. Every job it had not ended when it was cut must end FAILED interrupted:
    its late completions are refused, it writes nothing more. Needs root and iproute2 (CI is root);
    a machine where namespaces cannot be made (a container without CAP_NET_ADMIN) skips, saying so."""
    from taskengine.tools.stress import netns

    try:
        netns.check()
    except netns.NetnsUnavailable as e:
        pytest.skip(f"network namespaces cannot be made here: {e}")
    with running_server(netns=True) as server:
        report = _run(server.create_database(), tasks=8, duration=8.0, crash_every=1.0, pause_share=1.0,
                      netns=True, cut_share=1.0, settings=Settings(delete_probability=0.0), seed=5)
    assert report.nodes is not None and report.nodes.cuts >= 1
    assert report.markers is not None and report.markers.running_at_cut >= 1
    assert report.nodes.fenced >= report.nodes.cuts


_CUT_NODE = """
import os, sys
from taskengine import Engine
from taskengine.errors import EngineError

engine = Engine.open(sys.argv[1], jobs={"j": lambda ctx: None}, node_id="cut", node_lease=1.0)
engine.create_task("t", job="j")
engine.trigger("t")
print("ready", flush=True)
sys.stdin.readline()  # its link is down now
try:
    while True:
        engine.trigger("t")
except EngineError as e:
    print("failed", type(e).__name__, str(e).splitlines()[0], flush=True)
os._exit(0)  # a close would try the server again
"""


def test_a_node_cut_off_and_left_so_finds_out_without_tcp_settings_of_its_own() -> None:
    """A node whose network goes silent (its link down: no reset, no answer) and stays so. Its
    URL sets no TCP option: the engine's own (``pg_common.tcp_settings``, from the lease) make the
    write stuck on the dead link fail, and its calls fail with an engine error while it is still
    cut off. Without them the write waits for TCP to give up (about 15 minutes) and the call with
    it: this test then fails at its bound. Needs root and iproute2, as the namespace test above."""
    from taskengine.tools.stress import netns

    try:
        netns.check()
    except netns.NetnsUnavailable as e:
        pytest.skip(f"network namespaces cannot be made here: {e}")
    place = netns.Place(2, tag=f"c{os.getpid() % 100000}")
    with running_server(netns=True) as server:
        url = server.create_database()
        try:
            place.create()
            node = subprocess.Popen([*place.prefix(), sys.executable, "-c", _CUT_NODE, place.url(url)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert node.stdout is not None and node.stdin is not None
                first = node.stdout.readline().strip()
                if first != "ready":  # it failed before the cut: its error, not a wait on its stdin
                    node.kill()
                    pytest.fail(f"the node did not start: {first} {node.communicate(timeout=30)[1]}")
                place.cut()  # and never let back: what it finds out, it finds out cut off
                node.stdin.write("go\n")
                node.stdin.flush()
                out, err = node.communicate(timeout=120)
            finally:
                node.kill()
                node.wait()
            assert out.startswith("failed "), out + err
        finally:
            place.remove()


def test_places_of_runs_at_once_each_reach_the_host() -> None:
    """Two runs at once on one machine (two suites) each make a place for slot 1: each gets a
    subnet of its own, so each reaches the host, and a cut of one leaves the other's link alone.
    (Both had 10.231.1.0/30: the host sent the replies to both through one of the two links, the
    other place was cut off from its start, and nodes of one run lost their leases to the other's
    cuts: failures of every kind, none of the engine's.)"""
    import socket

    from taskengine.tools.stress import netns

    try:
        netns.check()
    except netns.NetnsUnavailable as e:
        pytest.skip(f"network namespaces cannot be made here: {e}")

    def reaches(place: netns.Place, port: int) -> bool:
        probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"
        done = subprocess.run([*place.prefix(), sys.executable, "-c", probe, place.host_addr, str(port)],
                              capture_output=True, timeout=30)
        return done.returncode == 0

    places = [netns.Place(1, tag=f"t{os.getpid() % 10000}x{i}") for i in range(2)]
    with socket.create_server(("0.0.0.0", 0), backlog=16) as listener:
        port = listener.getsockname()[1]
        try:
            for place in places:
                place.create()
            assert places[0].host_addr != places[1].host_addr
            assert [reaches(p, port) for p in places] == [True, True]
            places[0].cut()
            assert [reaches(p, port) for p in places] == [False, True]
            places[0].restore()
            places[1].cut()
            assert [reaches(p, port) for p in places] == [True, False]
        finally:
            for place in places:
                place.remove()


@pytest.mark.timeout(60)
def test_the_final_check_reports_its_own_engine_losing_its_lease(pg_url: str) -> None:
    """The check's engine is a node with the run's short lease: on a loaded machine it can lose it
    too, and every wait then raises WriteFailed, which came out of the check (and out of
    ``taskengine stress``) as a traceback. Now each execution it could not wait for is a violation
    with its diagnostics, which show the check's node with its lease overdue."""
    import threading
    import time

    import psycopg

    from taskengine import Engine, JobContext
    from taskengine.tools.stress.check import Ledger, final_check
    from taskengine.tools.stress.diagnose import Unfinished

    release = threading.Event()

    def held(ctx: JobContext) -> dict[str, str]:
        release.wait(30)
        return {}

    engine = Engine.open(pg_url, jobs={"held": held}, node_id="stress-check", node_lease=1.0, workers=1)
    try:
        engine.create_task("t", job="held")
        ex = engine.trigger("t", {})
        deadline = time.monotonic() + 30
        while engine.get_execution("t", ex.id).status.name != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling the engine's record: the job gives no other sign
        with psycopg.connect(pg_url, autocommit=True) as conn:  # its lease lapses, as on a stalled machine
            conn.execute("UPDATE taskengine.nodes SET lease_until = clock_timestamp() - interval '1 second' "
                         "WHERE id = 'stress-check'")
        while engine.stats().write_failure is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)  # the heartbeat finds it at its next renewal
        ledger = Ledger(["t"])
        ledger.ingest({"ev": "ack", "t": "t", "g": 0, "id": ex.id, "i": 0, "b": False, "lat": 0.001, "k": None,
                       "st": None, "f": False})
        unfinished = Unfinished(pg_url)
        final_check(engine, ledger, ["t"], timeout=5.0, diagnose=unfinished)
    finally:
        release.set()
        engine.close()
    assert ledger.violations and all("could not wait for it: WriteFailed" in v for v in ledger.violations), \
        ledger.violations
    diagnosis = "\n".join(unfinished.render())
    assert "runner 'stress-check', runner_epoch 1" in diagnosis, diagnosis
    assert re.search(r"stress-check epoch 1 alive, lease until \S+ \(-", diagnosis), diagnosis
