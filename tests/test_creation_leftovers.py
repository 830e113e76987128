"""A creator killed mid-creation leaves a hidden ``.NAME.creating-*`` sibling; the next creation
of NAME removes it, and leaves alone a creation still in progress in another process."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from taskengine import storage

pytestmark = pytest.mark.timeout(60)

#: creates argv[1] with a build that fills the hidden sibling, says so, then waits on stdin forever
CREATOR = """
import sys
from taskengine.storage import durable

def build(tmp):
    open(tmp + "/half-built", "w").close()
    print("building", flush=True)
    sys.stdin.read()

durable.create_atomically(sys.argv[1], build)
"""


def start_creator(path: Path) -> subprocess.Popen[str]:
    """A creator of ``path`` stopped inside its build (it printed 'building')."""
    child = subprocess.Popen([sys.executable, "-c", CREATOR, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "building\n"
    return child


def leftovers(path: Path) -> set[str]:
    return set(glob.glob(str(path.parent / f".{path.name}.creating-*")))


def test_a_killed_creators_leftover_is_removed_and_a_live_creation_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "db"
    dead = start_creator(db)
    dead.kill()
    dead.wait()
    abandoned = leftovers(db)
    assert len(abandoned) == 1 and os.path.exists(next(iter(abandoned)) + "/half-built")
    alive = start_creator(db)
    try:
        in_progress = leftovers(db) - abandoned
        assert len(in_progress) == 1
        storage.Database.open(str(db), create=True).close()
        assert leftovers(db) == in_progress, "the dead creator's leftover stays, or the live one was removed"
        assert os.path.exists(next(iter(in_progress)) + "/half-built")
    finally:
        alive.send_signal(signal.SIGKILL)
        alive.wait()
    storage.Database.open(str(db)).close()  # the database made meanwhile is whole
