"""Recovery time: from a SIGKILL until the victim's partitions publish again.

An output belongs to the stateful partition (task) of its bundle: the bundle
id header, murmur2, modulo the internal partition count. A kill records the
partitions its victim owned (its /readyz a moment before) and, a moment after,
the ends of the output topics: an output at or past those ends was committed
after the victim died, by whoever owns its partition now (an output partition whose
end could not be taken tells nothing about that kill). The kill's recovery
is the longest, over the victim's partitions, from the SIGKILL until the first
such output was seen (read_committed); partitions that published nothing more
before the run ended do not count.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from processor.chaos.partitions import partition_of

TP = tuple[str, int]


@dataclass
class Kill:
    instance: str
    at: float  # monotonic, when SIGKILL was sent
    partitions: tuple[int, ...]  # the stateful partitions it owned
    output_ends: dict[TP, int] = field(default_factory=dict)  # taken just after
    ends_taken_at: float | None = None
    restarted_at: float | None = None
    ready_at: float | None = None  # the restarted instance's /readyz said ready
    recovery_s: float | None = None  # filled in at the end


@dataclass
class Outputs:
    """Every output seen, by task partition: (seen at, topic, partition, offset)."""

    partitions: int
    _seen: dict[int, list[tuple[float, str, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def saw(self, bundle: str, topic: str, partition: int, offset: int, at: float) -> None:
        self._seen[partition_of(bundle, self.partitions)].append((at, topic, partition, offset))

    def first_after(self, task: int, kill: Kill) -> float | None:
        """When the first output of `task` committed after `kill` was seen."""
        seen = self._seen.get(task, [])
        seen.sort()  # appended in time order already; cheap when sorted
        for at, topic, partition, offset in seen[bisect.bisect_left(seen, (kill.at,)) :]:
            end = kill.output_ends.get((topic, partition))
            if end is not None and offset >= end:
                return at
        return None


# A restarted instance publishes nothing in its first second (interpreter, clients,
# fencing, joining): output ends taken before then still lie below its first output.
QUIET_AFTER_RESTART_S = 1.0


def recover(kills: list[Kill], outputs: Outputs) -> None:
    """Fills in every kill's recovery time (None: its partitions published nothing more,
    or its output ends came too late to tell)."""
    for kill in kills:
        taken, restarted = kill.ends_taken_at, kill.restarted_at
        if taken is None or (restarted is not None and taken > restarted + QUIET_AFTER_RESTART_S):
            kill.recovery_s = None
            continue
        times = [
            first - kill.at
            for task in kill.partitions
            if (first := outputs.first_after(task, kill)) is not None
        ]
        kill.recovery_s = max(times) if times else None


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float | None
    max: float | None


def percentiles(kills: list[Kill]) -> Percentiles:
    return _percentiles([k.recovery_s for k in kills])


def ready_percentiles(kills: list[Kill]) -> Percentiles:
    """From the SIGKILL until the restarted instance was ready again."""
    return _percentiles([k.ready_at - k.at if k.ready_at else None for k in kills])


def _percentiles(seconds: list[float | None]) -> Percentiles:
    values = sorted(s for s in seconds if s is not None)
    if not values:
        return Percentiles(0, None, None)
    return Percentiles(len(values), statistics.median(values), values[-1])
