"""One task per partition number p: partition p of every source topic and the
store of partition p. It orders its records by timestamp, runs the handler,
stages state until the transaction commits, and holds partitions that wait.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from processor.runtime.handler import InputRecord, Outcome, Retry, Stage
from processor.runtime.store import PartitionStore


@dataclass(slots=True)
class Waiting:
    """A source partition held at `offset` because its record was not ready."""

    offset: int
    key: bytes | None
    first_seen: float
    attempts: int = 1
    due: float = 0.0
    paused: bool = True


@dataclass(frozen=True, slots=True)
class Backoff:
    min_s: float = 0.1
    max_s: float = 5.0
    deadline_s: float = 3600.0

    def delay(self, attempts: int) -> float:
        return min(self.max_s, self.min_s * 2 ** (attempts - 1))


@dataclass(slots=True)
class Task:
    partition: int
    store: PartitionStore
    backoff: Backoff = field(default_factory=Backoff)
    staged: dict[bytes, bytes | None] = field(default_factory=dict)
    # Next offset to read per source topic: what a commit records as consumed.
    positions: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, Waiting] = field(default_factory=dict)

    def get(self, key: bytes) -> bytes | None:
        """Reads see this task's writes that are not committed yet."""
        if key in self.staged:
            return self.staged[key]
        return self.store.get(key)

    def accepts(self, record: InputRecord) -> bool:
        """False for records fetched before a seek back, or while the topic waits."""
        held = self.waiting.get(record.topic)
        if held is not None and (held.paused or record.offset != held.offset):
            return False
        return record.offset >= self.positions.get(record.topic, 0)

    def run(
        self,
        records: Iterable[InputRecord],
        handle: Callable[[InputRecord], Outcome | None],
        now: Callable[[], float] = time.monotonic,
    ) -> list[str]:
        """Feeds `records` to `handle`: each topic in offset order, and between
        topics the one whose next record has the smallest timestamp first.

        `handle` returns the outcome it applied, or None when it dealt with the
        record otherwise (dead-lettered). Returns the topics that now wait.
        """
        queues: dict[str, deque[InputRecord]] = {}
        for record in records:
            queues.setdefault(record.topic, deque()).append(record)
        heads = [(q[0].timestamp, topic) for topic, q in queues.items()]
        heapq.heapify(heads)
        newly_waiting: list[str] = []
        while heads:
            topic = heapq.heappop(heads)[1]
            queue = queues[topic]
            record = queue.popleft()
            if self.accepts(record):
                outcome = handle(record)
                if isinstance(outcome, Retry):
                    self._hold(record, now())
                    newly_waiting.append(topic)
                    continue  # the rest is re-read after the seek back
                self.waiting.pop(topic, None)
                self.positions[topic] = record.offset + 1
                if isinstance(outcome, Stage):
                    self.staged[record.key or b""] = outcome.state
                    self._wake(record.key)
            if queue:
                heapq.heappush(heads, (queue[0].timestamp, topic))
        return newly_waiting

    def _hold(self, record: InputRecord, at: float) -> None:
        held = self.waiting.get(record.topic)
        if held is None or held.offset != record.offset:
            held = self.waiting[record.topic] = Waiting(record.offset, record.key, first_seen=at)
        else:
            held.attempts += 1
        held.paused = True
        held.due = at + self.backoff.delay(held.attempts)
        self.positions[record.topic] = record.offset

    def past_deadline(self, record: InputRecord, at: float) -> bool:
        held = self.waiting.get(record.topic)
        return (
            held is not None
            and held.offset == record.offset
            and at - held.first_seen >= self.backoff.deadline_s
        )

    def _wake(self, key: bytes | None) -> None:
        # A state change of a key may make its waiting records ready: retry now.
        for held in self.waiting.values():
            if held.key == key:
                held.due = 0.0

    def due(self, at: float) -> list[tuple[str, int]]:
        """Held topics whose retry is due: (topic, offset to seek back to)."""
        ready = []
        for topic, held in self.waiting.items():
            if held.paused and held.due <= at:
                held.paused = False
                ready.append((topic, held.offset))
        return ready

    def committed(self, changelog_next_offset: int | None) -> None:
        if self.staged:
            assert changelog_next_offset is not None, "staged state without changelog records"
            self.store.write(self.staged, changelog_next_offset)
            self.staged.clear()

    def aborted(self) -> None:
        self.staged.clear()
        self.waiting.clear()

    def close(self) -> None:
        self.store.close()
