"""Running the engine under injected faults, and checking what it acknowledged afterwards.

``run_child`` starts tests/faults/fault_child.py with the shim preloaded and collects the
acknowledgements it prints on a pipe; ``verify`` checks a database after the run against them
(contract §3: every acknowledged execution at its index, no index twice, counters continue,
PENDING work re-run, RUNNING work finished as interrupted, replay clean).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine_helpers import check_db
from taskengine import Engine, ExecutionStatus
from taskengine.storage import Database
from taskengine.tools import replay

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
S = ExecutionStatus
LIVE = (S.PENDING, S.RUNNING)
WAIT = 30.0

#: the calls a fault can hit (shim.c), and the errors
OPS = ("write", "sync", "create", "rename")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(tool: str) -> str:
    """The path of a system tool; a visible skip without it (a failure in CI, which installs it)."""
    found = shutil.which(tool)
    if found is None:
        if in_ci():
            pytest.fail(f"{tool} is missing in CI (.ci/run installs it)")
        pytest.skip(f"{tool} is not installed (apt-get install it; .ci/run does)")
    return found


def build_shim(out_dir: Path) -> str:
    """Compile shim.c with the system C compiler into ``out_dir``."""
    cc = need("cc")
    so = out_dir / "faultshim.so"
    subprocess.run(
        [cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(so), str(HERE / "shim.c"), "-ldl", "-lpthread"],
        check=True, capture_output=True, timeout=120,
    )
    return str(so)


@attrs.frozen
class Ack:
    task: str
    id: str
    index: int
    blocking: bool


@attrs.define
class ChildRun:
    acks: list[Ack] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)
    open_failed: str | None = None
    ready: bool = False
    returncode: int | None = None
    stderr: str = ""

    @property
    def killed_by_shim(self) -> bool:
        return self.returncode == -signal.SIGKILL and not self.done

    done: bool = False


@attrs.define
class Shim:
    """Where the shim watches and writes: ``root`` holds the database, ``keep`` and the journal
    lie beside it (``keep`` on the same file system, for hard links)."""

    so: str
    root: str
    keep: str
    journal: str

    @classmethod
    def make(cls, so: str, base: Path) -> Shim:
        root, keep = base / "root", base / "keep"
        root.mkdir(parents=True)
        keep.mkdir()
        return cls(so, str(root), str(keep), str(base / "journal"))

    def env(self, fault: str | None = None, *, journal: bool = False) -> dict[str, str]:
        env = {"LD_PRELOAD": self.so, "FS_ROOT": self.root, "FS_KEEP": self.keep}
        if journal:
            env.update(FS_LOG=self.journal, FS_ACK_FD="1")
        if fault:
            env["FS_FAULT"] = fault
        return env


def run_child(db: str, cfg: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 60.0,
              after_error: float = 3.0, wrap: list[str] | None = None) -> ChildRun:
    """Run the child until it is done, fails to open, is killed (by the shim), or has said nothing
    for ``after_error`` seconds since its first error (a waiter the failure left hanging must not
    hold up the suite); then SIGKILL it.

    Every line it printed before it died is read: the acknowledgements are the pipe's record.
    ``wrap`` runs it under another injector (``strace ...``, ``fiu-run ...``)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(
        [*(wrap or []), sys.executable, str(HERE / "fault_child.py"), db, json.dumps(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), env=full_env,
        text=True, start_new_session=True,  # its own process group: a wrapper's tracee dies with it
    )
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        err.extend(proc.stderr)

    threads = [threading.Thread(target=pump, daemon=True), threading.Thread(target=pump_err, daemon=True)]
    for t in threads:
        t.start()
    run = ChildRun()
    try:
        while True:
            try:
                line = lines.get(timeout=after_error if run.errors else timeout)
            except queue.Empty:
                if run.errors:
                    break
                raise AssertionError(f"child silent for {timeout} s; stderr:\n{''.join(err[-40:])}") from None
            if line is None:
                break
            word, _, rest = line.partition(" ")
            if word == "ACK":
                task, eid, index, blocking = rest.split(" ")
                run.acks.append(Ack(task, eid, int(index), blocking == "1"))
            elif word == "ERR":
                run.errors.append(rest)
            elif word == "READY":
                run.ready = True
            elif word == "OPENFAIL":
                run.open_failed = rest
                break
            elif word == "DONE":
                run.done = True
                break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=WAIT)
        for t in threads:
            t.join(timeout=WAIT)
    run.returncode = proc.returncode
    run.stderr = "".join(err[-40:])
    return run


def _quick(ctx: Any) -> dict[str, int]:
    return {"index": ctx.index}


def verify(path: str, acks: list[Ack], *, tally: bool = True) -> int:
    """Check a database (closed, its writer dead) against the acknowledgements; returns how
    many were checked. Opens an engine on it to finish recovered work, then replays it.
    ``tally=False`` for negative controls, whose losses are expected."""
    tasks = check_db(path, allow_live=True)  # unique, gap-free, keys consistent, straight from the files
    stored = {tid: t.by_id() for tid, t in tasks.items()}
    lost = [a for a in acks if a.id not in stored.get(a.task, {})]
    if tally:
        TALLY["acknowledged executions checked"] += len(acks)
        TALLY["lost"] += len(lost)
    assert not lost, f"{len(lost)} of {len(acks)} acknowledged executions lost, e.g. {lost[:3]}"
    seen: set[tuple[str, int]] = set()
    for a in acks:
        assert (a.task, a.index) not in seen, f"index {a.index} of {a.task} acknowledged twice"
        seen.add((a.task, a.index))
        r = stored[a.task][a.id]
        assert r.index == a.index, f"{a.id}: acknowledged index {a.index}, stored {r.index}"
        if a.blocking:
            assert r.status == S.SUCCESS, f"{a.id}: a blocking trigger answered, stored {r.status}"
    live = [(tid, r) for tid, t in tasks.items() for r in t.records.values() if r.status in LIVE]
    counters = {tid: t.counter for tid, t in tasks.items()}
    engine = Engine.open(path, jobs={"faultjob": _quick}, workers=2)
    try:
        for tid, r in live:
            fin = engine.wait(tid, r.id, timeout=WAIT)
            assert (fin.id, fin.index) == (r.id, r.index)
            if r.status == S.PENDING:
                assert fin.status == S.SUCCESS, f"recovered PENDING {r.id}: {fin.status} {fin.error}"
            else:
                assert fin.status == S.FAILED and "interrupt" in (fin.error or "").lower(), (fin.status, fin.error)
        for tid, n in counters.items():
            new = engine.trigger(tid, data={"kind": "fast"}, blocking=True, timeout=WAIT)
            assert new.index == n, f"{tid}: counter was {n}, the next execution got {new.index}"
    finally:
        engine.close(timeout=WAIT)
    db = Database.open(path)
    try:
        report = replay.check(db)
    finally:
        db.close()
    assert report.ok, [v.to_json() for v in report.violations]
    return len(acks)


# -- counts for the report: printed at the end of the session (conftest.py) -----------------------

TALLY: dict[str, int] = {"kill points": 0, "faults injected": 0, "acknowledged executions checked": 0, "lost": 0}


def count_faults(journal: str) -> int:
    """How many calls the shim failed in a run (its ``F`` lines)."""
    if not os.path.exists(journal):
        return 0
    with open(journal, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if line.startswith("F "))


def copy_db(src: str, dest: str) -> None:
    """A copy of a closed database, synced, so that it counts as durable before a run."""
    shutil.copytree(src, dest)
    os.sync()
