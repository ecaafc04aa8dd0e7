"""Latency histograms: the load generator's samples in HdrHistogram form.

The C load generator writes every measured latency (nanoseconds, sorted) to a file;
here they go into an ``hdrh.histogram.HdrHistogram`` (the ``hdrhistogram`` package, an
extra of ``echo20[bench]``), which keeps three significant digits from 1 ns to an
hour. Histograms of repeats add up; their encoded form travels in ``bench.json``, so a
later reader can ask for any percentile.
"""

from __future__ import annotations

import bisect
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

from echo20.errors import BenchError

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

__all__ = ["LATENCY_KEYS", "PERCENTILES", "from_samples", "merge", "percentiles_us"]

# The percentiles every report shows, and their keys ("max" last).
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
LATENCY_KEYS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")

# Nanoseconds: 1 ns to one hour, three significant digits (0.1 % resolution).
LOWEST_NS = 1
HIGHEST_NS = 3600 * 10**9
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        raise BenchError(
            "the latency histograms need hdrhistogram (pip install 'echo20[bench]')"
        ) from None
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)


def from_samples(path: Path) -> HdrHistogram:
    """A histogram of the sorted 64-bit nanosecond samples in ``path``.

    Samples that fall in one of the histogram's buckets are recorded with one call:
    ``record_value`` is Python, and a run has hundreds of thousands of samples.
    """
    samples = array("Q")
    samples.frombytes(path.read_bytes())
    histogram = new_histogram()
    index, count = 0, len(samples)
    while index < count:
        value = max(LOWEST_NS, min(HIGHEST_NS, samples[index]))
        top = histogram.get_highest_equivalent_value(value)
        end = bisect.bisect_right(samples, top, index)
        histogram.record_value(value, end - index)
        index = end
    return histogram


def merge(encoded: list[str]) -> HdrHistogram:
    """One histogram holding every encoded histogram's values."""
    total = new_histogram()
    for text in encoded:
        total.decode_and_add(text)
    return total


def percentiles_us(histogram: HdrHistogram) -> dict[str, float]:
    """``{"p50": µs, ..., "p99.99": µs, "max": µs}``; empty for an empty histogram."""
    if histogram.get_total_count() == 0:
        return {}
    values: dict[str, float] = {
        key: histogram.get_value_at_percentile(p) / 1000
        for key, p in zip(LATENCY_KEYS, PERCENTILES, strict=False)
    }
    values["max"] = histogram.get_max_value() / 1000
    return values


def encode(histogram: HdrHistogram) -> str:
    """The histogram as text (HdrHistogram's compressed, base64 form)."""
    encoded = histogram.encode()
    return encoded.decode() if isinstance(encoded, bytes) else str(encoded)
