"""Counters of one engine, read by the metrics endpoint at scrape time."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass


@dataclass(slots=True)
class Stats:
    processed: int = 0
    skipped: int = 0
    replayed: int = 0
    forwarded: int = 0
    not_routed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    restored: int = 0
    transactions: int = 0
    aborted: int = 0


class Histogram:
    """Durations in buckets, without a lock or an allocation per observation: the
    loop observes every record; the metrics endpoint reads a snapshot."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (upper bound, count) pairs as Prometheus wants them, and the sum."""
        counts, total, buckets = list(self.counts), 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets, self.sum


RECORD_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
