"""The task book the nodes of ``stress --nodes`` share (tools/stress/shared.py): its readers never
wait for a node that holds the book's lock (paused or cut off while changing it, or starting up),
and a node killed in the middle of a change leaves nothing a reader waits for. Real processes,
holding the real lock, killed for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from taskengine.tools.stress.shared import SharedTaskBook, create_book

pytestmark = pytest.mark.timeout(60)

IDS = ["a", "b"]
#: how long a read may take before the test calls it blocked (a read is a few microseconds)
BLOCKED = 10.0

CHILD = """
import sys
from taskengine.tools.stress.shared import SharedTaskBook
book = SharedTaskBook(sys.argv[1], ["a", "b"], slot=2)
with book.{how}():
    {inside}
    print("in", flush=True)
    sys.stdin.readline()
"""


def holder(path: Path, how: str, inside: str = "pass") -> subprocess.Popen[str]:
    """A node process holding the book (``held``, or in the middle of a change) until told."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(how=how, inside=inside), str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "in\n"
    return proc


def read_all(book: SharedTaskBook) -> list[Any]:
    """Every read of the book, on a thread of its own: the reads' values, or a failure if they blocked."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(
        [book.gen("a"), book.started("a"), book.deleted_since("a", 0), book.busy("a")]), daemon=True)
    thread.start()
    thread.join(BLOCKED)
    assert not thread.is_alive(), "a read of the book waited for another node's lock"
    return out[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "book"
    create_book(str(p), IDS, {"a": 3})
    return p


def test_reads_do_not_wait_for_a_node_holding_the_book(path: Path) -> None:
    book = SharedTaskBook(str(path), IDS, slot=1)
    proc = holder(path, "held")
    try:
        assert read_all(book) == [3, 3, True, False]
    finally:
        proc.kill()
        proc.wait()
        book.close()


def test_a_node_killed_in_the_middle_of_a_change_leaves_nothing_to_wait_for(path: Path) -> None:
    book = SharedTaskBook(str(path), IDS, slot=1)
    # the child is killed with the sequence odd and "a"'s deletion half written: started, no slot
    proc = holder(path, "_changing", inside="book._set('a', 0, 4)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert read_all(book) == [3, 4, True, True]
        assert book.begin_delete("b") == 1  # and changes go on
        assert read_all(book)[2] is True
    finally:
        book.close()
