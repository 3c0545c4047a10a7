"""Per-partition buffers drained in timestamp order across partitions.

As Kafka Streams' PartitionGroup: the next record is the oldest head among the
partitions, and records are taken only while every partition either has
records buffered or was fetched to its end: an end-of-partition event at or
past every record this instance itself committed there (a route stage feeding
its own manage stage commits more every interval, and an end reached before
that commit says nothing about it).
Otherwise an older record may still be on its way in an empty partition (a
ticket confirmation behind the flight failure it completes); the task then
waits for it, at most `max_idle_s` (Kafka Streams' max.task.idle.ms), after
which it goes on with what it has.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from processor.runtime.handler import Record

K = TypeVar("K", bound=Hashable)


class TimestampOrder(Generic[K]):
    def __init__(self, sources: Iterable[K], max_idle_s: float, buffer_limit: int) -> None:
        self.buffers: dict[K, deque[Record]] = {k: deque() for k in sources}
        self._rank = {k: i for i, k in enumerate(self.buffers)}
        self._eof: dict[K, int] = {}  # source -> the end offset it was last fetched to
        self._known_end: dict[K, int] = {}  # source -> end of what this instance committed
        self._fetched: dict[K, int] = {}  # source -> the offset after the last record added
        self._idle_since: float | None = None
        self._max_idle_s = max_idle_s
        self._buffer_limit = buffer_limit
        self.enforced = 0  # drains that went on without waiting any longer

    def add(self, source: K, record: Record) -> None:
        self.buffers[source].append(record)
        self._eof.pop(source, None)
        self._fetched[source] = record.offset() + 1

    def at_end(self, source: K, offset: int) -> None:
        """The consumer reached the end of `source`, at `offset`."""
        self._eof[source] = offset

    def known_end(self, source: K, end: int) -> None:
        """This instance committed records to `source` up to `end`."""
        if end > self._known_end.get(source, 0):
            self._known_end[source] = end

    def unfetched(self, excluding: set[K]) -> int:
        """Records this instance committed to its sources (but those `excluding`) and
        has not fetched yet."""
        fetched = self._fetched
        return sum(
            max(end - fetched.get(k, 0), 0)
            for k, end in self._known_end.items()
            if k not in excluding
        )

    def fetched(self) -> dict[K, int]:
        """Per source, the offset after the last record added."""
        return dict(self._fetched)

    def _fetched_to_end(self, source: K) -> bool:
        return self._eof.get(source, -1) >= self._known_end.get(source, 0)

    @property
    def pending(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def drain(
        self,
        now: float,
        handle: Callable[[K, Record], bool],
        held: Callable[[K], bool],
        limit: int = 1 << 62,
    ) -> set[K]:
        """Hands at most `limit` records to `handle`, in order; it returns False to stop
        at that record (left buffered). Sources for which `held` is true are passed
        over and returned: their records stay buffered."""
        buffers, at_end = self.buffers, self._fetched_to_end
        enforced = self._idle_since is not None and now - self._idle_since >= self._max_idle_s
        if not enforced and any(not q and not at_end(k) for k, q in buffers.items()):
            if self._idle_since is None:
                self._idle_since = now
            return set()
        if enforced:
            self.enforced += 1
        rank = self._rank
        heads = [(q[0].timestamp()[1], rank[k], k) for k, q in buffers.items() if q]
        heapq.heapify(heads)
        passed: set[K] = set()
        while heads and limit > 0:
            limit -= 1
            _, r, source = heapq.heappop(heads)
            if held(source):
                passed.add(source)
                continue
            queue = buffers[source]
            if not handle(source, queue[0]):
                break
            queue.popleft()
            if queue:
                heapq.heappush(heads, (queue[0].timestamp()[1], r, source))
            elif not enforced and not at_end(source):
                break  # more of it is on its way: wait for it
        self._idle_since = None
        return passed

    def over_limit(self) -> list[K]:
        """Sources holding more than the buffer limit: their partitions should pause."""
        return [k for k, q in self.buffers.items() if len(q) > self._buffer_limit]

    def clear(self) -> None:
        for queue in self.buffers.values():
            queue.clear()
        self._eof.clear()
        self._fetched.clear()
        self._idle_since = None
