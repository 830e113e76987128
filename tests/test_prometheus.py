"""The Prometheus extra: scrape a real HTTP endpoint after a known workload and check the numbers."""

from __future__ import annotations

import os
import urllib.request

import pytest

from engine_helpers import WAIT, Gate
from taskengine import JobContext, errors

if os.environ.get("CI") != "true":
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from taskengine.prometheus import PrometheusMetrics  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def fail(ctx: JobContext) -> None:
    raise ValueError("no")


def test_scraped_numbers_match_a_known_workload(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"ok": lambda ctx: ctx.index, "fail": fail, "gate": gate}, workers=1)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(engine, registry=registry, labels={"node": "n1"})
    host, port = metrics.serve(port=0)
    assert host == "127.0.0.1"
    try:
        for t, job in (("ok", "ok"), ("fail", "fail"), ("gate", "gate")):
            engine.create_task(t, job=job)
        done = [engine.trigger("ok") for _ in range(10)]  # 10 non-blocking that succeed
        for ex in done:
            engine.wait("ok", ex.id, timeout=WAIT)
        for _ in range(3):  # 3 blocking that fail
            engine.trigger("fail", blocking=True, timeout=WAIT)
        engine.trigger("gate")  # 1 running, held
        assert gate.wait_calls(1)
        queued = [engine.trigger("gate") for _ in range(4)]  # 4 pending behind it
        for ex in queued[:2]:  # 2 of them cancelled
            engine.cancel("gate", ex.id)
        assert engine.prune("ok", keep_last=4) == 6
        stats = engine.stats()
        got = scrape(f"http://{host}:{port}/metrics")
    finally:
        metrics.close()
        gate.release()

    node = (("node", "n1"),)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted({**dict(node), **labels}.items())))]

    assert value("taskengine_executions_triggered_total") == 10 + 3 + 1 + 4
    assert value("taskengine_executions_finished_total", status="SUCCESS") == 10
    assert value("taskengine_executions_finished_total", status="FAILED") == 3
    assert value("taskengine_executions_finished_total", status="CANCELLED") == 2
    assert value("taskengine_executions_pruned_total") == 6 == stats.pruned
    assert value("taskengine_executions_running") == 1
    assert value("taskengine_executions_pending") == 3  # the running one and the 2 waiting, not the cancelled
    assert value("taskengine_executions_queued") == 4  # cancelled ones are skipped when taken
    # histograms: one observation per non-blocking ack, per start, per finish of a job that ran
    assert value("taskengine_ack_latency_seconds_count") == 10 + 1 + 4
    assert value("taskengine_queue_wait_seconds_count") == 10 + 3 + 1
    assert value("taskengine_run_seconds_count", status="SUCCESS") == 10
    assert value("taskengine_run_seconds_count", status="FAILED") == 3
    assert value("taskengine_run_seconds_count", status="CANCELLED") == 0  # never started
    assert value("taskengine_ack_latency_seconds_bucket", le="+Inf") == 15
    assert 0 < value("taskengine_ack_latency_seconds_sum") < 15 * WAIT
    # group commit: every write seen, and the changes they carried
    assert value("taskengine_write_batch_size_count") == stats.writes == value("taskengine_writes_total")
    assert value("taskengine_write_batch_size_sum") == stats.changes_written == value(
        "taskengine_changes_written_total")
    assert value("taskengine_write_seconds_count") == stats.writes
    # closed: the server is gone and the engine no longer observed
    assert engine._committer.on_write is None and not engine._hooks.active
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_render_and_a_closed_engine(make_engine, db_path):
    engine = make_engine(db_path, jobs={"ok": lambda ctx: None})
    metrics = PrometheusMetrics(engine, registry=None)
    engine.create_task("t", job="ok")
    engine.trigger("t", blocking=True, timeout=WAIT)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain") and b"taskengine_executions_triggered_total 1.0" in body
    make_engine.close(engine)
    body, _ = metrics.render()  # the histograms still say what happened; no stats from a closed engine
    assert b"taskengine_queue_wait_seconds_count 1.0" in body
    assert b"taskengine_executions_triggered_total" not in body.replace(b"# HELP", b"").replace(b"# TYPE", b"")


def test_two_engines_share_a_registry_with_labels(make_engine, fresh_path):
    registry = CollectorRegistry()
    a = make_engine(fresh_path("a"))
    b = make_engine(fresh_path("b"))
    PrometheusMetrics(a, registry=registry, labels={"node": "a"})
    with pytest.raises(ValueError):  # the same names without labels: prometheus_client refuses
        PrometheusMetrics(b, registry=registry)
    with pytest.raises(errors.InvalidArgument):
        PrometheusMetrics(b, registry=None, namespace="not a name")
