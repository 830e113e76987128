"""Smoke test of ``taskengine bench``: a tiny run of a cheap subset writes the expected JSON.

Benchmarks are not tests: nothing here looks at a speed figure, only at the shape of the
report and at the replay check the harness runs on the databases it produced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskengine.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--only", ""], "--only needs one or more benchmark names"),  # ran every benchmark
        (["--duration", "nan"], "--duration must be a number of seconds between"),  # measured nothing
        (["--duration", "-1"], "--duration must be a number of seconds between"),
        (["--warmup", "-1"], "--warmup must be a number of seconds between 0 and"),
        (["--rounds", "0"], "--rounds must be between 1 and"),  # StatisticsError traceback
        (["--tasks", "-1"], "--tasks must be between 1 and"),  # "-1 tasks created"
        (["--workers", "0"], "--workers must be between 1 and 1024"),  # InvalidArgument traceback
        (["--soak-window", "0"], "--soak-window must be between 1 and"),
        (["--json", "NODIR/x.json"], "the directory"),  # a traceback once every benchmark had run
        (["--workdir", "FILE"], "must be a directory"),  # FileExistsError traceback
        (["--workdir", "FILE/under"], "cannot be made"),  # NotADirectoryError traceback
    ],
)
def test_bad_options_are_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    (tmp_path / "a-file").write_text("")
    argv = [a.replace("NODIR", str(tmp_path / "missing")).replace("FILE", str(tmp_path / "a-file")) for a in argv]
    assert main(["bench", "--only", "pykka", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskengine bench: error: ") and expected in lines[0], err


def test_bench_quick_subset_writes_expected_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "taskengine.tools.bench.command", "--quick", "--only", "pykka,acks,open",
            "--duration", "0.2", "--warmup", "0.05", "--history", "2000", "--history-small", "200",
            "--open-repeats", "2", "--workdir", str(tmp_path / "work"), "--json", str(out),
            "--plot", str(tmp_path / "bench.png"),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc) >= {"meta", "results", "table", "targets", "invariants", "failures"}
    assert doc["failures"] == {}
    assert doc["meta"]["selected"] == ["pykka", "acks", "open"]
    assert {"cpus", "python"} <= set(doc["meta"]["machine"])
    results = doc["results"]
    for key in ("pykka_ask_sequential", "pykka_ask_pipelined", "pykka_ask_64_callers", "open_small", "open_large"):
        assert results[key]["value"] > 0, key
    for tasks in (1, 100):
        for callers in (1, 8, 64):
            entry = results[f"engine_acks_{callers}c_{tasks}t"]
            assert entry["value"] > 0 and entry["errors"] == 0
            assert entry["p50_us"] is not None and entry["p99_us"] is not None
            # bounded figures: a histogram of the latencies and a rate series per round, no samples
            hist = entry["latency_histogram"]
            assert hist["count"] > 0 and len(hist["buckets"]) < 1300 and "latencies" not in entry
            assert len(entry["throughput"]) == 1 and sum(entry["throughput"][0]["counts"]) > 0
            assert doc["invariants"][f"engine_acks_{callers}c_{tasks}t"]["ok"] is True
    targets = {t["id"]: t for t in doc["targets"]}
    assert set(targets) == {
        "acks-1-task", "acks-100-tasks-naive", "acks-100-tasks-pykka", "e2e", "tasks-threads", "tasks-rss",
        "open", "replay", "soak",
    }
    assert targets["acks-100-tasks-pykka"]["measured"] is not None  # both sides ran
    assert targets["acks-1-task"]["met"] is None  # its baseline (naive) was not selected
    assert any(row["key"] == "open_large" and row["ratio"] is not None for row in doc["table"])
    assert "FIGURE" in proc.stdout and "TARGET" in proc.stdout
    # a newcomer's quick run says what a target is, judges none at reduced size, and ends with a verdict
    assert "Targets: each compares an engine figure with a baseline measured in this same run" in proc.stdout
    assert "MISSED" not in proc.stdout
    verdicts = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()[:1] and
                line.split()[0] in targets}
    assert verdicts["open"].endswith("not judged (reduced size)")
    assert verdicts["acks-1-task"].endswith("not run (its benchmarks were not selected)")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("Result: 3 of 3 benchmarks ran; every database passed the replay check; targets:")
    assert last.endswith("(exit status 0).")
    png = (tmp_path / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def test_bench_reports_cpu_and_handoffs_per_operation_against_the_floor(tmp_path: Path) -> None:
    """CPU (us) and thread hand-offs per execution are figures of the table, each with the floor
    (a group-commit round trip on the engine's mailbox) as its baseline; the e2e engine runs
    with the engine's default settings."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "taskengine.tools.bench.command", "--quick", "--only", "floor,e2e",
            "--duration", "0.2", "--warmup", "0.05", "--rounds", "1", "--e2e-executions", "300",
            "--workdir", str(tmp_path / "work"), "--json", str(out),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    results = doc["results"]
    from taskengine.actors.engine import DEFAULT_WORKERS

    assert results["e2e_noop_64c_100t"]["workers"] == DEFAULT_WORKERS
    for name in ("floor_64c", "e2e_noop_64c_100t"):
        assert results[name]["cpu_us_per_op"] > 0, name
        assert results[name]["handoffs_per_op"] >= 0, name
    rows = {row["key"]: row for row in doc["table"]}
    for key in ("e2e_noop_64c_100t.cpu_us_per_op", "e2e_noop_64c_100t.handoffs_per_op"):
        assert rows[key]["baseline"] == "floor_64c." + key.split(".")[1]
        assert rows[key]["ratio"] is not None
    assert "e2e no-op: CPU per execution (us)" in proc.stdout
    assert "floor: thread hand-offs per round trip" in proc.stdout
    assert doc["invariants"]["e2e"]["ok"] is True


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A database on a throwaway server of the test's own (tests/pg.py)."""
    from pg import running_server

    with running_server() as server:
        yield server.create_database()


def test_bench_on_postgresql_measures_the_engine_and_its_baselines_on_one_server(own_pg_url: str,
                                                                                 tmp_path: Path) -> None:
    """``--backend URL``: durable acks (64 callers, 1 and 100 tasks), e2e, the naive design, the
    peer queue and three nodes on one task on the same server, each figure in a database of its own
    that is dropped afterwards; every engine database passes the replay check. On a server of its own:
    each DROP DATABASE waits for a checkpoint, which on the session's server writes and fsyncs what
    every earlier test left there (74,000 files at the end of a quiet run: a 10 s wait, not the
    bench's, and far longer on a loaded machine)."""
    import psycopg

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "taskengine.tools.bench.command", "--quick", "--backend", own_pg_url,
            "--duration", "0.2", "--warmup", "0.05", "--rounds", "1", "--e2e-executions", "200",
            "--peer-jobs", "50", "--workdir", str(tmp_path / "work"), "--json", str(out),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["meta"]["selected"] == ["naive", "floor", "acks", "e2e", "peer", "nodes"]
    assert doc["meta"]["server"]["synchronous_commit"] == "on"
    results = doc["results"]
    for key in ("naive_acks_64c_1t", "naive_acks_64c_100t", "engine_acks_64c_1t", "engine_acks_64c_100t",
                "e2e_noop_64c_100t", "peer_queue", "nodes_acks_64c_1t_1n", "nodes_acks_64c_1t_3n"):
        assert results[key]["value"] > 0, key
    assert results["nodes_acks_64c_1t_3n"]["callers_per_node"] == [22, 21, 21]
    assert set(doc["invariants"]) == {"engine_acks_64c_1t", "engine_acks_64c_100t", "e2e", "nodes_acks_64c_1t_1n",
                                      "nodes_acks_64c_1t_3n"}
    assert all(v["ok"] for v in doc["invariants"].values())
    targets = {t["id"]: t for t in doc["targets"]}
    assert set(targets) == {"acks-1-task", "acks-100-tasks-naive", "nodes-1-task", "e2e", "e2e-peer"}
    assert all(t["measured"] is not None for t in targets.values())
    assert "backend: postgresql://" in proc.stdout
    with psycopg.connect(own_pg_url) as conn:  # nothing of the bench's is left on the server
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'taskengine_bench_%'").fetchall()
    assert left == []


def test_bench_refuses_leveldb_only_figures_with_a_backend(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskengine.tools.bench.command", "--backend", "postgresql://nobody@127.0.0.1:1/x",
         "--only", "soak"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "taskengine bench: error: soak: LevelDB only; with --backend: pykka, floor, naive, acks, e2e, peer, nodes"
    ]


def test_probe_turn_drives_the_real_counter_actor_and_executor_from_one_thread(tmp_path: Path) -> None:
    """The one-thread drivers behind ``probe turn``: a counter actor's turns (triggers alone, then
    triggers with starts carrying finishes) and an executor's loop run to the end and give a CPU
    figure each (not judged: a figure, not a test of speed)."""
    from taskengine.tools.bench import turns

    acks = turns.counter_turns(str(tmp_path), e2e=False, batch=5, turns=20, sync=False)
    e2e = turns.counter_turns(str(tmp_path), e2e=True, batch=5, turns=20, sync=False)
    loop = turns.executor_loop(200)
    assert acks > 0 and e2e > 0 and loop > 0


def test_probe_e2e_counts_every_kind_of_thread(tmp_path: Path) -> None:
    """The probe's CPU table has the executors, whose short runs clock ticks miss (the callers may end
    before the probe looks)."""
    proc = subprocess.run(
        [sys.executable, "-m", "taskengine.tools.bench.probe", "e2e", "--burst", "--executions", "2000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.split("CPU per operation by thread", 1)[1].split("thread hand-offs", 1)[0]
    for kind in ("CounterActor", "Executor", "PendingStore", "all threads"):
        assert kind in table, proc.stdout


def test_probe_start_times_the_answer_and_the_jobs_first_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskengine.tools.bench.probe", "start", "--executions", "50"],
        cwd=tmp_path, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "50 executions" in proc.stdout and "trigger to job's 1st line p50" in proc.stdout, proc.stdout


@pytest.mark.timeout(60)
def test_a_node_that_never_opens_is_an_error_not_a_hang() -> None:
    """The nodes figure waits for each node process to open its engine: a node whose server never
    answers (a socket that takes the connection and says nothing) hung the bench in a readline
    with no limit. Now a StorageError after the startup bound, and the node process is killed
    (its end of the connection closes)."""
    import socket
    import time
    import types

    from taskengine.errors import StorageError
    from taskengine.tools.bench.nodes import measure_round

    with socket.create_server(("127.0.0.1", 0), backlog=8) as mute:
        url = f"postgresql://bench:pw-not-shown@127.0.0.1:{mute.getsockname()[1]}/none?connect_timeout=30"
        opts = types.SimpleNamespace(duration=1.0, warmup=0.0, workers=1, counter_actors=1, backend=url)
        began = time.monotonic()
        with pytest.raises(StorageError) as caught:
            measure_round(url, 1, opts, startup=2.0)
        assert time.monotonic() - began < 20
        assert "bench node 0 of 1 did not open its engine" in str(caught.value)
        assert "within 2 s" in str(caught.value) and "pw-not-shown" not in str(caught.value)
        mute.settimeout(10)
        conn, _ = mute.accept()  # the node's connection, waiting in the backlog
        with conn:
            conn.settimeout(10)
            while conn.recv(4096):  # what the node sent (its SSL request), then the end: it was killed
                pass
