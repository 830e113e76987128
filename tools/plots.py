"""Pictures of a ``stress`` or ``bench`` run (``--plot FILE.png``), drawn with matplotlib.

matplotlib comes with the tools extra (``pip install 'taskengine[tools]'``); a run asked to plot
without it is refused before it starts (:func:`require`). Both pictures read the run's JSON
document, so a picture can also be drawn later from a saved ``--json`` file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from .common import EXIT_USAGE, ToolError
from .histogram import Histogram, RateSeries


def require(path: str) -> None:
    """Refuse ``--plot`` early: no matplotlib, or a path that cannot be written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ToolError("--plot needs matplotlib: pip install 'taskengine[tools]'", EXIT_USAGE) from None
    if not path or os.path.isdir(path):
        raise ToolError(f"--plot {path!r} must be a file path (FILE.png)", EXIT_USAGE)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ToolError(f"--plot {path!r}: the directory {parent!r} does not exist or is not writable", EXIT_USAGE)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _throughput(ax: Any, series: RateSeries, label: str, **style: Any) -> None:
    points = series.rates()
    if not points:
        return
    xs = [0.0] + [(i + 1) * series.width for i in range(len(points))]
    ys = [r for _, r in points]
    ax.stairs(ys, xs, label=label, baseline=None, **style)


def _latency(ax: Any, hist: Histogram, label: str, color: Any = None) -> None:
    """The share of samples per bucket against latency (ms, log scale), with p50 and p99 marked."""
    if not hist.count:
        return
    edges: list[float] = []
    shares: list[float] = []
    for lo, hi, n in hist.bins(merge=6):  # 2 % buckets joined into 12.6 % ones: a smoother picture
        if edges and lo * 1000 > edges[-1] * 1.0001:  # a gap of empty buckets is drawn as a zero
            edges.append(lo * 1000)
            shares.append(0.0)
        elif not edges:
            edges.append(lo * 1000)
        edges.append(hi * 1000)
        shares.append(n / hist.count)
    line = ax.stairs(shares, edges, label=f"{label} ({hist.count:,} samples)", color=color)
    color = line.get_edgecolor()
    for q, dash in ((0.5, "--"), (0.99, ":")):
        v = hist.quantile(q)
        if v is not None:
            ax.axvline(v * 1000, color=color, linestyle=dash, linewidth=1)
    ax.set_xscale("log")


def _finish(fig: Any, path: str) -> None:
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise ToolError(f"cannot write --plot {path!r}: {e.strerror}") from None
    finally:
        _pyplot().close(fig)


def stress_figure(doc: dict[str, Any], path: str) -> None:
    """Acknowledged executions per second over the run, with each SIGKILL and each restart
    marked; below, the distribution of trigger latencies (p50 dashed, p99 dotted)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    series = RateSeries.from_json(doc["throughput"])
    _throughput(top, series, f"acknowledged executions per second ({series.width:g} s bins)", color="tab:blue")
    marks = doc.get("events", {})
    for n, t in enumerate(marks.get("killed", [])):
        top.axvline(t, color="tab:red", linewidth=1.2, label="SIGKILL" if n == 0 else None)
    for n, t in enumerate(marks.get("ready", [])[1:]):  # the first one is the start
        top.axvline(t, color="tab:green", linestyle="--", linewidth=1, label="restarted (recovered, ready)" if n == 0
                    else None)
    top.set_xlabel("seconds since the workload started")
    top.set_ylabel("executions / s")
    top.set_ylim(bottom=0)
    top.set_xlim(0, max(doc.get("elapsed", 0.0), len(series.counts) * series.width))
    title = (
        f"taskengine stress: {doc['acknowledged']:,} executions acknowledged in {doc['elapsed']:.0f} s, "
        f"{doc['clients']} clients, {doc['tasks']} tasks, {doc['crashes']} crashes, "
        f"{len(doc['violations'])} violations"
    )
    top.set_title(title)
    top.legend(loc="lower right", fontsize="small")
    for key, label, color in (("ack_latency", "non-blocking trigger, until the index is durable", "tab:blue"),
                              ("blocking_latency", "blocking trigger, until the execution finished", "tab:orange")):
        hist = doc[key].get("histogram")
        if hist:
            _latency(bottom, Histogram.from_json(hist), label, color)
    bottom.set_xlabel("latency (ms, log scale); dashed: p50, dotted: p99")
    bottom.set_ylabel("share of triggers")
    bottom.legend(loc="upper right", fontsize="small")
    _finish(fig, path)


#: the bench figures drawn (when they were measured): key -> label
BENCH_FIGURES: Sequence[tuple[str, str]] = (
    ("engine_acks_64c_1t", "engine: durable acks, 64 callers, 1 task"),
    ("engine_acks_64c_100t", "engine: durable acks, 64 callers, 100 tasks"),
    ("naive_acks_64c_1t", "naive design: acks, 64 callers, 1 task"),
    ("naive_acks_64c_100t", "naive design: acks, 64 callers, 100 tasks"),
    ("pykka_ask_64_callers", "bare pykka asks, 64 callers, 1 actor"),
    ("e2e_blocking_8c_100t", "engine: blocking triggers, 8 callers"),
)


def bench_figure(doc: dict[str, Any], path: str) -> None:
    """Each 64-caller rate figure over its measured windows (rounds one after another), and
    the distribution of its call latencies; the soak's executions/s and RSS when it ran."""
    plt = _pyplot()
    results = doc["results"]
    soak = results.get("soak", {}).get("series")
    rows = 3 if soak else 2
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.6 * rows))
    top, bottom = axes[0], axes[1]
    drawn = 0
    for key, label in BENCH_FIGURES:
        entry = results.get(key)
        if not entry or not entry.get("throughput"):
            continue
        color = f"C{drawn}"
        offset = 0.0
        for n, part in enumerate(entry["throughput"]):
            s = RateSeries.from_json(part)
            xs = [offset + i * s.width for i in range(len(s.counts) + 1)]
            top.stairs([r for _, r in s.rates()], xs, color=color, label=label if n == 0 else None, baseline=None)
            offset = xs[-1]
        if entry.get("latency_histogram"):
            _latency(bottom, Histogram.from_json(entry["latency_histogram"]), label, color)
        drawn += 1
    top.set_title(f"taskengine bench ({'quick' if doc['meta']['quick'] else 'full'}): rate over the measured "
                  "windows, rounds one after another")
    top.set_xlabel("seconds of measurement")
    top.set_ylabel("operations / s")
    top.set_ylim(bottom=0)
    if drawn:
        top.legend(loc="lower right", fontsize="small")
        bottom.legend(loc="upper right", fontsize="small")
    bottom.set_xlabel("call latency (ms, log scale); dashed: p50, dotted: p99")
    bottom.set_ylabel("share of calls")
    if soak:
        ax = axes[2]
        # (seconds, RSS MB, threads, executions, Python allocator blocks)
        ts = [row[0] for row in soak]
        rates = [0.0] + [(b[3] - a[3]) / (b[0] - a[0]) if b[0] > a[0] else 0.0 for a, b in pairwise(soak)]
        ax.plot(ts, rates, color="tab:blue", label="executions / s")
        ax.set_ylabel("executions / s")
        ax.set_xlabel("seconds of the soak")
        ax.set_ylim(bottom=0)
        rss = ax.twinx()
        rss.plot(ts, [row[1] for row in soak], color="tab:red", label="RSS (MB)")
        rss.set_ylabel("RSS (MB)")
        ax.set_title(f"soak: {results['soak'].get('executions', 0):,} executions")
        ax.legend(loc="lower left", fontsize="small")
        rss.legend(loc="lower right", fontsize="small")
    _finish(fig, path)


__all__ = ["bench_figure", "require", "stress_figure"]
