"""Prometheus metrics of an engine (the optional extra: ``pip install 'taskengine[prometheus]'``).

``PrometheusMetrics(engine)`` is both a prometheus_client collector (registered in the registry
given, prometheus_client's default one unless told otherwise) and a :class:`taskengine.Hooks`
attached to the engine. Counts and gauges are read from ``engine.stats()`` when Prometheus
scrapes, so they cost the engine nothing in between; the histograms are observed by the hooks,
one observation per state change or write. ``serve()`` starts a small HTTP endpoint for them.

Metrics (``taskengine_`` is the default ``namespace``)::

    taskengine_executions_triggered_total               counter
    taskengine_executions_finished_total{status}        counter: SUCCESS, FAILED, CANCELLED
    taskengine_executions_queued / _running / _pending  gauges (see EngineStats)
    taskengine_executions_queued_blocking, taskengine_waiters           gauges
    taskengine_ack_latency_seconds                       histogram: non-blocking trigger call -> index durable
    taskengine_queue_wait_seconds                        histogram: trigger call -> job started
    taskengine_run_seconds{status}                       histogram: job started -> execution finished
    taskengine_write_batch_size                          histogram: changes per database write (group commit)
    taskengine_write_seconds                             histogram: one write, its fsync included
    taskengine_writes_total, taskengine_changes_written_total           counters
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import Collector
except ImportError as e:  # an optional extra: say which
    raise ImportError(f"taskengine.prometheus needs prometheus_client ({e}): pip install 'taskengine[prometheus]'",
                      name=e.name) from None

from taskengine.actors.errors import EngineError, InvalidArgument
from taskengine.actors.hooks import Hooks
from taskengine.storage import Execution, ExecutionStatus

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from taskengine import Engine, EngineStats

#: seconds: from a fraction of a millisecond (an ack with group commit) to a minute
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds a job runs: up to an hour
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: changes in one write: powers of two up to a counter actor's largest turn
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

FINISHED = (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


class PrometheusMetrics(Hooks, Collector):
    """The metrics of one engine. Several engines in one process each need their own
    ``labels`` (e.g. ``{"node": "a"}``) or their own registry: metric names are per registry."""

    def __init__(
        self,
        engine: Engine,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "taskengine",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace.isidentifier():
            raise InvalidArgument(f"namespace must be a metric name prefix such as 'taskengine', not {namespace!r}")
        self._engine = engine
        self._ns = namespace
        self._labels = dict(labels or {})
        names = list(self._labels)

        def histogram(name: str, doc: str, buckets: Sequence[float], extra: Sequence[str] = ()) -> Histogram:
            return Histogram(f"{namespace}_{name}", doc, [*names, *extra], registry=None, buckets=buckets)

        self._ack = histogram("ack_latency_seconds", "Non-blocking trigger call to its index being durable",
                              LATENCY_BUCKETS)
        self._wait = histogram("queue_wait_seconds", "Trigger call to the job's start", LATENCY_BUCKETS)
        self._run = histogram("run_seconds", "Job start to the execution's durable finish", RUN_BUCKETS,
                              ["status"])
        self._batch = histogram("write_batch_size", "Changes carried by one database write (group commit)",
                                BATCH_BUCKETS)
        self._write = histogram("write_seconds", "One database write, its fsync included", LATENCY_BUCKETS)
        self._histograms = (self._ack, self._wait, self._run, self._batch, self._write)
        self._ack_child = self._ack.labels(**self._labels) if names else self._ack
        self._wait_child = self._wait.labels(**self._labels) if names else self._wait
        self._run_children = {s: self._run.labels(**self._labels, status=s.value) for s in FINISHED}
        self._batch_child = self._batch.labels(**self._labels) if names else self._batch
        self._write_child = self._write.labels(**self._labels) if names else self._write
        self._registry = registry
        self._server: WSGIServer | None = None
        if registry is not None:
            registry.register(self)
        engine.add_hooks(self)

    # -- hooks (observations) ----------------------------------------------------------------

    def on_trigger(self, execution: Execution) -> None:
        if not execution.blocking:
            self._ack_child.observe(max(0.0, time.time() - execution.created_at))

    def on_start(self, execution: Execution) -> None:
        if execution.started_at is not None:
            self._wait_child.observe(max(0.0, execution.started_at - execution.created_at))

    def on_finish(self, execution: Execution) -> None:
        if execution.started_at is not None and execution.finished_at is not None:
            child = self._run_children[execution.status]
            child.observe(max(0.0, execution.finished_at - execution.started_at))

    def on_write(self, changes: int, seconds: float) -> None:
        self._batch_child.observe(changes)
        self._write_child.observe(seconds)

    # -- collector (read at scrape time) -----------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)
        for h in self._histograms:
            yield from h.describe()

    def collect(self) -> Iterator[Metric]:
        try:
            stats: EngineStats | None = self._engine.stats()
        except EngineError:  # closed, or closing: the histograms still say what happened
            stats = None
        if stats is not None:
            yield from self._families(stats)
        for h in self._histograms:
            yield from h.collect()

    def _families(self, stats: EngineStats | None) -> Iterator[Metric]:
        names, values = list(self._labels), list(self._labels.values())
        ns = self._ns

        def counter(name: str, doc: str, value: float | None) -> Metric:
            family = CounterMetricFamily(f"{ns}_{name}", doc, labels=names)
            if value is not None:
                family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float | None) -> Metric:
            family = GaugeMetricFamily(f"{ns}_{name}", doc, labels=names)
            if value is not None:
                family.add_metric(values, value)
            return family

        def figure(name: str) -> int | None:
            return None if stats is None else int(getattr(stats, name))

        yield counter("executions_triggered", "Executions triggered since the engine opened", figure("triggered"))
        finished = CounterMetricFamily(f"{ns}_executions_finished", "Executions finished, by status",
                                       labels=[*names, "status"])
        if stats is not None:
            for status, count in ((ExecutionStatus.SUCCESS, stats.succeeded), (ExecutionStatus.FAILED, stats.failed),
                                  (ExecutionStatus.CANCELLED, stats.cancelled)):
                finished.add_metric([*values, status.value], count)
        yield finished
        yield counter("executions_pruned", "Finished executions removed by prune or keep_last", figure("pruned"))
        yield gauge("executions_queued", "Executions ready to run, waiting for an executor", figure("queued"))
        yield gauge("executions_running", "Executions whose job is running", figure("running"))
        yield gauge("executions_pending", "Non-blocking executions acknowledged, not finished", figure("pending"))
        yield gauge("executions_queued_blocking", "Blocking executions triggered, not started",
                    figure("queued_blocking"))
        yield gauge("waiters", "Callers waiting for an execution to finish", figure("waiters"))
        yield counter("writes", "Database writes", figure("writes"))
        yield counter("changes_written", "Atomic changes carried by the database writes", figure("changes_written"))

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """These metrics alone in Prometheus' text format, and its content type (for a server of
        one's own, e.g. the engine's status server)."""
        own = CollectorRegistry(auto_describe=False)
        own.register(self)
        return generate_latest(own), CONTENT_TYPE_LATEST

    def serve(self, port: int = 9191, host: str = "127.0.0.1") -> tuple[str, int]:
        """Serve the registry (this engine's metrics, and whatever else it holds) over HTTP on
        ``host:port`` (``port=0``: a free one) until :meth:`close`; returns the address bound."""
        if self._server is not None:
            raise InvalidArgument("these metrics are already served")
        registry: Any = self._registry if self._registry is not None else _Only(self)
        server, _thread = start_http_server(port, addr=host, registry=registry)
        self._server = server
        address = server.server_address
        return str(address[0]), int(address[1])

    def close(self) -> None:
        """Stop serving, leave the registry and stop observing the engine."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._registry is not None:
            try:
                self._registry.unregister(self)
            except KeyError:
                pass
        try:
            self._engine.remove_hooks(self)
        except EngineError:  # closed: it observes nothing any more
            pass


class _Only(Collector):
    """A registry stand-in holding one collector (metrics created with ``registry=None``)."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()
