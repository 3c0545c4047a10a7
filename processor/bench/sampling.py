"""Following a run: counters sampled at a fixed period, progress shown, and what
the samples say (stalls, percentiles)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.progress import Progress

from processor.bench.config import BenchError

Sample = tuple[float, ...]  # (seconds since the start, counter, [counter, ...])


def follow(
    progress: Progress,
    what: str,
    total: int | None,
    counters: Callable[[], tuple[int, ...]],
    finished: Callable[[], float | None],
    check: Callable[[], None],
    t0: float,
    every_s: float,
    timeout_s: float,
) -> tuple[float, list[Sample]]:
    """Samples `counters` every `every_s` from `t0` until `finished` returns the end
    time; the last sample is taken at that end. The progress bar shows the first
    counter against `total` (None: unknown). Returns (end - t0, samples)."""
    task = progress.add_task(what, total=total)

    def sample(at: float) -> Sample:
        return (round(at - t0, 3), *counters())

    samples = [sample(t0)]
    next_at = t0 + every_s
    while (end := finished()) is None:
        check()
        now = time.monotonic()
        if now - t0 > timeout_s:
            raise BenchError(f"{what}: {counters()[0]} of {total or '?'} after {timeout_s:.0f}s")
        if now >= next_at:
            samples.append(sample(now))
            progress.update(task, completed=samples[-1][1])
            next_at += every_s * max(1, int((now - next_at) / every_s) + 1)
        time.sleep(min(0.01, max(0.0, next_at - time.monotonic())))
    # The end may precede the last sample (a tail saw it first): samples stay in order.
    samples = [s for s in samples if s[0] < end - t0]
    samples.append(sample(end))
    progress.update(task, total=samples[-1][1], completed=samples[-1][1])
    return end - t0, samples


def wait_for(
    progress: Progress,
    what: str,
    event: threading.Event,
    check: Callable[[], None],
    timeout_s: float,
) -> float:
    """Waits for `event`; returns when it was seen set (monotonic)."""
    task = progress.add_task(what, total=None)
    started = time.monotonic()
    while not event.wait(0.01):
        check()
        if time.monotonic() - started > timeout_s:
            raise BenchError(f"{what}: timed out after {timeout_s:.0f}s")
    progress.update(task, total=1, completed=1)
    return time.monotonic()


@dataclass(frozen=True)
class Stall:
    seconds: float  # from the first sample showing a value to the first showing a new one
    at_s: float  # when it began (seconds since the start)


def longest_stall(samples: Sequence[Sample], columns: Sequence[int], total: int) -> Stall:
    """The longest stretch over which none of `columns` moved while the first of them
    was below `total` (a backlog remained). Resolution: the sampling period."""
    best = Stall(0.0, 0.0)
    if not samples:
        return best
    since, value = samples[0][0], tuple(samples[0][c] for c in columns)
    for sample in samples[1:]:
        current = tuple(sample[c] for c in columns)
        if current != value:
            if sample[0] - since > best.seconds:
                best = Stall(round(sample[0] - since, 3), since)
            since, value = sample[0], current
    if value[0] < total and samples[-1][0] - since > best.seconds:
        best = Stall(round(samples[-1][0] - since, 3), since)
    return best


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
