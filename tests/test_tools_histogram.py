"""The tools' one percentile (``taskengine.tools.histogram``): nearest rank within 1 %, bounded
memory however many samples, and rate series that stay bounded over a long run."""

from __future__ import annotations

import json
import math
import random

import pytest

from taskengine.tools.histogram import Histogram, RateSeries


def exact(values: list[float], q: float) -> float:
    """Nearest rank, the definition the histogram follows: the smallest value that at least
    ``q`` of the values do not exceed."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_nearest_rank_on_small_sets() -> None:
    h = Histogram(range(1, 11))
    assert h.quantile(0.5) == pytest.approx(5, rel=0.01)  # not 6: both tools used to disagree here
    assert h.quantile(0.1) == 1 and h.quantile(1.0) == 10 and h.quantile(0.99) == 10
    h = Histogram(float(v) for v in range(1, 101))
    for q, want in ((0.5, 50), (0.95, 95), (0.99, 99), (1.0, 100)):
        assert h.quantile(q) == pytest.approx(want, rel=0.01)
    assert Histogram([7.0]).quantile(0.5) == 7.0
    assert Histogram().quantile(0.5) is None and Histogram().mean is None
    for bad in (0, -0.1, 1.01):
        with pytest.raises(ValueError):
            h.quantile(bad)


def test_within_one_percent_of_the_exact_quantile() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(-6, 1.5) for _ in range(20_000)] + [0.0, 1e-9, 250.0]
    h = Histogram(values)
    for q in (0.001, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert h.quantile(q) == pytest.approx(exact(values, q), rel=0.01, abs=1e-7), q
    assert h.count == len(values) and h.min == 0.0 and h.max == 250.0
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_memory_is_bounded_and_json_round_trips() -> None:
    rng = random.Random(9)
    h = Histogram()
    for _ in range(200_000):
        h.add(10 ** rng.uniform(-7, 3))  # ten decades, 100 ns to 1000 s
    assert len(h.buckets) < 1300  # 2 % buckets over ten decades, whatever the sample count
    again = Histogram.from_json(json.loads(json.dumps(h.to_json())))
    assert again.buckets == h.buckets and again.count == h.count and again.quantile(0.9) == h.quantile(0.9)
    halves = Histogram(range(1, 51)).merge(Histogram(range(51, 101)))
    whole = Histogram(range(1, 101))
    assert halves.buckets == whole.buckets and (halves.min, halves.max) == (1, 100)
    assert sum(n for _, _, n in whole.bins(merge=6)) == 100


def test_rate_series_coarsens_instead_of_growing() -> None:
    s = RateSeries(width=0.25, max_bins=40)
    for i in range(10_000):  # 100 s of events, 100 per second
        s.add(i / 100)
    assert len(s.counts) <= 40 and sum(s.counts) == 10_000
    assert s.width == 4.0  # 0.25 doubled until 100 s fit in 40 bins
    assert all(r == pytest.approx(100) for _, r in s.rates()[:-1])
    spread = RateSeries(width=0.1)
    spread.add_span(0.0, 0.3, 30)  # one late sample of a counter: its events spread over its bins
    spread.add_span(0.3, 0.4, 5)
    assert spread.counts == [10, 10, 10, 5]
    again = RateSeries.from_json(json.loads(json.dumps(spread.to_json())))
    assert again.counts == spread.counts and again.width == spread.width
