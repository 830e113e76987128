"""contract §3.9 faults: a failed write, sync, file creation or rename, a short write, a full disk,
or a SIGKILL at any of many points (recovery included) never loses or re-issues an acknowledged
index. Each case starts from a copy of a database a killed engine left (with PENDING and RUNNING
work), runs the child under the shim with one fault, kills it, and checks the files against the
acknowledgements the child printed on its pipe (``fault_harness.verify``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fault_harness import TALLY, Ack, Shim, copy_db, count_faults, in_ci, run_child, verify
from taskengine import Engine

CFG: dict[str, Any] = {"acks": 200, "tasks": 3, "threads": 4, "payload": 500}
BIG = {"acks": 400, "payload": 20_000}  # enough data for LevelDB to switch logs and write tables


@pytest.fixture(scope="module")
def template(tmp_path_factory: Any) -> tuple[str, list[Ack]]:
    """A database left by an engine killed with work PENDING and RUNNING, and its acks."""
    db = str(tmp_path_factory.mktemp("template") / "db")
    run = run_child(db, dict(CFG, acks=40))
    assert run.done and len(run.acks) >= 40, (run.errors, run.stderr)
    return db, run.acks


def faulted_run(shim: Shim, template: tuple[str, list[Ack]], fault: str, arm: str | None = None,
                **cfg: Any) -> None:
    db = os.path.join(shim.root, "db")
    copy_db(template[0], db)
    env = shim.env(fault, journal=True)
    if arm:
        env["FS_ARM"] = arm
    run = run_child(db, dict(CFG, **cfg), env)
    TALLY["faults injected"] += count_faults(shim.journal)
    print(f"{fault}: {len(run.acks)} acks, errors {run.errors[:1]}, open {run.open_failed}, rc {run.returncode}")
    verify(db, template[1] + run.acks)


ERRORS = [
    (f"write:{n}:{err}", actors)
    for err in ("ENOSPC", "EIO", "short")
    for n in (1, 4, 15, 40, 120)
    for actors in (1, 2)
] + [
    (f"write:{n}:ENOSPC:sticky", actors) for n in (6, 60) for actors in (1, 2)  # a disk that stays full
] + [
    (f"sync:{n}:{err}", actors) for err in ("ENOSPC", "EIO") for n in (1, 3, 12, 40) for actors in (1, 2)
] + [
    (f"{op}:{n}:{err}", 1) for op in ("create", "rename") for n in (1, 2, 3) for err in ("ENOSPC", "EIO")
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault,actors", ERRORS)
def test_an_io_error_loses_no_acknowledged_execution(shim, template, fault, actors):
    faulted_run(shim, template, fault, counter_actors=actors)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", [f"{op}:{n}:{err}" for op, n in (("create", 1), ("create", 2), ("write", 30),
                                                                    ("sync", 5), ("create", 3))
                                   for err in ("ENOSPC", "EIO")])
def test_an_io_error_after_a_log_switch_loses_nothing(shim, template, fault):
    """Faults once LevelDB left its first log: new logs, tables and manifest writes mid-run."""
    faulted_run(shim, template, fault, arm=".log:2", counter_actors=2, **BIG)


KILLS = [f"any:{n}:{when}" for n in range(1, 30, 2) for when in ("kill", "killafter")] + [
    f"any:{n}:kill" for n in range(40, 600, 37)
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", KILLS)
def test_sigkill_at_any_point_recovery_included_loses_nothing(shim, template, fault):
    """A crash-point sweep: the first points fall inside the open and its recovery of the
    template's PENDING and RUNNING work; the rest while triggers are being acknowledged."""
    TALLY["kill points"] += 1
    faulted_run(shim, template, fault, counter_actors=2)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("actors", [1, 2])
def test_a_really_full_file_system_loses_nothing(tmp_path: Path, template, actors):
    """A small tmpfs filled up for real while the engine writes, freed afterwards."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI runs as root and must mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        db = str(mnt / "db")
        copy_db(template[0], db)
        filler = mnt / "filler"
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 1_500_000))
        run = run_child(db, dict(CFG, counter_actors=actors, acks=100_000, payload=20_000))
        assert run.errors or run.open_failed, "the file system never filled up"
        TALLY["faults injected"] += 1
        filler.unlink()
        verify(db, template[1] + run.acks)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


FIRST_OPEN = [f"any:{n}:kill" for n in range(1, 34, 4)] + [
    f"{op}:{n}:ENOSPC" for op, ns in (("write", (1, 3, 6)), ("sync", (1, 2, 3)), ("create", (1, 2, 3, 4)),
                                      ("rename", (1, 2))) for n in ns
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", FIRST_OPEN)
def test_a_crash_or_full_disk_during_the_first_open_leaves_a_database_that_opens(shim, fault):
    """Creating a database is atomic: whatever stops the first open, the path afterwards holds
    nothing or a whole database, never a directory that every later open refuses."""
    db = os.path.join(shim.root, "db")
    env = shim.env(fault, journal=True)
    run = run_child(db, dict(CFG, acks=20), env)
    TALLY["faults injected" if "ENOSPC" in fault else "kill points"] += 1
    if not os.path.exists(db):
        assert not run.acks
        os.mkdir(db)  # an empty directory is a fine place for a new database too
    Engine.open(db).close()
    verify(db, run.acks)
