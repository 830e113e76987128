"""Adversarial checks of several nodes on one PostgreSQL database: races between nodes on one
task that the other PostgreSQL tests do not make (max_executions, idempotency keys, prune,
cancel, close, deletion, reads), hostile ids across nodes, and a URL's password.

Each node is an engine of its own (its own node id) in this process, on the same database; the
races are made with barriers and gates, never with sleeps, and every test is bounded.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pykka
import pytest

from engine_helpers import WAIT, Gate, Recorder, check_db, poll_until, run_threads
from pg import PgServer
from taskengine import ExecutionStatus, errors
from taskengine.storage.interface import redact, scrub

pytestmark = pytest.mark.timeout(90)

LEASE = 2.0
#: a poll interval no test outlasts: a remote answer within a test's bounds came by notification
NEVER = 3600.0


def _nodes(make_engine: Any, url: str, n: int, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("node_lease", LEASE)
    return [make_engine(url, node_id=f"n{i}", **kwargs) for i in range(n)]


# -- max_executions ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_executions_holds_when_three_nodes_trigger_at_once(make_engine: Any, pg_url: str) -> None:
    """Three nodes, four threads each, all trigger one task limited to 25 executions at once (half
    of them blocking): exactly 25 are given indexes, 0..24, every other call is TaskNotRunnable, a
    refused call consumes nothing, and every node then sees the task COMPLETED at 25."""
    limit = 25
    rec = Recorder()
    nodes = _nodes(make_engine, pg_url, 3, jobs={"rec": rec})
    nodes[0].create_task("t", job="rec", max_executions=limit)

    def caller(c: int) -> list[Any]:
        engine = nodes[c % 3]
        out: list[Any] = []
        for i in range(12):
            try:
                ex = engine.trigger("t", data={"c": c, "i": i}, blocking=(c + i) % 2 == 0, timeout=WAIT)
                out.append(ex)
            except errors.TaskNotRunnable:
                out.append(None)
        return out

    results = run_threads(12, caller)
    results.raise_unexpected()
    acked = [ex for out in results.results for ex in out if ex is not None]
    assert sorted(ex.index for ex in acked) == list(range(limit))
    assert len({ex.id for ex in acked}) == limit
    for engine in nodes:
        task = engine.get_task("t")
        assert task.execution_count == limit and engine.next_index("t") == limit
        assert task.status.name == "COMPLETED", task.status
        with pytest.raises(errors.TaskNotRunnable):
            engine.trigger("t")
        with pytest.raises(errors.TaskNotRunnable):
            engine.trigger("t", blocking=True, timeout=WAIT)
    for ex in acked:
        assert nodes[0].wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert sorted(rec.ids()) == sorted(ex.id for ex in acked)
    for engine in nodes:
        engine.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == limit and disk.indexes() == list(range(limit))


# -- idempotency keys -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_one_key_on_three_nodes_at_once_is_one_execution(make_engine: Any, pg_url: str) -> None:
    """Twelve callers on three nodes repeat one idempotency key at once (blocking ones, then
    non-blocking ones): one execution, every caller answered with it, one run. Once it is pruned
    the key is forgotten (README: "its idempotency key is forgotten with it"): the next use, on
    any node, is a new execution at the next index, and again one only. After the task is
    deleted and created again the key starts afresh at index 0."""
    rec = Recorder()
    nodes = _nodes(make_engine, pg_url, 3, jobs={"rec": rec})
    nodes[0].create_task("t", job="rec")

    def one_execution(expected_index: int, blocking: bool) -> str:
        def repeat(c: int) -> Any:
            return nodes[c % 3].trigger("t", data={"c": c}, blocking=blocking, timeout=WAIT, idempotency_key="k")

        results = run_threads(12, repeat)
        results.raise_unexpected()
        ids = {ex.id for ex in results.results}
        assert len(ids) == 1, f"one key gave {len(ids)} executions"
        (eid,) = ids
        assert {ex.index for ex in results.results} == {expected_index}
        for engine in nodes:
            done = engine.wait("t", eid, timeout=WAIT)
            assert (done.id, done.index, done.status) == (eid, expected_index, ExecutionStatus.SUCCESS)
        return eid

    first = one_execution(0, blocking=True)
    assert nodes[1].prune("t", keep_last=0) == 1
    second = one_execution(1, blocking=False)
    assert second != first
    assert rec.ids().count(first) == 1 and rec.ids().count(second) == 1
    for engine in nodes:
        assert engine.next_index("t") == 2
    nodes[2].delete_task("t")
    nodes[1].create_task("t", job="rec")
    third = one_execution(0, blocking=True)
    assert rec.ids().count(third) == 1 and len(rec.ids()) == 3
    for engine in nodes:
        engine.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 1 and disk.idempotency == {"k": third}


def _queued_with_key(make_engine: Any, url: str) -> tuple[Any, Any, Gate, Any]:
    """Node a (one worker, held by a gate) with a blocking trigger queued under key "k"; node b."""
    gate = Gate()
    a = make_engine(url, jobs={"g": gate}, workers=1, node_id="a", node_lease=LEASE)
    b = make_engine(url, jobs={"g": Recorder()}, node_id="b", node_lease=LEASE)
    a.create_task("t", job="g")
    a.trigger("t")
    assert gate.wait_calls(1)
    queued = a.trigger_future("t", blocking=True, idempotency_key="k")
    return a, b, gate, queued


@pytest.mark.timeout(60)
def test_a_blocking_repeat_of_a_queued_key_that_another_node_stores_first(make_engine: Any, pg_url: str) -> None:
    """Two blocking callers on node a use key "k" (the second follows the first, still queued);
    node b stores "k" first. When a's queued one finds b's execution, both of a's callers get
    b's execution's outcome (the second used to wait for the queued one, which never runs)."""
    a, b, gate, queued = _queued_with_key(make_engine, pg_url)
    again = a.trigger_future("t", blocking=True, idempotency_key="k")
    assert a.stats().queued_blocking == 1  # one execution queued for both
    stored = b.trigger("t", idempotency_key="k")
    assert b.wait("t", stored.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    gate.release()
    for fut in (queued, again):
        answer = fut.get(timeout=WAIT)
        assert (answer.id, answer.index, answer.status) == (stored.id, 1, ExecutionStatus.SUCCESS)
    assert gate.count() == 1


@pytest.mark.timeout(60)
def test_a_non_blocking_repeat_of_a_queued_key_that_another_node_stores_first(make_engine: Any, pg_url: str) -> None:
    """A non-blocking repeat of a's queued execution waits until it leaves the queue (README);
    b stores "k" first, so a's queued one is dropped and never stored, and the repeat is
    answered with b's execution: an id that exists, with its index, and comes to an outcome."""
    a, b, gate, queued = _queued_with_key(make_engine, pg_url)
    repeat = a.trigger_future("t", idempotency_key="k")
    assert a.stats().queued_blocking == 1  # both triggers handled (one counter actor, in order)
    with pytest.raises(pykka.Timeout):
        repeat.get(timeout=0)
    stored = b.trigger("t", idempotency_key="k")
    gate.release()
    assert queued.get(timeout=WAIT).id == stored.id
    answer = repeat.get(timeout=WAIT)
    assert (answer.id, answer.index) == (stored.id, stored.index) == (stored.id, 1)
    for engine in (a, b):
        done = engine.wait("t", answer.id, timeout=WAIT)
        assert (done.id, done.index, done.status) == (stored.id, 1, ExecutionStatus.SUCCESS)


# -- prune while other nodes trigger and run --------------------------------------------------


@pytest.mark.timeout(90)
def test_prune_on_one_node_while_two_others_trigger_and_run(make_engine: Any, pg_url: str) -> None:
    """Node 0 prunes (keep_last=0, and before_index past the counter) in a loop while nodes 1 and
    2 trigger the task and run its executions: the mark never passes an unfinished execution
    (every acknowledged one runs, exactly once, and reads as finished or pruned-after-finishing),
    no index is handed out twice or skipped, and the mark never goes back."""
    rec = Recorder()
    pruner, *workers = _nodes(make_engine, pg_url, 3, jobs={"rec": rec})
    pruner.create_task("t", job="rec")
    stop = threading.Event()
    marks: list[int] = []
    pruned = [0]

    def prune_loop() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if i % 2:
                pruned[0] += pruner.prune("t", keep_last=0)
            else:
                pruned[0] += pruner.prune("t", before_index=10**9)
            marks.append(pruner.get_task("t").prune_mark)

    thread = threading.Thread(target=prune_loop, daemon=True)
    thread.start()
    try:
        def caller(c: int) -> list[Any]:
            engine = workers[c % 2]
            return [engine.trigger("t", data={"c": c, "i": i}, blocking=i % 3 == 0, timeout=WAIT)
                    for i in range(30)]

        results = run_threads(6, caller)
    finally:
        stop.set()
        thread.join(WAIT)
    results.raise_unexpected()
    acked = [ex for out in results.results for ex in out]
    for ex in acked:
        try:
            done = workers[0].wait("t", ex.id, timeout=WAIT)
        except errors.ExecutionNotFound:
            continue  # finished, then pruned
        assert done.status is ExecutionStatus.SUCCESS, done
    poll_until("every acknowledged execution ran", lambda: rec.count() >= len(acked))
    assert sorted(rec.ids()) == sorted(ex.id for ex in acked), "an execution ran twice, or never"
    assert sorted(ex.index for ex in acked) == list(range(len(acked)))
    assert marks == sorted(marks), "the prune mark went back"
    pruned[0] += pruner.prune("t", keep_last=0)
    assert pruned[0] == len(acked) and pruner.get_task("t").prune_mark == len(acked)
    for engine in (pruner, *workers):
        engine.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == disk.prune_mark == len(acked) and not disk.records


# -- cancel and wait across nodes -------------------------------------------------------------


def _pending_on(make_engine: Any, url: str) -> tuple[Any, Any, Gate, Any]:
    """Node a (one worker, held by a gate) with one more PENDING execution it will run next, and
    node b, which has no job registered (it runs nothing)."""
    gate = Gate()
    a = make_engine(url, jobs={"g": gate}, workers=1, node_id="a", node_lease=LEASE, poll_interval=NEVER)
    b = make_engine(url, node_id="b", node_lease=LEASE, poll_interval=NEVER)
    a.create_task("t", job="g")
    a.trigger("t")
    assert gate.wait_calls(1)
    queued = a.trigger("t")
    return a, b, gate, queued


@pytest.mark.timeout(60)
def test_cancel_on_another_node_of_a_pending_execution(make_engine: Any, pg_url: str) -> None:
    """Node b cancels a PENDING execution that node a made and holds to run: it is CANCELLED (it
    has not started), a's waiter is answered so, and a never runs it."""
    a, b, gate, queued = _pending_on(make_engine, pg_url)
    waiting: list[Any] = []
    waiter = threading.Thread(target=lambda: waiting.append(a.wait("t", queued.id, timeout=WAIT)), daemon=True)
    waiter.start()
    poll_until("a's waiter waits", lambda: a.stats().waiters >= 1)
    cancelled = b.cancel("t", queued.id)
    assert (cancelled.id, cancelled.index, cancelled.status) == (queued.id, 1, ExecutionStatus.CANCELLED)
    waiter.join(WAIT)
    assert [(w.id, w.status) for w in waiting] == [(queued.id, ExecutionStatus.CANCELLED)]
    gate.release()
    assert gate.wait_returned(1)
    poll_until("a let go of the cancelled execution", lambda: a.stats().pending == 0)
    assert gate.count() == 1, "node a ran an execution node b had cancelled"
    assert a.get_execution("t", queued.id).status is ExecutionStatus.CANCELLED
    a.close()
    b.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert [disk.records[i].status for i in (0, 1)] == [ExecutionStatus.SUCCESS, ExecutionStatus.CANCELLED]


@pytest.mark.timeout(60)
def test_cancel_elsewhere_of_a_running_execution_and_a_wait_for_a_cancel_elsewhere(
    make_engine: Any, pg_url: str
) -> None:
    """A running execution cancelled from another node is returned unchanged and finishes as it
    runs; node a's own cancel of its PENDING execution answers a waiter on node b at once (by
    notification: b never polls within the test)."""
    a, b, gate, queued = _pending_on(make_engine, pg_url)
    (running_id,) = [c[0] for c in gate.calls]
    running = b.cancel("t", running_id)
    assert running.status is ExecutionStatus.RUNNING and running.index == 0
    waiting: list[Any] = []
    waiter = threading.Thread(target=lambda: waiting.append(b.wait("t", queued.id, timeout=WAIT)), daemon=True)
    waiter.start()
    poll_until("b's waiter waits", lambda: b.stats().waiters >= 1)
    assert a.cancel("t", queued.id).status is ExecutionStatus.CANCELLED
    waiter.join(WAIT)
    assert [(w.id, w.status) for w in waiting] == [(queued.id, ExecutionStatus.CANCELLED)]
    gate.release()
    assert b.wait("t", running_id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert gate.count() == 1


@pytest.mark.timeout(90)
def test_cancels_on_one_node_race_starts_on_another(make_engine: Any, pg_url: str) -> None:
    """Node a triggers executions and starts them at once (8 workers) while node b cancels each
    as soon as it is acknowledged: each is either cancelled and never runs, or runs exactly once
    and b's cancel returns it RUNNING or finished; what b was told is what is stored. a's
    executors are held at first, so its triggers make PENDING executions (an idle executor's
    would start in the trigger's own write), and let go a third of the way: the queue they
    then drain races b's cancels."""
    import queue

    from engine_helpers import Gate

    rec, hold = Recorder(), Gate()
    workers = 8
    a = make_engine(pg_url, jobs={"rec": rec, "hold": hold}, workers=workers, node_id="a", node_lease=LEASE)
    b = make_engine(pg_url, node_id="b", node_lease=LEASE)
    a.create_task("t", job="rec")
    a.create_task("busy", job="hold")
    for _ in range(workers):
        a.trigger("busy")
    assert hold.wait_calls(workers)
    acked: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    n = 150

    def role(i: int) -> list[Any]:
        if i == 0:
            for k in range(n):
                if k == n // 3:
                    hold.release()
                acked.put(a.trigger("t").id)
            for _ in range(3):
                acked.put(None)
            return []
        answers = []
        while (eid := acked.get(timeout=WAIT)) is not None:
            answers.append(b.cancel("t", eid))
        return answers

    results = run_threads(4, role)
    results.raise_unexpected()
    answers = {ex.id: ex for out in results.results for ex in out}
    assert len(answers) == n
    for eid, told in answers.items():
        final = a.wait("t", eid, timeout=WAIT)
        if told.status is ExecutionStatus.CANCELLED:
            assert final == told, (told, final)
        else:
            assert told.status in (ExecutionStatus.RUNNING, ExecutionStatus.SUCCESS), told
            assert final.status is ExecutionStatus.SUCCESS, final
    poll_until("a let go of every execution", lambda: a.stats().pending == 0)
    ran = rec.ids()
    # (here about half are cancelled first, the rest started first: the race was run)
    assert any(told.status is ExecutionStatus.CANCELLED for told in answers.values())
    assert len(ran) == len(set(ran)), "an execution ran twice"
    assert set(ran) == {eid for eid, told in answers.items() if told.status is not ExecutionStatus.CANCELLED}
    a.close()
    b.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == n


# -- close of a node others wait on -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_node_closing_answers_the_waits_of_other_nodes(make_engine: Any, pg_url: str) -> None:
    """Node a runs one execution (held) and holds one more PENDING; node b waits for both. a
    closes without waiting for its job: the running one is finished as interrupted at close and
    b's waiter hears of it by notification; the PENDING one, left on the database, is run by b
    once b registers the job, and b's other waiter returns it."""
    a, b, gate, queued = _pending_on(make_engine, pg_url)
    rec = Recorder()
    (running_id,) = [c[0] for c in gate.calls]
    answers: dict[str, Any] = {}

    def wait_for(eid: str) -> None:
        try:
            answers[eid] = b.wait("t", eid, timeout=WAIT)
        except errors.EngineError as e:
            answers[eid] = e

    waiters = [threading.Thread(target=wait_for, args=(eid,), daemon=True) for eid in (running_id, queued.id)]
    for w in waiters:
        w.start()
    poll_until("b's waiters wait", lambda: b.stats().waiters >= 2)
    a.close(timeout=0)
    waiters[0].join(WAIT)
    assert not waiters[1].is_alive() or queued.id not in answers
    b.register_job("g", rec)  # b finds the PENDING one a left, and runs it
    waiters[1].join(WAIT)
    interrupted, ran = answers[running_id], answers[queued.id]
    assert interrupted.status is ExecutionStatus.FAILED and interrupted.error.startswith("interrupted"), interrupted
    assert (ran.status, ran.result) == (ExecutionStatus.SUCCESS, {"index": 1}), ran
    assert rec.ids() == [queued.id]
    gate.release()
    assert gate.wait_returned(1)
    assert b.get_execution("t", running_id) == interrupted  # the late completion stored nothing
    b.close()
    check_db(pg_url, allow_live=False)


# -- deletion with a stale node ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_stale_node_follows_a_task_created_again_with_other_settings(make_engine: Any, pg_url: str) -> None:
    """Node b has the task cached (it triggered it); node a deletes it and creates it again with
    another job and max_executions=2. b's next calls follow the new incarnation: its limit, its
    job (b has not registered it: UnknownJob, nothing consumed), index 0 again."""
    rec, other = Recorder(), Recorder()
    a = make_engine(pg_url, jobs={"rec": rec, "other": other}, node_id="a", node_lease=LEASE)
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b", node_lease=LEASE)
    a.create_task("t", job="rec")
    for _ in range(3):
        b.trigger("t", blocking=True, timeout=WAIT)
    assert b.get_task("t").execution_count == 3
    a.delete_task("t")
    a.create_task("t", job="other", max_executions=2)
    with pytest.raises(errors.UnknownJob):
        b.trigger("t")
    assert b.next_index("t") == 0
    b.register_job("other", other)
    assert [b.trigger("t").index for _ in range(2)] == [0, 1]
    with pytest.raises(errors.TaskNotRunnable):
        b.trigger("t")
    task = b.get_task("t")
    assert (task.job, task.max_executions, task.execution_count) == ("other", 2, 2)
    poll_until("both ran", lambda: other.count() >= 2)
    a.close()
    b.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 2 and disk.indexes() == [0, 1]


# -- reads --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reads_on_every_node_never_consume_an_index(make_engine: Any, pg_url: str) -> None:
    """Reads (get_execution, list_executions, get_task, next_index, list_tasks, wait) from threads
    on three nodes at once, of existing and unknown executions: nothing changes, next_index stays
    where the triggers left it, and the next trigger gets exactly that index."""
    nodes = _nodes(make_engine, pg_url, 3, jobs={"rec": Recorder()})
    nodes[0].create_task("t", job="rec")
    made = [nodes[i % 3].trigger("t", blocking=True, timeout=WAIT) for i in range(5)]

    def reader(c: int) -> None:
        engine = nodes[c % 3]
        for i in range(20):
            ex = made[i % 5]
            assert engine.get_execution("t", ex.id).index == ex.index
            assert engine.wait("t", ex.id, timeout=WAIT).index == ex.index
            assert [e.index for e in engine.list_executions("t", after=2)] == [3, 4]
            assert [e.index for e in engine.list_executions("t", after=2, newest_first=True)] == [1, 0]
            assert engine.next_index("t") == 5 and engine.get_task("t").execution_count == 5
            with pytest.raises(errors.ExecutionNotFound):
                engine.get_execution("t", f"01J{i:023d}")
            assert [t.id for t in engine.list_tasks()] == ["t"]

    run_threads(6, reader).raise_unexpected()
    for engine in nodes:
        assert engine.next_index("t") == 5
    assert nodes[2].trigger("t").index == 5


# -- hostile ids across nodes -------------------------------------------------------------------

HOSTILE = ["it's", 'say "hi"', "back\\slash\\", "100%", "%s", "%(x)s", "$1", "a:b/c", "'); DROP TABLE x; --",
           "ünïcødé ✓ 日本", "\U0001f600", "a" * 256]


@pytest.mark.timeout(60)
def test_hostile_ids_across_nodes(make_engine: Any, pg_url: str) -> None:
    """Ids that quote, escape or format, created on one node (nodes with such ids too), triggered
    on another with hostile keys and data, run on either, waited for on a third; NUL in any id is InvalidArgument on
    every node, before anything reaches the database (so no writer is ever failed by one)."""
    rec = Recorder(lambda ctx: {"data": ctx.data, "task": ctx.task_id})
    nodes = [make_engine(pg_url, jobs={"rec": rec}, node_id=node_id, node_lease=LEASE)
             for node_id in ("it's %s", 'back\\slash "%(x)s"', "ünï ✓ 日本 '); --")]
    for k, tid in enumerate(HOSTILE):
        nodes[k % 3].create_task(tid, job="rec", config={"id": tid})
    for k, tid in enumerate(HOSTILE):
        ex = nodes[(k + 1) % 3].trigger(tid, data={"id": tid, "nul": "a\x00b"}, idempotency_key=tid + "\\%'")
        done = nodes[(k + 2) % 3].wait(tid, ex.id, timeout=WAIT)
        assert done.result == {"data": {"id": tid, "nul": "a\x00b"}, "task": tid}
        assert nodes[k % 3].trigger(tid, idempotency_key=tid + "\\%'").id == ex.id
    nul = "t\x00x"
    for engine in nodes:
        for call in (lambda e: e.create_task(nul, job="rec"), lambda e: e.trigger(nul),
                     lambda e: e.get_execution("t", "01J\x00"), lambda e: e.get_execution(nul, "x"),
                     lambda e: e.cancel(HOSTILE[0], "01J\x00"), lambda e: e.wait(HOSTILE[0], "01J\x00", timeout=1),
                     lambda e: e.list_tasks(after=nul), lambda e: e.list_executions(nul),
                     lambda e: e.delete_task(nul), lambda e: e.prune(nul, keep_last=1),
                     lambda e: e.register_job("j\x00", rec)):
            with pytest.raises(errors.InvalidArgument):
                call(engine)
        assert engine.stats().write_failure is None
    assert sorted(t.id for t in nodes[1].list_tasks(limit=100)) == sorted(HOSTILE)
    for k, tid in enumerate(HOSTILE):
        nodes[k % 3].delete_task(tid)
    for engine in nodes:
        engine.close()
    assert check_db(pg_url, allow_live=False) == {}


# -- a URL's password -------------------------------------------------------------------------

SECRET = "s3cr3t"


@pytest.mark.parametrize("password", [f"pa#{SECRET}", f"pa?{SECRET}", f"{SECRET}:x", f"{SECRET}&x=y"])
def test_a_password_with_url_delimiters_is_never_shown(
    make_engine: Any, pg_server: PgServer, pg_url: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq reads the user info up to the first ``@`` (before any ``/``), so a password may hold
    ``#`` or ``?`` unescaped; the engine connects with it (the test server trusts every password),
    and neither its path, nor stats, nor a log line, nor an error shows any of it."""
    caplog.set_level(logging.DEBUG)
    url = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:{password}@", 1)
    for shown in (redact(url), redact(url + "?application_name=x"),
                  redact(pg_url + "?password=" + password.replace("%", "%25"))):
        assert SECRET not in shown, shown
    engine = make_engine(url, jobs={"rec": Recorder()}, node_id="pw", node_lease=LEASE)
    engine.create_task("t", job="rec")
    engine.trigger("t", blocking=True, timeout=WAIT)
    assert SECRET not in engine.path and SECRET not in repr(engine)
    assert SECRET not in str(engine.stats().to_json())
    make_engine.close(engine)
    refused_url = f"postgresql://u:{password}@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(errors.StorageError) as refused:
        make_engine(refused_url)
    assert SECRET not in str(refused.value)
    assert SECRET not in caplog.text


@pytest.mark.parametrize("url", [f"postgresql://u:{SECRET}@[::1/db", f"postgresql://u:{SECRET}%@h/db", f"postgresql://u:{SECRET}@h/db?bogus=1",
                                 f"postgresql://u@h/db?password={SECRET}&bogus=1"])
def test_a_malformed_url_is_refused_without_its_password(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """libpq's message for a URL it cannot parse quotes the whole URL: the engine's error must not."""
    from taskengine import Engine

    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.EngineError) as refused:
        Engine.open(url)
    assert SECRET not in str(refused.value), refused.value
    assert SECRET not in caplog.text


@pytest.mark.parametrize("password", [f"pa#{SECRET}", f"pa?{SECRET}"])
def test_the_tools_never_show_a_password_with_url_delimiters(
    make_engine: Any, pg_server: PgServer, pg_url: str, password: str, tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """inspect, replay and copy on a URL whose password holds ``#`` or ``?``; and a URL libpq
    cannot parse: one line on stderr, no password in any output."""
    from taskengine.tools.cli import main

    url = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:{password}@", 1)
    engine = make_engine(url, jobs={"rec": Recorder()}, node_id="tools", node_lease=LEASE)
    engine.create_task("t", job="rec")
    engine.trigger("t", blocking=True, timeout=WAIT)
    make_engine.close(engine)
    assert main(["inspect", url]) == 0
    assert main(["replay", url]) == 0
    assert main(["inspect", url, "--task", "nope"]) == 1
    assert main(["copy", url, str(tmp_path / "copy")]) == 0
    assert main(["replay", f"postgresql://u:{password}@127.0.0.1:1/none?connect_timeout=2"]) == 2
    assert main(["replay", f"postgresql://u:{SECRET}@[::1/none"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err, out + err
    assert "***" in out + err


# -- a node killed with PENDING executions another node cancels --------------------------------


@pytest.mark.timeout(60)
def test_a_killed_nodes_pending_executions_cancelled_from_another_node(make_engine: Any, pg_url: str) -> None:
    """A node process makes four executions (two RUNNING, two PENDING) and is SIGKILLed. Another
    node (without the job: it runs nothing) cancels the PENDING ones, before and after the kill,
    and gets them CANCELLED; its cancel of a RUNNING one returns it unchanged. A third node with
    the job then runs none of the cancelled ones, and the RUNNING ones are reaped as lost."""
    from engine_helpers import Child

    canceller = make_engine(pg_url, node_id="canceller", node_lease=LEASE)
    child = Child("node_child.py", pg_url, "doomed", "t", "4")
    try:
        acked: list[str] = []
        running: set[str] = set()
        while len(acked) < 4 or len(running) < 2:
            word, *rest = child.readline().split()
            if word == "ACK":
                acked.append(rest[0])
            elif word == "RUNNING":
                running.add(rest[0])
        pending = [eid for eid in acked if eid not in running]
        first = canceller.cancel("t", pending[0])  # the node that holds it to run is alive
        assert first.status is ExecutionStatus.CANCELLED, first
        for eid in running:
            assert canceller.cancel("t", eid).status is ExecutionStatus.RUNNING
        child.kill9()
    finally:
        child.finish()
    second = canceller.cancel("t", pending[1])  # its node is dead: it belongs to no node
    assert second.status is ExecutionStatus.CANCELLED, second
    rec = Recorder()
    survivor = make_engine(pg_url, jobs={"hold": rec}, node_id="survivor", node_lease=LEASE)
    lost = "interrupted: node doomed lost"
    poll_until("the killed node's running executions were reaped", lambda: all(
        survivor.get_execution("t", eid).error == lost for eid in running))
    for eid in pending:
        assert survivor.wait("t", eid, timeout=WAIT).status is ExecutionStatus.CANCELLED
    assert survivor.stats().pending == 0 and rec.count() == 0, rec.ids()
    survivor.close()
    canceller.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 4


# -- a node paused in the middle of a turn ------------------------------------------------------

#: the server processes holding a per-task advisory lock (a turn's, storage/pg_writer.py) idle in
#: their transaction: the server has done all the node sent and waits for it. (One "active" may be
#: running the turn's COMMIT, sent before the node stopped: the turn then ends all the same.)
_TASK_LOCK_HOLDERS = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                      "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s "
                      "AND l.objsubid = 2 AND a.state = 'idle in transaction'")


@pytest.mark.timeout(90)
def test_a_node_paused_inside_a_turn_holds_nobody_up_and_acknowledges_nothing_after(
    make_engine: Any, pg_url: str
) -> None:
    """A node process triggering one task from four threads is SIGSTOPped while its writer is
    inside a turn's transaction (holding the task's lock). The server ends that session after the
    lease (idle_in_transaction_session_timeout), so another node's trigger of the task goes on,
    and the paused node is reaped. After SIGCONT, every trigger of the paused node fails with
    WriteFailed (the one whose transaction was ended: rolled back, nothing acknowledged), and
    every execution it acknowledged, before or after the pause, is stored at its index."""
    import os
    import signal

    import psycopg

    from engine_helpers import Child
    from taskengine.storage.pg_writer import TASK_LOCKS
    from taskengine.tools.stress.nodes import wait_stopped

    child = Child("trigger_child.py", pg_url, "paused", "t", "4", "2")
    pid = child.proc.pid
    try:
        child.expect("READY")
        with psycopg.connect(pg_url, autocommit=True) as look:
            for _ in range(500):
                child.expect("ACK")  # it is triggering
                os.kill(pid, signal.SIGSTOP)
                wait_stopped(pid)  # SIGSTOP reaches a thread running on another core a moment later
                if look.execute(_TASK_LOCK_HOLDERS, (TASK_LOCKS,)).fetchone() != (0,):
                    break
                os.kill(pid, signal.SIGCONT)
            else:
                raise AssertionError("never caught the node inside a turn")
            try:
                other = make_engine(pg_url, jobs={"noop": Recorder()}, node_id="other", node_lease=LEASE)
                mine = [other.trigger("t") for _ in range(3)]  # the first waits for the server to end the turn
                poll_until("the paused node was reaped", lambda: look.execute(
                    "SELECT NOT alive FROM taskengine.nodes WHERE id = 'paused'").fetchone() == (True,))
                mine += [other.trigger("t") for _ in range(3)]
            finally:
                os.kill(pid, signal.SIGCONT)
        refusals = [child.expect("ERR") for _ in range(4)]
        child.expect("DONE")
    finally:
        child.finish()
    # the writer stops on the first failure it meets: the fence (its lease is gone), or the server's
    # end of the session it held idle in a transaction (rolled back: nothing of it was acknowledged)
    assert all(r.startswith("ERR WriteFailed") and ("lost its lease" in r or "idle-in-transaction" in r)
               for r in refusals), refusals
    acked = dict(line.split()[1:] for line in child.seen if line.startswith("ACK "))
    assert acked, "the paused node acknowledged nothing"
    other.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    for eid, index in acked.items():
        assert disk.records[int(index)].id == eid, f"acknowledged execution {eid} is not stored at {index}"
    for ex in mine:
        assert disk.records[ex.index].id == ex.id
    assert disk.counter == len(acked) + len(mine)


# -- a database that cannot store every task id -------------------------------------------------


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII", "client LATIN1"])
def test_a_database_not_in_utf8_is_refused_at_open(
    pg_server: PgServer, encoding: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a LATIN1 database a task id such as "日本" killed the counter actor (a raw
    UnicodeEncodeError in pykka: every task of that actor hung), and on SQL_ASCII psycopg reads
    text as bytes (a raw AttributeError reached the caller). Such a database, or a client encoding
    other than UTF8 set by the URL, is refused at open with a StorageError saying what to do;
    nothing is created in it, and the tools refuse it in one line."""
    import psycopg

    from taskengine import Engine, storage
    from taskengine.tools.cli import main

    client = encoding.startswith("client")
    name = f"enc_{encoding.replace(' ', '_').lower()}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{'UTF8' if client else encoding}' "
                     "LC_COLLATE 'C' LC_CTYPE 'C'")
    url = pg_server.url(name) + ("?client_encoding=LATIN1" if client else "")
    with pytest.raises(errors.StorageError, match="needs both to be UTF8"):
        Engine.open(url, jobs={"j": Recorder()}, node_id="enc", node_lease=LEASE)
    with pytest.raises(storage.errors.StorageError, match="UTF8"):
        storage.open_store(url)
    assert main(["replay", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "UTF8" in err, err
    with psycopg.connect(pg_server.url(name)) as conn:
        assert conn.execute("SELECT to_regclass('taskengine.meta')").fetchone() == (None,)


# -- an idempotency key too big for the database's index ----------------------------------------


def _cjk(rnd: Any, n: int) -> str:
    """``n`` random CJK characters (3 bytes each in UTF-8; random, so an index cannot compress them)."""
    return "".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(n))


@pytest.mark.timeout(60)
def test_a_key_of_many_bytes_is_refused_and_the_node_writes_on(make_engine: Any, pg_url: str) -> None:
    """A key of 1,024 characters was allowed, but PostgreSQL indexes it with the task id, and an
    index entry is limited to 2,704 bytes: a key of 1,024 random CJK characters (3,072 bytes)
    failed the node's writer for good (every later write of every task refused until reopened).
    A key is now also at most 1,024 bytes of UTF-8: a longer one is InvalidArgument before
    anything is sent, nothing is consumed, and the node writes on; a key of 1,024 bytes next to a
    task id of 256 four-byte characters (1,024 bytes) fits, blocking or not."""
    import random

    rnd = random.Random(7)
    nodes = _nodes(make_engine, pg_url, 2, jobs={"rec": Recorder()})
    tid = "\U0001f600" * 256
    nodes[0].create_task(tid, job="rec")
    for blocking in (False, True):
        with pytest.raises(errors.InvalidArgument, match="1024 bytes"):
            nodes[0].trigger(tid, idempotency_key=_cjk(rnd, 1024), blocking=blocking, timeout=WAIT)
        with pytest.raises(errors.InvalidArgument, match="1024 bytes"):
            nodes[1].trigger(tid, idempotency_key=_cjk(rnd, 341) + "éé", blocking=blocking, timeout=WAIT)
    assert nodes[1].next_index(tid) == 0
    for k, node in enumerate(nodes):
        key = _cjk(rnd, 341) + "a"  # 1,024 bytes
        ex = node.trigger(tid, idempotency_key=key, blocking=k == 1, timeout=WAIT)
        assert ex.index == k
        assert nodes[1 - k].trigger(tid, idempotency_key=key).id == ex.id
    for node in nodes:
        assert node.stats().write_failure is None
        assert node.trigger(tid).index is not None


# -- a role that may read but not write ---------------------------------------------------------


def test_a_role_that_cannot_write_is_refused_at_open_with_a_storage_error(pg_server: PgServer, pg_url: str) -> None:
    """A role with USAGE and SELECT only (no INSERT or UPDATE on taskengine.nodes): its node cannot
    join. That used to reach the caller as a raw psycopg OperationalError ("the connection is
    closed": the join's error was replaced by a setting made on the connection it had closed);
    it is a StorageError naming the refusal. The tools, which only read, still read it."""
    import psycopg

    from taskengine import Engine
    from taskengine.tools.cli import main

    owner = Engine.open(pg_url, jobs={"rec": Recorder()}, node_id="owner", node_lease=LEASE)
    try:
        owner.create_task("t", job="rec")
    finally:
        owner.close()
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute(f'GRANT CONNECT ON DATABASE "{name}" TO reader')
        conn.execute("GRANT USAGE ON SCHEMA taskengine TO reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA taskengine TO reader")
    url = pg_url.replace(f"{pg_server.user}@", "reader@", 1)
    with pytest.raises(errors.StorageError, match="cannot join .*permission denied"):
        Engine.open(url, node_id="reader-node", node_lease=LEASE)
    assert main(["replay", url]) == 0


# a password with an "@" left unescaped, and a password parameter holding one

AT_URLS = [
    f"postgresql://u:pa@{SECRET}@127.0.0.1:1/db",  # libpq: password "pa", host "s3cr3t@127.0.0.1"
    f"postgresql://u:{SECRET}@x@h/db",
    f"postgresql://u@127.0.0.1:1?password=pa@{SECRET}",  # libpq: password "pa@s3cr3t"
    f"postgresql://127.0.0.1:1?password=pa@{SECRET}",  # libpq: user info "127.0.0.1:1?password=pa"
    f"postgresql://h?password=pa@{SECRET}&dbname=d",
    f"postgresql://u@h/db?password=pa@{SECRET}",
]


@pytest.mark.parametrize("url", AT_URLS)
def test_a_password_holding_an_at_is_hidden_however_the_url_reads(url: str) -> None:
    """Hidden as libpq reads the URL and as its writer may have meant it; a driver's message
    quoting what libpq took for the host (the rest of a password) is scrubbed too."""
    from psycopg.conninfo import conninfo_to_dict

    assert SECRET not in redact(url), redact(url)
    assert "***" in redact(url)
    host = conninfo_to_dict(url).get("host")  # libpq's reading
    assert SECRET not in scrub(f"failed to resolve host '{host}' ({url})", url)


@pytest.mark.parametrize("password", [f"pa@{SECRET}", f"{SECRET}@x"])
def test_an_unescaped_at_in_a_password_is_refused_and_never_shown(
    make_engine: Any, pg_server: PgServer, pg_url: str, password: str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """libpq ends the user info at the first ``@`` and takes the rest of the password for the
    host (and psycopg's error quotes it): such a URL, which cannot connect as meant, is refused
    before any driver sees it, saying to write the ``@`` as ``%40``, by the engine and the
    tools, and nothing shows the password. Written so, it works."""
    from taskengine.tools.cli import main

    caplog.set_level(logging.DEBUG)
    url = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:{password}@", 1)
    with pytest.raises(errors.StorageError) as refused:
        make_engine(url)
    assert "%40" in str(refused.value) and SECRET not in str(refused.value), refused.value
    assert main(["inspect", url]) == 2
    assert main(["replay", url]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and err.count("%40") == 2 and len(err.strip().splitlines()) == 2, err
    escaped = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:{password.replace('@', '%40')}@", 1)
    engine = make_engine(escaped, jobs={"rec": Recorder()}, node_id="pw", node_lease=LEASE)
    engine.create_task("t", job="rec")
    engine.trigger("t", blocking=True, timeout=WAIT)
    assert SECRET not in engine.path
    make_engine.close(engine)
    assert SECRET not in caplog.text


def test_a_password_parameter_holding_an_at_works_and_is_never_shown(
    make_engine: Any, pg_server: PgServer, pg_url: str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``?password=`` with an ``@`` in a URL with no path: libpq reads the user info up to the
    URL's first ``@``, so the parameter is a parameter, and the engine and the tools connect; no
    path, stats, log line or output shows any of the password."""
    from taskengine.tools.cli import main

    caplog.set_level(logging.DEBUG)
    dbname = pg_url.rsplit("/", 1)[1]
    url = f"postgresql://{pg_server.user}@127.0.0.1:{pg_server.port}?dbname={dbname}&password=pa@{SECRET}"
    engine = make_engine(url, jobs={"rec": Recorder()}, node_id="q", node_lease=LEASE)
    engine.create_task("t", job="rec")
    engine.trigger("t", blocking=True, timeout=WAIT)
    assert SECRET not in engine.path and SECRET not in str(engine.stats().to_json())
    make_engine.close(engine)
    assert main(["inspect", url]) == 0
    assert main(["replay", url]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "***" in out + err, out + err
    assert SECRET not in caplog.text
