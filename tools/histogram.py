"""Latency histograms and rate series with bounded memory: what ``stress`` and ``bench`` keep,
report and plot instead of a list of every sample.

:class:`Histogram` counts values in log-spaced buckets 2 % wide, so any run, however long, keeps
at most a few hundred counters, and its quantiles are within 1 % of the exact ones.
:meth:`Histogram.quantile` is the one percentile of the tools: nearest rank (the smallest value
that at least ``q`` of the samples do not exceed), so the median of 1..10 is 5.
:class:`RateSeries` counts events in time bins that double in width when there are too many.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

#: bucket ``i`` holds values in [LOW * GROWTH**i, LOW * GROWTH**(i+1)); smaller ones go to bucket 0
GROWTH = 1.02
LOW = 1e-7
_LOG_GROWTH = math.log(GROWTH)


def _bucket(value: float) -> int:
    if value <= LOW:
        return 0
    return int(math.log(value / LOW) / _LOG_GROWTH)


def _lower(bucket: int) -> float:
    return LOW * GROWTH**bucket


class Histogram:
    """Non-negative values (seconds) in log-spaced buckets, with exact count, sum, min and max."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min: float | None = None
        self.max: float | None = None
        for v in values:
            self.add(v)

    def add(self, value: float) -> None:
        b = _bucket(value)
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.total += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s samples to this one; returns self."""
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count
        self.total += other.total
        for v in (other.min, other.max):
            if v is not None:
                self.min = v if self.min is None else min(self.min, v)
                self.max = v if self.max is None else max(self.max, v)
        return self

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) by nearest rank, to the bucket's middle (within 1 %),
        never outside the exact min and max; None when there are no samples."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], not {q}")
        if not self.count:
            return None
        assert self.min is not None and self.max is not None
        rank = max(1, math.ceil(q * self.count - 1e-9))
        if rank == 1 or rank == self.count:  # the extremes are kept exactly
            return self.min if rank == 1 else self.max
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                middle = math.sqrt(_lower(b) * _lower(b + 1))
                return min(max(middle, self.min), self.max)
        return self.max

    def bins(self, merge: int = 1) -> list[tuple[float, float, int]]:
        """(lower bound, upper bound, count) of each non-empty bucket, in order; ``merge`` > 1
        joins that many neighbouring buckets into one (a smoother picture of few samples)."""
        joined: dict[int, int] = {}
        for b, n in self.buckets.items():
            joined[b // merge] = joined.get(b // merge, 0) + n
        return [(_lower(b * merge), _lower((b + 1) * merge), joined[b]) for b in sorted(joined)]

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": "s", "growth": GROWTH, "low": LOW, "count": self.count, "sum": self.total,
            "min": self.min, "max": self.max,
            # [bucket number, count]: bucket b holds values in [low * growth**b, low * growth**(b+1))
            "buckets": [[b, self.buckets[b]] for b in sorted(self.buckets)],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Histogram:
        if doc.get("growth") != GROWTH or doc.get("low") != LOW:
            raise ValueError("a histogram with other buckets than this version's")
        h = cls()
        h.buckets = {int(b): int(n) for b, n in doc["buckets"]}
        h.count, h.total, h.min, h.max = int(doc["count"]), float(doc["sum"]), doc["min"], doc["max"]
        return h


class RateSeries:
    """Events counted in time bins from a start; at most ``max_bins`` bins (the bin width doubles
    and neighbours merge when a run outlasts them), so memory does not grow with the run."""

    def __init__(self, width: float = 0.25, max_bins: int = 240) -> None:
        if width <= 0 or max_bins < 2:
            raise ValueError("width must be > 0 and max_bins >= 2")
        self.width = width
        self.max_bins = max_bins
        self.counts: list[int] = []

    def add(self, t: float, n: int = 1) -> None:
        """``n`` events at ``t`` seconds after the start (negative times count at 0)."""
        i = int(max(t, 0.0) / self.width)
        while i >= self.max_bins:
            self._coarsen()
            i //= 2
        if i >= len(self.counts):
            self.counts.extend([0] * (i + 1 - len(self.counts)))
        self.counts[i] += n

    def _coarsen(self) -> None:
        c = self.counts
        self.counts = [sum(c[j : j + 2]) for j in range(0, len(c), 2)]
        self.width *= 2

    def add_span(self, start: float, end: float, n: int) -> None:
        """``n`` events spread evenly over [start, end) (a sample of a counter taken late
        covers more than one bin)."""
        if end - start <= 0:
            self.add(start, n)
            return
        self.extend_to(end - 1e-9)  # an end on a bin's edge does not open the next bin
        first, last = int(max(start, 0.0) / self.width), int(max(end - 1e-9, 0.0) / self.width)
        given = 0
        for i in range(first, min(last, len(self.counts) - 1) + 1):
            lo, hi = max(start, i * self.width), min(end, (i + 1) * self.width)
            share = n - given if i == last else round(n * max(hi - lo, 0.0) / (end - start))
            share = min(share, n - given)
            self.counts[i] += share
            given += share
        if given < n:
            self.counts[min(last, len(self.counts) - 1)] += n - given

    def extend_to(self, t: float) -> None:
        """Make the series reach ``t`` (trailing bins with no events are zeros, not missing)."""
        self.add(t, 0)

    def rates(self) -> list[tuple[float, float]]:
        """(bin's middle in seconds, events per second) of each bin."""
        return [((i + 0.5) * self.width, n / self.width) for i, n in enumerate(self.counts)]

    def to_json(self) -> dict[str, Any]:
        return {"bin_seconds": self.width, "counts": list(self.counts)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RateSeries:
        s = cls(float(doc["bin_seconds"]), max(2, len(doc["counts"])))
        s.counts = [int(n) for n in doc["counts"]]
        return s


__all__ = ["Histogram", "RateSeries"]
