"""A node's turn whose write is cut off (its connection lost before COMMIT reached the server) while
another node writes the same task before it can reconnect: nothing of the turn was written and its
tasks' rows changed, so the turn is decided again against the new rows. The node carries on (its
writer does not stop), its callers get true answers, what it runs is finished, and the indexes
stay unique and gap-free.

The cut is made by a proxy between node A and the server (``pg_proxy.CommitCutter``) that drops
A's connection at COMMIT and then holds A's new connections until node B has written.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from engine_helpers import WAIT, Gate, Recorder, check_db
from pg import PgServer
from pg_proxy import CommitCutter
from taskengine import Execution, ExecutionStatus, errors
from taskengine.storage.pg_writer import STALE_TURNS

pytestmark = pytest.mark.timeout(90)



def _cut_then(cutter: CommitCutter, call: Any, meanwhile: Any) -> Any:
    """Run ``call()`` on a thread with A's next COMMIT cut and A kept from reconnecting until
    ``meanwhile()`` (node B's write) returned; ``call``'s result."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as e:  # handed to the test
            out.append(e)

    cutter.hold()
    cutter.arm("before")
    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert cutter.cut.wait(WAIT), "A's COMMIT was not cut"
        meanwhile()
    finally:
        cutter.admit()
        thread.join(WAIT)
    assert not thread.is_alive() and len(out) == 1
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_a_trigger_whose_task_another_node_wrote_meanwhile_gets_the_next_index(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter, caplog: pytest.LogCaptureFixture,
) -> None:
    """A's trigger (with an idempotency key, and a backlog of one) is cut at COMMIT; B triggers the
    task; A, back, is answered with the index after B's, the key stored once, and triggers on.
    (Decided from the cached state its first decision left, the key would be taken for a repeat of
    an execution that does not exist, and the backlog place it held would refuse it.)"""
    caplog.set_level(logging.INFO, logger="taskengine")
    dbname = pg_url.rsplit("/", 1)[1]
    rec = Recorder()
    a = make_engine(cutter.url(pg_server.user, dbname), jobs={"rec": rec}, node_id="a", max_queued=1)
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b")
    a.create_task("t", job="rec")
    first = a.trigger("t")
    assert a.wait("t", first.id, timeout=WAIT).status is ExecutionStatus.SUCCESS  # its backlog place is free
    by_b: list[Execution] = []
    by_a = _cut_then(cutter, lambda: a.trigger("t", {"n": 1}, idempotency_key="k"),
                     lambda: by_b.append(b.trigger("t")))
    assert (first.index, by_b[0].index, by_a.index) == (0, 1, 2)
    assert "the turn is decided again" in caplog.text
    assert a.trigger("t", {"n": 1}, idempotency_key="k").id == by_a.id  # a repeat: the same execution
    for ex in (by_b[0], by_a):  # by_a may still be queued on a loaded machine, holding the backlog's place
        assert a.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    after = a.trigger("t")
    assert after.index == 3
    assert a.wait("t", after.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert a.stats().write_failure is None
    make_engine.close(a)
    make_engine.close(b)
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 4
    assert [disk.records[i].id for i in range(4)] == [first.id, by_b[0].id, by_a.id, after.id]


def test_a_finish_whose_task_another_node_wrote_meanwhile_is_stored(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter,
) -> None:
    """A runs an execution; its finish's turn is cut at COMMIT and B triggers the task meanwhile.
    The finish is decided again and stored: the execution ends SUCCESS, not RUNNING for ever on a
    node that lives on (decided from the state its first decision left, A would no longer hold it
    as running and would drop its completion)."""
    dbname = pg_url.rsplit("/", 1)[1]
    gate = Gate()
    a = make_engine(cutter.url(pg_server.user, dbname), jobs={"g": gate}, node_id="a")
    a.create_task("t", job="g")
    ex = a.trigger("t")
    assert gate.wait_calls(1)  # running on A: B does not exist yet
    b = make_engine(pg_url, jobs={"g": gate}, node_id="b")
    by_b: list[Execution] = []
    _cut_then(cutter, lambda: (gate.release(), gate.wait_returned(1)), lambda: by_b.append(b.trigger("t")))
    assert a.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert b.wait("t", by_b[0].id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    after = a.trigger("t")
    assert (ex.index, by_b[0].index, after.index) == (0, 1, 2)
    assert a.wait("t", after.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert a.stats().write_failure is None
    make_engine.close(a)
    make_engine.close(b)
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 3 and disk.records[0].status is ExecutionStatus.SUCCESS


def test_a_writer_stops_after_stale_turns_decided_again_in_a_row(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter,
) -> None:
    """A's trigger is cut at COMMIT again and again, and each time B triggers the task before A
    can reconnect: every try of A's turn finds the task changed, and is decided again. One fewer
    than ``STALE_TURNS`` in a row is carried: A's trigger is answered, with the index after B's,
    and A writes on. The count starts again after a write: ``STALE_TURNS`` in a row then stop A's
    writer, its caller gets ``WriteFailed`` saying so, nothing of that turn is written, and B
    carries on. (A's triggers have keys: a turn of them locks its task before it is handled. A
    stamped turn's write assumes nothing of the rows, so it is only sent again: test_pg_stamped.)"""
    dbname = pg_url.rsplit("/", 1)[1]
    rec = Recorder()
    a = make_engine(cutter.url(pg_server.user, dbname), jobs={"rec": rec}, node_id="a")
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b")
    a.create_task("t", job="rec")
    by_b: list[Execution] = []

    def cut(times: int) -> list[int]:
        """A's next ``times`` COMMITs cut, B's blocking trigger (it runs on B: A claims nothing)
        between each and A's reconnection; the count of cuts made."""
        cuts = [0]

        def meanwhile() -> None:
            cuts[0] += 1
            by_b.append(b.trigger("t", blocking=True, timeout=WAIT))
            if cuts[0] < times:
                cutter.arm("before", meanwhile)

        cutter.arm("before", meanwhile)
        return cuts

    cuts = cut(STALE_TURNS - 1)
    carried = a.trigger("t", {"a": 1}, idempotency_key="a1")
    assert cuts[0] == STALE_TURNS - 1 and not cutter.failures
    assert carried.index == STALE_TURNS - 1  # after B's
    assert a.wait("t", carried.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert a.stats().write_failure is None
    cuts = cut(STALE_TURNS)
    with pytest.raises(errors.WriteFailed) as failed:
        a.trigger("t", {"a": 2}, idempotency_key="a2")
    assert cuts[0] == STALE_TURNS and not cutter.failures
    assert f"{STALE_TURNS} times in a row" in str(failed.value), failed.value
    assert "nothing of it was written" in str(failed.value)
    assert a.stats().write_failure is not None
    with pytest.raises(errors.WriteFailed):
        a.trigger("t")
    after = b.trigger("t", blocking=True, timeout=WAIT)
    assert after.index == 2 * STALE_TURNS
    assert [ex.index for ex in by_b] == [*range(STALE_TURNS - 1), *range(STALE_TURNS, 2 * STALE_TURNS)]
    make_engine.close(a)
    make_engine.close(b)
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 2 * STALE_TURNS + 1
    assert sorted(ex.data for ex in disk.records.values() if ex.data) == [{"a": 1}]


def test_a_turn_that_only_reads_ends_the_stale_turns_in_a_row(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter,
) -> None:
    """A's trigger is cut at COMMIT one fewer than ``STALE_TURNS`` times, B triggering the task in
    between, and before the last try B deletes it: decided again, the turn finds no task (TaskNotFound)
    and writes nothing, so it ends as a turn that only read. It went through, so the turns handed
    back before it are not in a row with the next: one more turn handed back (another task) is
    carried, not the writer's stop."""
    dbname = pg_url.rsplit("/", 1)[1]
    rec = Recorder()
    a = make_engine(cutter.url(pg_server.user, dbname), jobs={"rec": rec}, node_id="a")
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b")
    a.create_task("t", job="rec")
    a.create_task("u", job="rec")
    cuts = [0]

    def meanwhile() -> None:
        cuts[0] += 1
        if cuts[0] < STALE_TURNS - 1:
            b.trigger("t", blocking=True, timeout=WAIT)
            cutter.arm("before", meanwhile)
        else:
            b.delete_task("t")

    cutter.arm("before", meanwhile)
    with pytest.raises(errors.TaskNotFound):
        a.trigger("t")
    assert cuts[0] == STALE_TURNS - 1 and not cutter.failures
    by_b: list[Execution] = []
    carried = _cut_then(cutter, lambda: a.trigger("u"), lambda: by_b.append(b.trigger("u", blocking=True,
                                                                                   timeout=WAIT)))
    assert (by_b[0].index, carried.index) == (0, 1)
    assert a.wait("u", carried.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert a.stats().write_failure is None
    make_engine.close(a)
    make_engine.close(b)
    assert check_db(pg_url, allow_live=False)["u"].counter == 2
