"""A failed write(2) or fsync, injected into LevelDB's system calls (README, "Failures").

The child (``write_fault_child.py``) runs under the fault-injection shim of ``tests/faults``
(LD_PRELOAD) and reports every acknowledgement on a pipe; the test then reopens the database
without the shim and holds it to what was acknowledged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine_helpers import HERE, REPO, check_db
from taskengine import Engine, ExecutionStatus, errors

SHIM_SOURCE = HERE / "faults" / "shim.c"


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shim, compiled with the system C compiler."""
    if not SHIM_SOURCE.exists():
        pytest.skip(f"{SHIM_SOURCE} (the fault-injection shim) is not in this checkout")
    cc = shutil.which("cc")
    if cc is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no C compiler (cc) in CI")
        pytest.skip("no C compiler (cc): no fault injection here")
    so = tmp_path_factory.mktemp("shim") / "faultshim.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(SHIM_SOURCE), "-ldl", "-lpthread"],
                   check=True, capture_output=True, timeout=120)
    return str(so)


@attrs.define
class Run:
    acks: list[tuple[str, str, int]] = attrs.Factory(list)
    failed: list[tuple[str, str, bool, str]] = attrs.Factory(list)
    waiters: dict[str, tuple[str, bool, str]] = attrs.Factory(dict)
    lines: list[str] = attrs.Factory(list)
    stats: dict[str, Any] = attrs.Factory(dict)
    stderr: str = ""

    def line(self, word: str) -> list[str]:
        return [x.split(" ", 1)[1] if " " in x else "" for x in self.lines if x.split(" ", 1)[0] == word]


def run_child(shim: str, root: Path, scenario: str, fault: str) -> Run:
    db = root / "db"
    env = dict(os.environ, LD_PRELOAD=shim, FS_ROOT=str(root), FS_FAULT=fault, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, str(HERE / "write_fault_child.py"), scenario, str(db)],
                         capture_output=True, text=True, timeout=90, cwd=str(REPO), env=env)
    run = Run(lines=out.stdout.splitlines(), stderr=out.stderr)
    assert not run.line("CRASH"), run.line("CRASH")
    assert run.line("DONE"), f"the child did not finish; stderr:\n{out.stderr[-3000:]}"
    for rest in run.line("ACK"):
        task, eid, index = rest.split(" ")
        run.acks.append((task, eid, int(index)))
    for rest in run.line("FAILED"):
        task, key, unknown, message = rest.split(" ", 3)
        run.failed.append((task, key, unknown == "1", message))
    for rest in run.line("WAITER"):
        name, kind, unknown, message = (rest.split(" ", 3) + [""])[:4]
        run.waiters[name] = (kind, unknown == "1", message)
    if run.line("STATS"):
        run.stats = json.loads(run.line("STATS")[0])
    return run


# the N-th write(2) / fdatasync of a file in the database fails, once, after setup
FAULTS = ["write:40:ENOSPC", "write:60:EIO", "write:50:short", "sync:40:EIO", "sync:55:ENOSPC",
          "write:45:ENOSPC:sticky"]  # the last: a disk that stays full


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", FAULTS)
def test_one_failed_write_stops_every_writer_and_loses_nothing(shim, tmp_path, fault):
    """Two counter actors; after the first failed write neither writes again, nothing
    acknowledged is lost or re-issued, and the failed call says its outcome is unknown."""
    run = run_child(shim, tmp_path, "acks", fault)
    assert run.acks, "the fault hit before anything was acknowledged: move it later"
    # reopened: every acknowledged execution at its index; counters continue past them
    check_db(str(tmp_path / "db"))
    with Engine.open(str(tmp_path / "db"), jobs={"j": lambda ctx: None}, counter_actors=2) as engine:
        lost = []
        for task, eid, index in run.acks:
            try:
                assert engine.get_execution(task, eid).index == index
            except errors.ExecutionNotFound:
                lost.append(eid)
        assert not lost, f"{len(lost)} of {len(run.acks)} acknowledged executions lost"
        for task in {a[0] for a in run.acks}:
            top = max(i for t, _, i in run.acks if t == task)
            assert engine.next_index(task) > top
            assert engine.trigger(task).index > top  # never issued twice
        # a retry with the key of a failed call is safe: one execution for that key, whatever happened
        for task, key, _, _ in run.failed:
            first = engine.trigger(task, idempotency_key=key)
            assert engine.trigger(task, idempotency_key=key).id == first.id
            by_key = [ex for ex in _all(engine, task) if ex.idempotency_key == key]
            assert [ex.id for ex in by_key] == [first.id]
    assert not run.line("ACCEPTED-AFTER-FAILURE"), "a write was accepted after one had failed"
    assert len(run.failed) == 4  # every thread was told
    unknown = [f for f in run.failed if f[2]]
    assert unknown, run.failed  # the calls whose write failed (only callers' triggers write here)...
    for _, _, _, message in unknown:  # ...is told its outcome is unknown and what is safe
        assert "outcome is unknown" in message and "idempotency key" in message, message
    for _, _, was_unknown, message in run.failed:
        assert was_unknown or message.startswith("refused:"), message

    # refused calls: a fresh exception each, no traceback carried along, nothing churned
    count, distinct, frames, unknown_refusals = map(int, run.line("REFUSED")[0].split())
    assert count == distinct == 4 * 200 and frames < 20 and unknown_refusals == 0
    assert run.stats["write_failure"] and run.stats["replaced_executors"] == 0
    assert "WARNING" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]


def _all(engine: Engine, task: str) -> list[Any]:
    out: list[Any] = []
    after = None
    while True:
        page = engine.list_executions(task, after=after, limit=1000)
        if not page:
            return out
        out += page
        after = page[-1].index


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["write:45:ENOSPC", "sync:45:EIO"])  # counts include the directory fsyncs
def test_every_waiter_is_answered_after_a_failed_write(shim, tmp_path, fault):
    run = run_child(shim, tmp_path, "waiters", fault)
    assert run.line("WAITING"), "the fault hit before the waiters were waiting: move it later"
    assert not run.line("HUNG"), run.lines
    assert set(run.waiters) == {"blocking", "blocking-timeout", "wait"}
    for name, (kind, _, message) in run.waiters.items():
        assert kind == "WriteFailed", (name, kind, message)  # never ExecutionTimeout: "it goes on running"
        assert "goes on running" not in message
    assert run.stats["write_failure"] and run.stats["waiters"] == 0
    # the freed worker ran nothing more, and no executor died on the queued work
    assert run.stats["replaced_executors"] == 0 and run.stats["queued"] == 0
    assert "WARNING" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.line("CLOSED"), run.lines
    with Engine.open(str(tmp_path / "db"), jobs={"j": lambda ctx: None}) as engine:
        pending = engine.list_executions("p")
        assert len(pending) == 1
        assert engine.wait("p", pending[0].id, timeout=30).status is ExecutionStatus.SUCCESS  # ran after reopen


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["write:40:ENOSPC", "sync:40:EIO"])
def test_executors_held_for_starts_in_a_failed_write_are_let_go(shim, tmp_path, fault):
    """A trigger's write that would have started its execution on an idle executor fails: the
    executor held for it runs nothing and is free again (a close waits for busy executors)."""
    run = run_child(shim, tmp_path, "started", fault)
    assert run.acks and len(run.failed) == 1, run.lines
    assert run.stats["write_failure"] and run.stats["running"] == 0, run.stats
    assert run.line("CLOSED"), run.lines
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    check_db(str(tmp_path / "db"))
    with Engine.open(str(tmp_path / "db"), jobs={"j": lambda ctx: None}) as engine:
        for task, eid, index in run.acks:  # started and finished, or interrupted: never lost
            assert engine.get_execution(task, eid).index == index


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", [f"write:{n}:ENOSPC" for n in range(1, 7)] + ["sync:1:EIO", "sync:2:ENOSPC"])
def test_a_failed_write_while_creating_a_database_is_a_taskengine_error(shim, tmp_path, fault):
    run = run_child(shim, tmp_path, "open", fault)
    failed = run.line("OPENFAIL")
    if failed:  # e.g. ENOSPC writing the schema of the new database: not plyvel's IOError
        kind, message = failed[0].split(" ", 1)
        assert kind.startswith("taskengine.") and not re.search(r"(^|[\s:(])b'", message), failed[0]
    else:
        assert run.line("OPENED"), run.lines
