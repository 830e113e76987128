"""Measurement helpers shared by the parts of ``taskengine bench``.

Nothing here asserts a speed: figures are collected, compared with baselines measured in
the same run, and printed. Callers are plain threads for every design (the engine and the
baselines alike), so every figure pays the same client-side costs.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..histogram import Histogram, RateSeries


@attrs.define
class CallerRun:
    """What :func:`run_callers` measured: operations completed in the measured window."""

    callers: int
    ops: int
    seconds: float
    #: per-call latency (seconds) of the operations that started inside the window
    latency: Histogram = attrs.Factory(Histogram)
    #: operations completed over the window, in 0.1 s bins
    throughput: RateSeries = attrs.Factory(lambda: RateSeries(SERIES_BIN))
    errors: int = 0
    first_error: str | None = None
    cpu_seconds: float = 0.0  # CPU time of the whole process (every thread) in the window
    handoffs: int = 0  # voluntary context switches of the whole process in the window

    @property
    def cpu_us_per_op(self) -> float | None:
        """Process CPU (every thread) per operation, in microseconds."""
        return 1e6 * self.cpu_seconds / self.ops if self.ops else None

    @property
    def handoffs_per_op(self) -> float | None:
        """Voluntary context switches per operation: a thread that waits and is woken again."""
        return self.handoffs / self.ops if self.ops else None

    @property
    def cpu_percent(self) -> float:
        """Process CPU use in the window: 100 is one core busy (the most a GIL-bound
        Python program gets from its Python code), 100 x cores is the machine."""
        return 100 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


#: seconds per bin of a window's throughput series
SERIES_BIN = 0.1


def run_callers(
    callers: int,
    op: Callable[[int, int], Any],
    *,
    duration: float,
    warmup: float,
    record_latency: bool = True,
) -> CallerRun:
    """Run ``op(caller, i)`` in a loop on ``callers`` threads: ``warmup`` seconds unmeasured,
    then ``duration`` seconds measured. The rate counts operations completed inside the
    measured window; latencies are kept for operations started inside it.

    The timed loop only appends each latency to its thread's list (a window lasts seconds);
    the lists are folded into a :class:`Histogram` once the window has closed. The
    throughput series is read by this thread from the callers' counters, never by them."""
    counts = [0] * callers
    lat: list[list[float]] = [[] for _ in range(callers)]
    measuring = [False]
    stop = threading.Event()
    errors: list[str] = []
    start = threading.Barrier(callers + 1)

    def loop(k: int) -> None:
        mine = lat[k]
        clock = time.perf_counter
        i = 0
        start.wait()
        while not stop.is_set():
            t = clock()
            try:
                op(k, i)
            except Exception as e:  # counted and reported; a benchmark never hides a failure
                errors.append(f"{type(e).__name__}: {e}")
                if len(errors) > 100:
                    return
                continue
            if record_latency and measuring[0]:
                mine.append(clock() - t)
            counts[k] += 1
            i += 1

    threads = [threading.Thread(target=loop, args=(k,), name=f"bench-caller-{k}", daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(warmup)
    before = sum(counts)
    measuring[0] = True
    t0, c0, h0 = time.perf_counter(), time.process_time(), handoffs()
    series = RateSeries(SERIES_BIN)
    seen, end, prev = before, t0 + duration, t0
    while prev < end:
        time.sleep(min(SERIES_BIN, end - prev))
        total, now = sum(counts), time.perf_counter()
        series.add_span(prev - t0, min(now, end) - t0, total - seen)
        seen, prev = total, now
    after = sum(counts)
    t1, c1, h1 = time.perf_counter(), time.process_time(), handoffs()
    measuring[0] = False
    stop.set()
    for t in threads:
        t.join()
    latency = Histogram()
    for xs in lat:
        for x in xs:
            latency.add(x)
    return CallerRun(
        callers=callers,
        ops=after - before,
        seconds=t1 - t0,
        latency=latency,
        throughput=series,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        cpu_seconds=c1 - c0,
        handoffs=h1 - h0,
    )


def handoffs() -> int:
    """Voluntary context switches of this process so far, every thread's (ended ones too): each
    is a thread that blocked, on a lock, a queue or I/O, and needs waking again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def run_fixed(callers: int, total: int, op: Callable[[int, int], Any]) -> tuple[float, list[Any]]:
    """Run ``total`` operations split over ``callers`` threads; returns (seconds, results)."""
    per = [total // callers + (1 if k < total % callers else 0) for k in range(callers)]
    results: list[list[Any]] = [[] for _ in range(callers)]
    errors: list[BaseException] = []
    start = threading.Barrier(callers + 1)

    def loop(k: int) -> None:
        start.wait()
        out = results[k]
        try:
            for i in range(per[k]):
                out.append(op(k, i))
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,), name=f"bench-caller-{k}", daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed, [x for xs in results for x in xs]


def put_ops(batch: Any, ops: Sequence[Any]) -> None:
    """Add a change's operations (``storage.changes``: puts only, for the changes used here)
    to a plyvel write batch."""
    for op in ops:
        if not isinstance(op, tuple) or op[1] is None:
            raise ValueError(f"only puts are expected here, not {op!r}")
        batch.put(op[0], op[1])


# -- the process ------------------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (kB) and Threads of this process, from /proc/self/status."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM", "Threads"):
                    out[name] = int(rest.split()[0])
    except OSError:  # not Linux: fall back to psutil if it is there
        try:
            import psutil

            p = psutil.Process()
            out = {"VmRSS": p.memory_info().rss // 1024, "VmHWM": 0, "Threads": p.num_threads()}
        except ImportError:
            pass
    return out


class Sampler:
    """Samples RSS and the thread count every ``interval`` seconds on its own thread and keeps
    the peaks (the sampler's own thread is counted, as it would be in any process)."""

    def __init__(self, interval: float = 0.05, probe: Callable[[], Any] | None = None) -> None:
        self.interval = interval
        self.probe = probe
        self.peak_threads = 0
        self.peak_rss_kb = 0
        self.samples: list[tuple[float, int, int, Any]] = []  # (t, rss kB, threads, probe())
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> tuple[float, int, int, Any]:
        st = proc_status()
        rss, threads = st.get("VmRSS", 0), st.get("Threads", threading.active_count())
        self.peak_threads = max(self.peak_threads, threads)
        self.peak_rss_kb = max(self.peak_rss_kb, rss, st.get("VmHWM", 0))
        row = (time.perf_counter() - self._t0, rss, threads, self.probe() if self.probe else None)
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    info["memory_mb"] = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    from importlib import metadata

    for dist in ("pykka", "plyvel", "attrs"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import plyvel

        info["leveldb"] = getattr(plyvel, "__leveldb_version__", None)
    except ImportError:
        pass
    return info


def rss_mb(kb: int) -> float:
    return round(kb / 1024, 1)
