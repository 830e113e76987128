"""An engine inside a node process: a graceful stop on SIGTERM/SIGINT (also as PID 1 of a PID
namespace, as in a container without an init process), a warning at exit for an engine never
closed, and EngineClosed (never pykka's ActorDeadError) after pykka.ActorRegistry.stop_all()."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import pytest

from engine_helpers import WAIT, Child, Gate, Recorder, check_db, close_bounded
from taskengine import Engine, EngineClosed, ExecutionStatus, Hooks, InvalidArgument

S = ExecutionStatus
NO_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
LIFECYCLE_LOG = "LOG taskengine.actors.lifecycle WARNING"


# ----------------------------------------------------------------------------------------------
# pykka.ActorRegistry.stop_all()
# ----------------------------------------------------------------------------------------------

#: every public call of an engine, made on a task "t" with one finished execution ``eid``
CALLS: dict[str, Callable[[Engine, str, Path], Any]] = {
    "register_job": lambda e, eid, tmp: e.register_job("other", lambda ctx: None),
    "create_task": lambda e, eid, tmp: e.create_task("u", job="rec"),
    "create_task exist_ok": lambda e, eid, tmp: e.create_task("t", job="rec", exist_ok=True),
    "list_tasks": lambda e, eid, tmp: e.list_tasks(),
    "prune": lambda e, eid, tmp: e.prune("t", keep_last=0),
    "serve_status": lambda e, eid, tmp: e.serve_status(),
    "atrigger": lambda e, eid, tmp: asyncio.run(e.atrigger("t")),
    "await_execution": lambda e, eid, tmp: asyncio.run(e.await_execution("t", eid, timeout=WAIT)),
    "get_task": lambda e, eid, tmp: e.get_task("t"),
    "next_index": lambda e, eid, tmp: e.next_index("t"),
    "delete_task": lambda e, eid, tmp: e.delete_task("t"),
    "trigger": lambda e, eid, tmp: e.trigger("t"),
    "trigger blocking": lambda e, eid, tmp: e.trigger("t", blocking=True, timeout=WAIT),
    "trigger_future": lambda e, eid, tmp: e.trigger_future("t").get(timeout=WAIT),
    "trigger_future blocking": lambda e, eid, tmp: e.trigger_future("t", blocking=True).get(timeout=WAIT),
    "get_execution": lambda e, eid, tmp: e.get_execution("t", eid),
    "get_execution unknown": lambda e, eid, tmp: e.get_execution("t", NO_ID),
    "wait": lambda e, eid, tmp: e.wait("t", eid, timeout=WAIT),
    "list_executions": lambda e, eid, tmp: e.list_executions("t"),
    "cancel": lambda e, eid, tmp: e.cancel("t", eid),
    "backup": lambda e, eid, tmp: e.backup(tmp / "copy"),
    "stats": lambda e, eid, tmp: e.stats(),
    "close_on_signals": lambda e, eid, tmp: e.close_on_signals(timeout=1.0),
    "add_hooks": lambda e, eid, tmp: e.add_hooks(Hooks()),
    "remove_hooks": lambda e, eid, tmp: e.remove_hooks(Hooks()),
}
#: public names that are not calls on an open engine
NOT_CALLS = {"open", "close"}


def test_the_stop_all_test_covers_every_public_call() -> None:
    public = {n for n in dir(Engine) if not n.startswith("_")} - NOT_CALLS
    covered = {name.split(" ")[0] for name in CALLS}
    assert public == covered, f"add the new public calls to CALLS: {sorted(public - covered)}"


@pytest.fixture
def stopped_engine(make_engine: Any, db_path: str) -> tuple[Engine, str]:
    """An engine with task "t" and one finished execution, whose actors stop_all() stopped."""
    engine = make_engine(db_path, jobs={"rec": Recorder()})
    engine.create_task("t", job="rec")
    done = engine.trigger("t", blocking=True, timeout=WAIT)
    pykka.ActorRegistry.stop_all()
    return engine, done.id


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_call_after_stop_all_raises_engine_closed(
    stopped_engine: tuple[Engine, str], tmp_path: Path, call: str
) -> None:
    engine, eid = stopped_engine
    with pytest.raises(EngineClosed, match="stopped from outside"):
        CALLS[call](engine, eid, tmp_path)
    close_bounded(engine)  # close() still returns, and the database is closed
    with pytest.raises(EngineClosed):
        CALLS[call](engine, eid, tmp_path)


def gated_engine(make_engine: Any, db_path: str) -> tuple[Engine, Gate, Any, Any]:
    """One executor, held by the running execution; a second execution queued behind it."""
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    running = engine.trigger("t")
    assert gate.wait_calls(1)
    return engine, gate, running, engine.trigger("t")


def wait_in_thread(engine: Engine, execution_id: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(engine.wait("t", execution_id))  # no timeout: only the engine can end it
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    waiter = threading.Thread(target=run, daemon=True)
    waiter.start()
    return waiter, outcome


@pytest.mark.timeout(60)
def test_stop_all_runs_the_queue_out_then_the_engine_is_closed(make_engine: Any, db_path: str) -> None:
    """stop_all() stops the actors last started first: the executor takes what is queued before
    it stops (so the waiter sees its execution finish), then the pool's stop closes the engine."""
    engine, gate, running, queued = gated_engine(make_engine, db_path)
    waiter, outcome = wait_in_thread(engine, queued.id)
    stopper = threading.Thread(target=pykka.ActorRegistry.stop_all, daemon=True)
    stopper.start()
    gate.release()
    for t in (stopper, waiter):
        t.join(WAIT)
        assert not t.is_alive()
    assert outcome[0].status is S.SUCCESS and outcome[0].id == queued.id
    with pytest.raises(EngineClosed, match="stopped from outside"):
        engine.trigger("t")
    close_bounded(engine)
    t = check_db(db_path, allow_live=False)["t"]
    assert [t.records[i].status for i in t.indexes()] == [S.SUCCESS, S.SUCCESS]


@pytest.mark.timeout(60)
def test_stop_all_not_blocking_wakes_waiters_and_loses_nothing(make_engine: Any, db_path: str) -> None:
    """stop_all(block=False) stops the pool while a job runs: a waiter on the queued execution gets
    EngineClosed instead of waiting forever (the job is still held); the queued execution stays
    PENDING on disk and runs at the next open; the running one, whose result came after its
    counter actor stopped, is finished as interrupted."""
    engine, gate, running, queued = gated_engine(make_engine, db_path)
    waiter, outcome = wait_in_thread(engine, queued.id)
    stops = pykka.ActorRegistry.stop_all(block=False)
    waiter.join(WAIT)
    assert not waiter.is_alive(), "wait() on a queued execution hung after stop_all()"
    assert isinstance(outcome[0], EngineClosed), outcome
    gate.release()
    for stop in stops:
        stop.get(timeout=WAIT)
    close_bounded(engine)

    t = check_db(db_path)["t"]
    assert {r.id: r.status for r in t.records.values()} == {running.id: S.RUNNING, queued.id: S.PENDING}
    rec = Recorder()
    again = make_engine(db_path, jobs={"gate": rec})
    assert again.wait("t", queued.id, timeout=WAIT).status is S.SUCCESS
    assert again.get_execution("t", running.id).status is S.FAILED
    assert rec.ids() == [queued.id]


# ----------------------------------------------------------------------------------------------
# the warning at exit
# ----------------------------------------------------------------------------------------------

EXIT_SCRIPT = """
import logging, sys
from taskengine import Engine
logging.basicConfig(stream=sys.stdout, format="LOG %(name)s %(levelname)s %(message)s")
kept = Engine.open(sys.argv[1] + "/kept", jobs={})
closed = Engine.open(sys.argv[1] + "/closed", jobs={})
closed.close()
with Engine.open(sys.argv[1] + "/with", jobs={}):
    pass
print("END")
"""


@pytest.mark.timeout(60)
def test_an_engine_never_closed_is_reported_at_exit(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=WAIT, check=True).stdout
    warnings = [line for line in out.splitlines() if "never closed" in line]
    assert warnings == [
        f"{LIFECYCLE_LOG} the engine at {tmp_path}/kept was never closed: executions still running are "
        "finished as FAILED (interrupted) at its next open; call close() or use 'with Engine.open(...)'"
    ], out
    assert out.splitlines().index(warnings[0]) > out.splitlines().index("END")


# ----------------------------------------------------------------------------------------------
# close_on_signals: real signals to a real node process
# ----------------------------------------------------------------------------------------------


def start_node(db_path: str, mode: str, timeout: float, prefix: tuple[str, ...] = ()) -> tuple[Child, int]:
    """The node (tests/signal_child.py) once its first execution runs; and the pid to signal."""
    child = Child("signal_child.py", db_path, mode, str(timeout), prefix=prefix)
    pid = int(child.expect("PID ").split()[1])
    child.expect("RUNNING 0")
    return child, (child.proc.pid if not prefix else namespace_init(child.proc.pid, pid))


def namespace_init(wrapper: int, pid_inside: int) -> int:
    """The host pid of the wrapper's child, which must be PID 1 of its own PID namespace."""
    children = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
    assert len(children) == 1, children
    nspid = next(line for line in Path(f"/proc/{children[0]}/status").read_text().splitlines()
                 if line.startswith("NSpid:")).split()[1:]
    assert pid_inside == 1 and nspid[-1] == "1", f"not PID 1 of its namespace: NSpid {nspid}"
    return int(children[0])


def expect_all(child: Child, lines: list[str]) -> None:
    missing = set(lines)
    while missing:
        line = child.readline()
        child.seen.append(line)
        missing.discard(line)


def release_job(child: Child) -> None:
    assert child.proc.stdin is not None
    child.proc.stdin.write("go\n")
    child.proc.stdin.flush()


def exit_status(child: Child) -> int:
    try:
        return child.proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        child.kill9()
        raise AssertionError(f"the node did not exit; its output: {child.stderr()}") from None


def graceful_stop(db_path: str, mode: str, sig: signal.Signals, prefix: tuple[str, ...] = (),
                  again: bool = False) -> None:
    """Signal the node while its job runs; it starts closing, waits for the job, then exits
    with 128 + signum; the job's execution is SUCCESS and the queued one PENDING on disk.
    ``again``: a second signal while it closes changes nothing."""
    child, pid = start_node(db_path, mode, WAIT, prefix)
    try:
        os.kill(pid, sig)
        expect_all(child, [  # in either order: the main thread's own close may start first
            f"{LIFECYCLE_LOG} {sig.name}: closing 1 engine(s), then the process exits with status {128 + sig}",
            "LOG taskengine.actors.pool INFO closing: waiting for 1 running job(s); 1 queued execution(s) "
            "stay PENDING for the next open",
        ])
        if again:
            os.kill(pid, sig)
            os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT)
        release_job(child)  # only now: the close must wait for it
        child.expect(f"LOG taskengine.actors.engine INFO engine at {db_path} closed")
        assert exit_status(child) == 128 + sig
    finally:
        child.kill9()
    t = check_db(db_path)["t"]
    assert [t.records[i].status for i in t.indexes()] == [S.SUCCESS, S.PENDING]
    assert t.records[0].result == {"index": 0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mode", "sig"), [("with", signal.SIGTERM), ("bare", signal.SIGTERM),
                                           ("with", signal.SIGINT), ("bare", signal.SIGINT)])
def test_a_signal_closes_the_engine_gracefully(db_path: str, mode: str, sig: signal.Signals) -> None:
    graceful_stop(db_path, mode, sig)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["with", "bare"])
def test_more_signals_while_closing_do_not_cut_the_close_short(db_path: str, mode: str) -> None:
    graceful_stop(db_path, mode, signal.SIGTERM, again=True)


@pytest.mark.timeout(60)
def test_without_the_handler_sigterm_kills_the_node_mid_job(db_path: str) -> None:
    """What close_on_signals changes: Python's default ends the process at once."""
    child, pid = start_node(db_path, "nohandler", WAIT)
    try:
        os.kill(pid, signal.SIGTERM)
        assert exit_status(child) == -signal.SIGTERM
    finally:
        child.kill9()
    t = check_db(db_path)["t"]
    assert [t.records[i].status for i in t.indexes()] == [S.RUNNING, S.PENDING]


@pytest.mark.timeout(60)
def test_a_job_that_outlives_the_timeout_does_not_hold_up_the_exit(make_engine: Any, db_path: str) -> None:
    child, pid = start_node(db_path, "with", 0.5)
    try:
        os.kill(pid, signal.SIGTERM)
        assert exit_status(child) == 143  # the job never returns: its stdin stays open
    finally:
        child.kill9()
    assert any("jobs still running after" in line for line in iter_output(child)), child.stderr()
    engine = make_engine(db_path, jobs={"hold": Recorder()})
    assert [ex.status for ex in engine.list_executions("t")][0] is S.FAILED  # interrupted


def iter_output(child: Child) -> list[str]:
    lines = []
    while not child.lines.empty():
        line = child.lines.get_nowait()
        if line is not None:
            lines.append(line)
    return lines


# ----------------------------------------------------------------------------------------------
# as PID 1 of a PID namespace (a container without an init process)
# ----------------------------------------------------------------------------------------------

UNSHARE = ("unshare", "--fork", "--pid", "--mount-proc")


def unshare_or_skip() -> None:
    try:
        ok = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=WAIT).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail("`unshare --fork --pid --mount-proc` must work in CI (it runs as root)")
        pytest.skip("cannot make a PID namespace here (`unshare --fork --pid --mount-proc` needs root)")


PID1_CONTROL = """
import signal, sys
signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))
print("READY", flush=True)
while True:
    signal.pause()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("as_pid1", [False, True])
def test_pid1_ignores_an_unhandled_sigterm(as_pid1: bool) -> None:
    """The premise, checked on this kernel: PID 1 of a namespace does not die of SIGTERM unless it
    handles it. The kernel drops (or acts on) SIGTERM while sending it, so a SIGUSR1 sent after
    it finds the process dead or alive for the right reason."""
    if as_pid1:
        unshare_or_skip()
    prefix = UNSHARE if as_pid1 else ()
    proc = subprocess.Popen([*prefix, sys.executable, "-c", PID1_CONTROL], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "READY\n"
        target = namespace_init(proc.pid, 1) if as_pid1 else proc.pid
        os.kill(target, signal.SIGTERM)
        os.kill(target, signal.SIGUSR1)
        status = proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == (7 if as_pid1 else -signal.SIGTERM)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_as_pid1_a_signal_closes_the_engine_gracefully(db_path: str, sig: signal.Signals) -> None:
    unshare_or_skip()
    graceful_stop(db_path, "bare", sig, prefix=UNSHARE)  # unshare exits with its child's status


# ----------------------------------------------------------------------------------------------
# close_on_signals: arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": None}, "timeout must be a number"),
        ({"timeout": -1}, "timeout"),
        ({"signals": ()}, "at least one signal"),
        ({"signals": (signal.SIGUSR1, signal.SIGKILL)}, "SIGKILL cannot be handled"),
        ({"signals": (12345,)}, "signal numbers"),
        ({"signals": ("TERM",)}, "signal numbers"),
    ],
)
def test_close_on_signals_rejects_bad_arguments(make_engine: Any, db_path: str, kwargs: dict[str, Any],
                                                 match: str) -> None:
    engine = make_engine(db_path)
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(InvalidArgument, match=match):
        engine.close_on_signals(**kwargs)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_close_on_signals_only_from_the_main_thread(make_engine: Any, db_path: str) -> None:
    engine = make_engine(db_path)
    box: list[BaseException] = []

    def call() -> None:
        try:
            engine.close_on_signals(signals=(signal.SIGUSR2,))
        except BaseException as e:  # noqa: BLE001
            box.append(e)

    t = threading.Thread(target=call)
    t.start()
    t.join(WAIT)
    assert isinstance(box[0], InvalidArgument) and "main thread" in str(box[0])

