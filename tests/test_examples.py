"""The programs in examples/ run as a user would run them, and do what their docstrings say; the
systemd unit in examples/deploy/ passes systemd's own check."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine_helpers import REPO, WAIT, check_db
from taskengine import ExecutionStatus
from test_lifecycle import UNSHARE, namespace_init, unshare_or_skip

EXAMPLES = REPO / "examples"
TESTED = {"node.py", "get_or_create.py"}


def test_every_example_is_run_by_a_test() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


def run_example(*args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=WAIT, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("example", ["get_or_create.py", "node.py"])
def test_an_example_run_without_its_database_prints_its_usage(example: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / example)], capture_output=True, text=True, timeout=WAIT,
                          cwd=REPO)
    assert done.returncode == 1
    assert done.stderr == f"usage: python examples/{example} DB{' [INTERVAL]' if example == 'node.py' else ''}\n"


@pytest.mark.timeout(60)
def test_get_or_create_runs_again_and_goes_on(db_path: str) -> None:
    first = run_example("get_or_create.py", db_path)
    second = run_example("get_or_create.py", db_path)  # the README's example used to fail here
    assert first.startswith("0 1 SUCCESS {'task': 'daily-report', 'index': 1, 'to': 'dev'}")
    assert second.startswith("2 3 SUCCESS {'task': 'daily-report', 'index': 3, 'to': 'dev'}")
    t = check_db(db_path, allow_live=False)["daily-report"]
    assert t.indexes() == [0, 1, 2, 3]


class Node:
    """examples/node.py in a child process, triggering every 10 ms."""

    def __init__(self, db_path: str, prefix: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen([*prefix, sys.executable, str(EXAMPLES / "node.py"), db_path, "0.01"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.output: list[str] = []

    def expect(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # bounded by the test's timeout
            self.output.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError("the node ended early:\n" + "".join(self.output))

    def stop(self, sig: signal.Signals, pid: int | None = None) -> int:
        os.kill(pid or self.proc.pid, sig)
        try:
            assert self.proc.stdout is not None
            self.output.extend(self.proc.stdout)
            return self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def stopped_cleanly(db_path: str) -> list[int]:
    """The heartbeat's indexes after a graceful stop: every execution succeeded, except those still
    queued when the stop came, which stay PENDING on disk (README: ``close``); none was left RUNNING
    or finished as interrupted."""
    t = check_db(db_path)["heartbeat"]
    statuses = {r.status for r in t.records.values()}
    assert ExecutionStatus.SUCCESS in statuses and statuses <= {ExecutionStatus.SUCCESS, ExecutionStatus.PENDING}
    return t.indexes()


@pytest.mark.timeout(60)
def test_node_stops_cleanly_on_sigterm_and_sigint_and_goes_on_after_a_restart(db_path: str) -> None:
    node = Node(db_path)
    assert node.expect("node ready").endswith("next index 0\n")
    node.expect("triggered index 2")
    assert node.stop(signal.SIGTERM) == 143
    assert any("engine at" in line and line.endswith("closed\n") for line in node.output), node.output
    n = len(stopped_cleanly(db_path))
    again = Node(db_path)
    assert again.expect("node ready").endswith(f"next index {n}\n")
    again.expect(f"triggered index {n + 1}")
    assert again.stop(signal.SIGINT) == 130
    indexes = stopped_cleanly(db_path)
    assert indexes == list(range(len(indexes))) and len(indexes) > n + 1


@pytest.mark.timeout(60)
def test_node_as_pid1_of_a_container_stops_on_sigterm(db_path: str) -> None:
    """What `docker stop` does to a container run without --init: SIGTERM to its PID 1."""
    unshare_or_skip()
    node = Node(db_path, prefix=UNSHARE)
    node.expect("node ready")
    node.expect("triggered index 1")
    assert node.stop(signal.SIGTERM, pid=namespace_init(node.proc.pid, 1)) == 143
    stopped_cleanly(db_path)


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed")
    unit = (EXAMPLES / "deploy" / "taskengine-node.service").read_text()
    assert "SuccessExitStatus=143" in unit
    # the unit names where a deployment puts things; point it at this checkout to verify it here
    unit = unit.replace("/opt/taskengine/venv/bin/python", sys.executable)
    unit = unit.replace("/opt/taskengine/node.py", str(EXAMPLES / "node.py"))
    path = tmp_path / "taskengine-node.service"
    path.write_text(unit)
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
