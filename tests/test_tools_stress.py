"""``taskengine stress`` (taskengine.tools.stress): clean runs in process and with
crash injection, the JSON report, one-line usage errors, and checks that the tool really
catches a misbehaving engine."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from taskengine.tools.histogram import Histogram
from taskengine.tools.stress import command as stress
from taskengine.tools.stress.check import Ledger, final_check, pruned_past
from taskengine.tools.stress.driver import StressConfig, execute
from taskengine.tools.stress.report import FinalCheck, Latency, StressReport
from taskengine.tools.stress.workload import JOB_NAME, JOBS, Settings

REPO = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="taskengine stress")
    stress.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_stress(*argv: str) -> int:
    return stress.run(parse(*argv))


KINDS = ("acknowledged_nonblocking", "acknowledged_blocking", "acknowledged_blocking_timed_out",
         "acknowledged_by_repeat")
OUTCOMES = ("success", "failed", "interrupted", "deleted")


def assert_report_adds_up(report: dict[str, Any], text: str) -> None:
    """The kinds of acknowledged executions add up to their total, the final check's outcomes
    to what it checked, and the printed lines say so in numbers a reader can add."""
    assert sum(report[k] for k in KINDS) == report["acknowledged"], {k: report[k] for k in KINDS}
    assert sum(report["final"][k] for k in OUTCOMES) == report["final"]["checked"] == report["acknowledged"]
    assert sum(report["throughput"]["counts"]) == report["acknowledged"]
    assert report["ack_latency"]["count"] == report["acknowledged_nonblocking"]
    assert report["blocking_latency"]["count"] == report["acknowledged_blocking"]
    lines = text.splitlines()
    acked = next(i for i, ln in enumerate(lines) if ln.startswith("  executions acknowledged"))
    total, _, first = lines[acked].split("executions acknowledged", 1)[1].partition("=")
    more = []
    for ln in lines[acked + 1:]:
        if not ln.strip().startswith("+ "):
            break
        more.append(ln.strip().removeprefix("+ "))
    parts = [first, *more]
    assert sum(int(p.split()[0].replace(",", "")) for p in parts) == int(total.replace(",", ""))
    final = next(i for i, ln in enumerate(lines) if ln.startswith("  final check"))
    outcome_sum = sum(int(p.split()[0].replace(",", "")) for p in lines[final + 1].split(" + "))
    assert outcome_sum == report["final"]["checked"]
    # no line that needs the source to decode
    assert "waited for 0 acknowledged" not in text and "unacknowledged ones" not in text


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- whole runs ------------------------------------------------------------------------------


def test_in_process_run_is_clean_and_writes_json(tmp_path: Path, capsys: Any) -> None:
    db, out = str(tmp_path / "db"), tmp_path / "report.json"
    code = run_stress(db, "--clients", "8", "--tasks", "4", "--count", "400", "--seed", "1",
                      "--no-progress", "--json", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "OK: no violations" in captured.out
    assert "acked" not in captured.err  # --no-progress
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["violations"] == []
    assert report["mode"] == "in-process" and report["crashes"] == 0
    assert report["acknowledged"] >= 400
    assert report["acknowledged_nonblocking"] > 0 and report["acknowledged_blocking"] > 0
    assert report["rate"] > 0
    for kind in ("ack_latency", "blocking_latency"):
        lat = report[kind]
        assert lat["count"] > 0
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["idempotent_retries"] > 0
    final = report["final"]
    assert final["checked"] == report["acknowledged"]
    assert final["success"] > 0 and final["failed"] > 0  # the workload has failing jobs
    assert report["replay"]["ok"] is True and report["replay"]["violations"] == 0
    assert report["replay"]["pending"] == 0 and report["replay"]["running"] == 0
    assert_report_adds_up(report, captured.out)


def test_planned_job_failures_are_not_logged_but_others_are(tmp_path: Path, caplog: Any) -> None:
    """The engine logs every failed job with its traceback; a stress run's hundreds of planned
    failures would bury the lines that matter, so the tool hides those (and only those)."""
    with caplog.at_level("WARNING", logger="taskengine"):
        report = execute(StressConfig(db=str(tmp_path / "db"), clients=4, tasks=2, count=300, duration=None,
                                      seed=2))
        assert report.final.failed > 0 and report.ok
        assert not [r for r in caplog.records if "planned failure" in r.getMessage()]
        from taskengine import Engine

        def other(ctx: Any) -> None:
            raise KeyError("not planned")

        with Engine.open(str(tmp_path / "other"), jobs={"other": other}) as engine:
            engine.create_task("t", job="other")
            engine.trigger("t", blocking=True, timeout=30)
    assert [r for r in caplog.records if "KeyError" in r.getMessage()]


def test_in_process_run_with_frequent_deletions(tmp_path: Path) -> None:
    cfg = StressConfig(
        db=str(tmp_path / "db"), clients=8, tasks=4, count=600, duration=None, seed=7,
        settings=Settings(delete_probability=0.08),
    )
    report = execute(cfg)
    assert report.violations == []
    assert report.deletions >= 1
    assert report.final.deleted > 0  # executions removed with their task were allowed to go
    assert report.replay["ok"]


@pytest.mark.parametrize("crash_every", [None, 0.5])
def test_a_run_with_backpressure_counts_refusals_and_checks_the_rest(tmp_path: Path, crash_every: float | None) -> None:
    """--max-queued: the workload's engine (in process, or each child of crash mode) refuses
    triggers over the bound with QueueFull; they are counted, never violations, and every
    acknowledged execution is checked as usual."""
    cfg = StressConfig(db=str(tmp_path / "db"), clients=16, tasks=2, count=400, duration=None, seed=11,
                       crash_every=crash_every, max_queued=1)
    report = execute(cfg)
    assert report.violations == []
    assert report.queue_full > 0
    assert report.final.checked == report.acknowledged > 0
    assert report.replay["ok"]
    assert any("QueueFull" in line for line in report.render())


@pytest.mark.parametrize(("crash_every", "count"), [(None, 500), (0.5, 4000)])
def test_a_run_with_retention_checks_pruned_executions_by_the_prune_mark(
    tmp_path: Path, crash_every: float | None, count: int
) -> None:
    """--keep-last: the workload's engines prune finished executions as they go; an acknowledged
    execution the workload or the final check finds gone is held to the task's prune mark
    (above its index), and its idempotency key is not repeated after the run."""
    cfg = StressConfig(db=str(tmp_path / "db"), clients=8, tasks=2, count=count, duration=None, seed=13,
                       crash_every=crash_every, keep_last=0)
    report = execute(cfg)
    assert report.violations == []
    assert report.final.pruned > 0
    assert report.crashes >= (1 if crash_every else 0)
    assert report.final.checked == report.acknowledged
    assert report.replay["ok"]
    assert any("pruned after they finished" in line for line in report.render())


def test_crash_injected_run_survives_kills(tmp_path: Path, capsys: Any) -> None:
    db, out = str(tmp_path / "db"), tmp_path / "crash.json"
    # three counter actors: tasks of one actor keep running while another is mid-turn at the kill
    plot = tmp_path / "stress.png"
    code = run_stress(db, "--clients", "16", "--tasks", "8", "--duration", "8", "--crash-every", "1.2",
                      "--counter-actors", "3", "--seed", "3", "--no-progress", "--json", str(out),
                      "--plot", str(plot))
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    report = json.loads(out.read_text())
    assert report["mode"] == "crash" and report["counter_actors"] == 3
    assert report["crashes"] >= 2, report
    assert report["violations"] == []
    assert report["acknowledged"] > 0
    assert report["final"]["checked"] == report["acknowledged"]
    assert report["replay"]["ok"] is True
    assert "crashes survived" in captured.out
    assert_report_adds_up(report, captured.out)
    # the picture's data: every kill and every start of an engine, in order, within the run
    killed, ready = report["events"]["killed"], report["events"]["ready"]
    # a child killed before it was ready never said so; the run may end right after a kill
    assert len(killed) == report["crashes"] and len(ready) >= report["crashes"] - report["startup_crashes"]
    assert killed == sorted(killed) and 0 < killed[0] and killed[-1] <= report["elapsed"]
    assert len(report["throughput"]["counts"]) * report["throughput"]["bin_seconds"] >= report["elapsed"] - 0.5
    png = plot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def test_crash_injected_run_until_a_count(tmp_path: Path) -> None:
    cfg = StressConfig(db=str(tmp_path / "db"), clients=8, tasks=4, count=500, duration=None, crash_every=0.5,
                       seed=11)
    report = execute(cfg)
    assert report.violations == []
    assert report.acknowledged >= 500
    assert report.final.checked == report.acknowledged
    assert report.replay["ok"]


def test_cli_subprocess_run(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    proc = subprocess.run(
        [sys.executable, "-m", "taskengine.tools.cli", "stress", db, "--clients", "4", "--tasks", "2", "--count", "150",
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: no violations" in proc.stdout
    assert "executions acknowledged" in proc.stdout
    replay = subprocess.run([sys.executable, "-m", "taskengine.tools.cli", "replay", db], cwd=REPO, capture_output=True,
                            text=True, timeout=100)
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_cli_subprocess_bad_argument_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskengine.tools.cli", "stress", str(tmp_path / "db"), "--clients", "many"],
        cwd=REPO, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "--clients" in line
    assert not (tmp_path / "db").exists()  # nothing created for a rejected command


def test_progress_line_is_shown_unless_disabled(tmp_path: Path, capsys: Any) -> None:
    code = run_stress(str(tmp_path / "db"), "--clients", "2", "--tasks", "2", "--count", "50", "--seed", "2")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "acked" in captured.err and "crashes" in captured.err


# -- usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--clients", "0"], "--clients"),
        (["--clients", "abc"], "--clients"),
        (["--tasks", "-3"], "--tasks"),
        (["--workers", "1.5"], "--workers"),
        (["--count", "0"], "--count"),
        (["--count", "10", "--duration", "5"], "not both"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "-1"], "--duration"),
        (["--crash-every", "0.01"], "--crash-every"),
        (["--crash-every", "soon"], "--crash-every"),
        (["--counter-actors", "0"], "--counter-actors"),
        (["--max-queued", "0"], "--max-queued"),
        (["--keep-last", "-1"], "--keep-last"),
        (["--seed", "x"], "--seed"),
        (["--json", "/nonexistent-dir-for-stress/r.json"], "does not exist"),
        (["--plot", "/nonexistent-dir-for-stress/r.png"], "--plot"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: Any, extra: list[str], needle: str) -> None:
    db = tmp_path / "db"
    code = run_stress(str(db), "--no-progress", *extra)
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("taskengine stress: error:")
    assert needle in line
    assert not db.exists()


def test_db_path_that_is_a_file(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "file"
    path.write_text("not a database")
    assert run_stress(str(path), "--count", "10", "--no-progress") == 2
    assert "is a file" in one_error_line(capsys.readouterr().err)


def test_db_locked_by_a_running_engine(tmp_path: Path, capsys: Any) -> None:
    from taskengine import Engine

    db = str(tmp_path / "db")
    holder = Engine.open(db, jobs=JOBS)
    try:
        for mode in ([], ["--crash-every", "1"]):
            code = run_stress(db, "--count", "10", "--no-progress", *mode)
            assert code == 2
            assert "locked" in one_error_line(capsys.readouterr().err)
    finally:
        holder.close()


def test_task_id_taken_by_another_job(tmp_path: Path, capsys: Any) -> None:
    from taskengine import Engine

    db = str(tmp_path / "db")
    with Engine.open(db, jobs={"other": lambda ctx: None}) as engine:
        engine.create_task("stress-000", job="other")
    assert run_stress(db, "--count", "10", "--no-progress") == 2
    assert "stress-000" in one_error_line(capsys.readouterr().err)


# -- the tool catches a misbehaving engine ----------------------------------------------------


def test_a_changing_index_is_reported(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    """An engine whose wait() reports another index than the trigger did (the original
    engine's second bug) must make the run fail with one line per violation."""
    from taskengine import Engine

    real_wait = Engine.wait

    def lying_wait(self: Engine, task_id: str, execution_id: str, timeout: float | None = None) -> Any:
        ex = real_wait(self, task_id, execution_id, timeout)
        return attrs.evolve(ex, index=ex.index + 1) if ex.index is not None else ex

    monkeypatch.setattr(Engine, "wait", lying_wait)
    code = run_stress(str(tmp_path / "db"), "--clients", "4", "--tasks", "2", "--count", "200", "--seed", "4",
                      "--no-progress")
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED" in captured.out
    violations = [ln for ln in captured.err.splitlines() if ln.startswith("violation: ")]
    assert violations
    assert any("finished with index" in v for v in violations)


def test_an_engine_error_log_is_reported(tmp_path: Path, monkeypatch: Any) -> None:
    """The engine logs ERROR only for inconsistencies; a run that sees one fails."""
    import logging

    from taskengine.tools.stress import workload as stress_workload

    logged: list[int] = []

    def job(ctx: Any) -> Any:
        if not logged:
            logged.append(1)
            logging.getLogger("taskengine.actors.engine").error("live entry has no matching record (simulated)")
        return stress_workload.stress_job(ctx)

    monkeypatch.setitem(stress_workload.JOBS, JOB_NAME, job)
    report = execute(StressConfig(db=str(tmp_path / "db"), clients=2, tasks=2, count=40, duration=None, seed=1))
    assert any("the engine logged an error" in v and "simulated" in v for v in report.violations), report.violations


def test_replay_after_a_crash_reports_damage(tmp_path: Path) -> None:
    """What a kill leaves behind is checked before the restart: a live key of a task that does
    not exist (a deletion cut in half) is a violation."""
    import plyvel

    from taskengine import Engine
    from taskengine.storage import keys
    from taskengine.tools.stress.driver import _Supervisor

    db = str(tmp_path / "db")
    Engine.open(db, jobs=JOBS).close()
    raw = plyvel.DB(db)
    raw.put(keys.live_key("gone", 0), b"01ARZ3NDEKTSV4RRFFQ69G5FAV", sync=True)
    raw.close()
    ledger = Ledger([])
    supervisor = _Supervisor(StressConfig(db=db, crash_every=1.0), ledger, None, 0.5)
    supervisor.crashes = 1
    supervisor._replay_after_crash()
    assert supervisor.crash_replays == 1
    assert any(v.startswith("after crash 1: replay:") and "gone" in v for v in ledger.violations), ledger.violations


def test_final_check_flags_lost_and_moved_executions(tmp_path: Path) -> None:
    from taskengine import Engine

    db = str(tmp_path / "db")
    ledger = Ledger(["t1", "t2"])
    with Engine.open(db, jobs=JOBS) as engine:
        engine.create_task("t1", job=JOB_NAME)
        engine.create_task("t2", job=JOB_NAME)
        real = engine.trigger("t1", {"c": 0}, blocking=True)
        gone = engine.trigger("t2", {"c": 0}, blocking=True)
        engine.delete_task("t2")
        engine.create_task("t2", job=JOB_NAME)
        events = [
            # acknowledged with index 0 and stored with index 0: fine
            {"ev": "ack", "t": "t1", "g": 0, "id": real.id, "i": 0, "b": True, "lat": 0.001, "k": None,
             "st": "SUCCESS", "f": False},
            # an id the engine never gave out: lost
            {"ev": "ack", "t": "t1", "g": 0, "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "i": 1, "b": False, "lat": 0.001,
             "k": None, "st": None, "f": False},
            # acknowledged before a deletion of its task began: allowed to be gone
            {"ev": "ack", "t": "t2", "g": 0, "id": gone.id, "i": 0, "b": True, "lat": 0.001, "k": None,
             "st": "SUCCESS", "f": False},
            {"ev": "deleting", "t": "t2", "n": 1},
            # the same execution acknowledged again with another index
            {"ev": "ack", "t": "t1", "g": 0, "id": real.id, "i": 5, "b": True, "lat": 0.001, "k": None,
             "st": "SUCCESS", "f": False},
        ]
        for ev in events:
            ledger.ingest(ev)
        result = final_check(engine, ledger, ["t1", "t2"], timeout=10)
    violations = ledger.violations
    assert result.checked == 3 and result.success == 1 and result.deleted == 1
    assert any("later as index 5" in v for v in violations), violations
    assert any("01ARZ3NDEKTSV4RRFFQ69G5FAV" in v and "lost" in v for v in violations), violations
    assert len(violations) == 2, violations


@pytest.mark.timeout(60)
def test_the_final_checks_deadline_is_renewed_while_the_engine_finishes_executions(make_engine: Any,
                                                                                    tmp_path: Path) -> None:
    """The check's deadline runs out while the engine still finishes executions: it is renewed
    (the awaited one finishes in the renewed time), and again while the last renewal brought
    progress; with no progress since, the wait gives up (ExecutionTimeout)."""
    from engine_helpers import WAIT, Gate
    from taskengine import ExecutionStatus
    from taskengine.errors import ExecutionTimeout
    from taskengine.tools.stress.check import _Deadline

    gates = {name: Gate() for name in ("x", "y", "z")}
    engine = make_engine(str(tmp_path / "db"), jobs=gates, workers=3)
    held = {}
    for name in gates:
        engine.create_task(name, job=name)
        held[name] = engine.trigger(name)
        assert gates[name].wait_calls(1)
    deadline = _Deadline(engine, timeout=1.0)
    gates["y"].release()  # progress: y finishes while x is waited for
    assert engine.wait("y", held["y"].id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    renew = deadline._renew

    def renew_then_let_x_go() -> bool:
        renewed = renew()
        if renewed:
            gates["x"].release()
        return renewed

    deadline._renew = renew_then_let_x_go  # type: ignore[method-assign]
    assert deadline.wait("x", held["x"].id).status is ExecutionStatus.SUCCESS  # in the renewed time
    assert deadline.renewals == 1
    with pytest.raises(ExecutionTimeout):  # renewed once more (x finished), then nothing finishes
        deadline.wait("z", held["z"].id)
    assert deadline.renewals == 2


@pytest.mark.timeout(30)
def test_the_prune_mark_check_answers_only_what_it_read(tmp_path: Path) -> None:
    """pruned_past: True below the mark, False above it or for a task that is gone; an engine
    closed under the read (a workload stopping while a client checks an execution it just found
    pruned) raises, as on_receive expects, rather than answering "not pruned", which reported
    pruned executions as vanished."""
    from taskengine import Engine
    from taskengine.actors.errors import EngineClosed

    engine = Engine.open(str(tmp_path / "db"), jobs=JOBS)
    try:
        engine.create_task("t", job=JOB_NAME)
        for c in range(3):
            engine.trigger("t", {"c": c}, blocking=True)
        assert engine.prune("t", before_index=2) == 2
        assert pruned_past(engine, "t", 1) and not pruned_past(engine, "t", 2)
        assert not pruned_past(engine, "gone", 0)
    finally:
        engine.close()
    with pytest.raises(EngineClosed):
        pruned_past(engine, "t", 1)


# -- report pieces ----------------------------------------------------------------------------


def test_every_acknowledged_execution_is_of_one_printed_kind() -> None:
    """Repeats that made a new execution and blocking triggers that timed out after getting an
    index are acknowledged too: the printed kinds add up to the total, each line in words."""
    ledger = Ledger(["t"])
    ledger.begin()

    def ack(n: int, **kw: Any) -> dict[str, Any]:
        ev = {"ev": "ack", "t": "t", "g": 0, "id": f"01ARZ3NDEKTSV4RRFFQ69G5F{n:02d}", "i": n, "b": False,
              "lat": 0.002, "k": None, "st": None, "f": False, "retry": False, "timeout": False}
        return {**ev, **kw}

    for ev in (ack(0), ack(1), ack(2, b=True, st="SUCCESS", lat=0.05), ack(3, b=True, timeout=True),
               ack(4, retry=True, k="key"), ack(4, retry=True, k="key"), ack(0)):
        ledger.ingest(ev)
    assert (ledger.acknowledged, ledger.acknowledged_nonblocking, ledger.acknowledged_blocking,
            ledger.acknowledged_blocking_timed_out, ledger.acknowledged_by_repeat) == (5, 2, 1, 1, 1)
    assert ledger.ack_latency.count == 2 and ledger.blocking_latency.count == 1
    assert sum(ledger.throughput.counts) == 5
    report = StressReport(
        db="x", mode="in-process", clients=1, tasks=1, workers=1, seed=0, elapsed=1.0,
        acknowledged=ledger.acknowledged, acknowledged_nonblocking=ledger.acknowledged_nonblocking,
        acknowledged_blocking=ledger.acknowledged_blocking,
        acknowledged_blocking_timed_out=ledger.acknowledged_blocking_timed_out,
        acknowledged_by_repeat=ledger.acknowledged_by_repeat, throughput=ledger.throughput.to_json(),
        final=FinalCheck(checked=5, success=3, failed=1, deleted=1),
    )
    text = "\n".join(report.render())
    assert_report_adds_up({**report.to_json(), "ack_latency": {"count": 2}, "blocking_latency": {"count": 1}},
                          text)
    assert "+ 1 blocking whose caller timed out after the execution had got an index" in text
    assert "+ 1 first made by a repeat with an idempotency key" in text
    assert "3 SUCCESS + 1 FAILED as the workload planned + 1 gone or CANCELLED with their deleted task" in text


def test_latency_summary_in_milliseconds() -> None:
    lat = Latency.of(Histogram([0.001, 0.002, 0.003, 0.004, 0.1]))
    assert lat.count == 5 and lat.histogram is not None and lat.histogram["count"] == 5
    assert lat.p50 == pytest.approx(3.0, rel=0.01) and lat.max == 100.0 and lat.p99 == 100.0
    assert Latency.of(Histogram()).count == 0 and Latency.of(Histogram()).p50 is None
    assert "no samples" in Latency.of(Histogram()).render()


def test_report_json_round_trip() -> None:
    report = StressReport(db="x", mode="crash", clients=1, tasks=1, workers=1, seed=0, elapsed=2.0,
                          acknowledged=10, ack_latency=Latency.of(Histogram([0.01])), violations=["boom"])
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False and data["rate"] == 5.0 and data["ack_latency"]["p50"] == 10.0
    assert data["violations"] == ["boom"]
    assert any("FAILED" in line for line in report.render())


def test_stress_modules_do_not_print() -> None:
    """Only the front-end (tools/stress/command.py) and the child's main write to the terminal."""
    for name in ("workload", "check", "driver", "report"):
        source = (REPO / "tools" / "stress" / f"{name}.py").read_text()
        assert "print(" not in source, name
    assert os.path.exists(REPO / "tools" / "stress" / "child.py")


def test_a_gate_holds_a_nodes_jobs_until_the_supervisor_lets_go(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes a pause or a network cut of ``stress --nodes`` catch a job running: a job that
    comes to the gate while it is up is held (the supervisor sees it) until the gate closes; with
    no gate a job goes straight on; a gate nobody closes holds a job for HOLD_SECONDS at most."""
    import threading
    import time

    from taskengine.tools.stress import gate

    marks = str(tmp_path / "stress-node-1.r1.marks")
    began = time.monotonic()
    gate.hold(gate.gate_path(marks))  # no gate up: no wait (a hold would last HOLD_SECONDS)
    assert time.monotonic() - began < gate.HOLD_SECONDS / 2
    up = gate.Gate(marks)
    assert not up.held()
    passed = threading.Event()

    def job() -> None:
        gate.hold(gate.gate_path(marks))
        passed.set()

    jobs = [threading.Thread(target=job) for _ in range(2)]
    for t in jobs:
        t.start()
    try:
        assert up.held(timeout=30)
        assert not passed.wait(0.5)  # held: it waits for the gate, not for a time
    finally:
        up.close()
    assert passed.wait(30)
    for t in jobs:
        t.join(30)
        assert not t.is_alive()
    assert not os.path.exists(gate.gate_path(marks))
    assert not up.held()

    monkeypatch.setattr(gate, "HOLD_SECONDS", 0.3)
    forgotten = gate.Gate(marks)
    try:
        began = time.monotonic()
        gate.hold(forgotten.path)
        assert forgotten.held()
        assert 0.2 < time.monotonic() - began < 10
    finally:
        forgotten.close()


#: a node's jobs as the marker files see them: short runs, one after another, as fast as they come
_SHORT_JOBS = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
i = 0
while True:
    i += 1
    os.write(fd, f"S {i}\\n".encode())
    end = time.perf_counter() + 0.0005
    while time.perf_counter() < end:
        pass
    os.write(fd, f"E {i}\\n".encode())
    time.sleep(0.0005)
"""


@pytest.mark.timeout(60)
def test_a_pause_without_a_gate_reads_the_markers_once_the_node_is_stopped(tmp_path: Path) -> None:
    """The pause of a node whose jobs cannot be held at a gate reads its marker file to see a
    job running: read before the SIGSTOP, the job it saw had often ended by the time the node
    stopped (the pause caught nothing running), and a job started after the read went unseen.
    Stopped first, then read: each time it says a job runs, the node is stopped with one begun
    and not ended in the file."""
    import signal
    import time

    from taskengine.tools.stress.markers import file_size, read_marks
    from taskengine.tools.stress.nodes import stopped_at_a_job

    marks = str(tmp_path / "stress-node-1.r1.marks")
    node = subprocess.Popen([sys.executable, "-c", _SHORT_JOBS, marks])
    try:
        deadline = time.monotonic() + 30
        while file_size(marks) < 20_000:  # a file of some length: reading it takes a while, as in a run
            assert node.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)  # the child writes as fast as it can: nothing to wait on
        for _ in range(10):
            deadline = time.monotonic() + 10
            while not (read_marks(marks).in_progress() and stopped_at_a_job(node.pid, marks)):
                assert time.monotonic() < deadline, "no job was ever found running"
            with open(f"/proc/{node.pid}/stat", encoding="ascii") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "T"  # left stopped
            assert read_marks(marks, file_size(marks)).in_progress(), "stopped with no job running"
            os.kill(node.pid, signal.SIGCONT)
    finally:
        node.kill()
        node.wait()
