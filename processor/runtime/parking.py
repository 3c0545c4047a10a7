"""Records that are not ready yet, parked per (topic, key) instead of per partition.

A not-ready record parks its key on its topic: later records of that key on
that topic queue behind it (so the key keeps its order), while every other key
flows. Records of the key on the task's other topics are still handled: that
is how the event a parked record waits for (a ticket confirmation) arrives.

A parked queue is retried when its key's state changes, and with capped
exponential backoff; past the deadline its head goes to the DLQ. The wait's
start is wall-clock time, written into the offset commit's metadata (see
`resume_metadata`), so it survives restarts.
"""

from __future__ import annotations

import base64
import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from processor.runtime.handler import Record

# Kafka refuses offset metadata over offset.metadata.max.bytes (4096 by default).
METADATA_LIMIT = 4000
_MAX_ENTRY = 20  # two 10-byte varints: the most one parked record adds
_RAW_BUDGET = (METADATA_LIMIT - 40) * 3 // 4  # base64 and the text around it
_VERSION = "p1"


@dataclass(frozen=True, slots=True)
class Backoff:
    min_s: float = 0.1
    max_s: float = 5.0
    deadline_s: float = 3600.0

    def delay(self, attempts: int) -> float:
        return min(self.max_s, self.min_s * 2 ** max(attempts - 1, 0))


@dataclass(slots=True)
class Parked:
    record: Record
    since_ms: int  # wall clock of the first time it waited
    attempts: int = 0


@dataclass(slots=True)
class _Queue:
    entries: deque[Parked] = field(default_factory=deque)
    due: float = 0.0  # monotonic time of the head's next retry


class ParkingLot:
    """One task's parked records, bounded by the task (see `full`)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._queues: dict[tuple[str, bytes], _Queue] = {}
        self._topics_of_key: dict[bytes, set[str]] = {}
        # topic -> offset -> since_ms: what the next commit must not pass.
        self._offsets: dict[str, dict[int, int]] = {}
        self._metadata_bytes: dict[str, int] = {}
        self._timers: list[tuple[float, int, str, bytes]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return sum(len(o) for o in self._offsets.values())

    def blocks(self, topic: str, key: bytes) -> bool:
        return (topic, key) in self._queues

    def park(self, record: Record, since_ms: int, now: float, now_ms: int) -> None:
        """Appends `record` to its key's queue on its topic; a new queue's head is
        retried after the first backoff."""
        topic, key = record.topic(), record.key() or b""
        queue = self._queues.get((topic, key))
        if queue is None:
            queue = self._queues[(topic, key)] = _Queue()
            self._topics_of_key.setdefault(key, set()).add(topic)
        queue.entries.append(Parked(record, since_ms))
        if len(queue.entries) == 1:
            self.retry_later(topic, key, now, now_ms)
        offsets = self._offsets.setdefault(topic, {})
        offsets[record.offset()] = since_ms
        self._metadata_bytes[topic] = self._metadata_bytes.get(topic, 0) + _MAX_ENTRY

    def head(self, topic: str, key: bytes) -> Parked:
        return self._queues[(topic, key)].entries[0]

    def pop(self, topic: str, key: bytes) -> Parked:
        """Removes the head of a queue (applied, skipped or dead-lettered)."""
        queue = self._queues[(topic, key)]
        parked = queue.entries.popleft()
        offsets = self._offsets[topic]
        del offsets[parked.record.offset()]
        if not offsets:
            del self._offsets[topic]
            self._metadata_bytes.pop(topic, None)
        if not queue.entries:
            del self._queues[(topic, key)]
            topics = self._topics_of_key[key]
            topics.discard(topic)
            if not topics:
                del self._topics_of_key[key]
        return parked

    def retry_later(self, topic: str, key: bytes, now: float, now_ms: int) -> None:
        """Schedules the head's next try: after the backoff, or at its deadline."""
        queue = self._queues[(topic, key)]
        head = queue.entries[0]
        head.attempts += 1
        to_deadline = (head.since_ms + self.backoff.deadline_s * 1000 - now_ms) / 1000
        queue.due = now + max(min(self.backoff.delay(head.attempts), to_deadline), 0.0)
        heapq.heappush(self._timers, (queue.due, next(self._sequence), topic, key))

    def queues_of(self, key: bytes) -> list[str]:
        """The topics on which `key` has parked records, oldest head first."""
        topics = self._topics_of_key.get(key)
        if not topics:
            return []
        return sorted(topics, key=lambda t: self._queues[(t, key)].entries[0].record.timestamp())

    def due(self, now: float) -> Iterator[tuple[str, bytes]]:
        """Queues whose head's retry time has come."""
        while self._timers and self._timers[0][0] <= now:
            due, _, topic, key = heapq.heappop(self._timers)
            queue = self._queues.get((topic, key))
            if queue is not None and queue.due == due:  # else a stale timer
                yield topic, key

    def next_due(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def past_deadline_ms(self, since_ms: int, now_ms: int) -> bool:
        return now_ms - since_ms >= self.backoff.deadline_s * 1000

    def holds(self, topic: str) -> bool:
        return topic in self._offsets

    def waiting(self, topic: str) -> dict[int, int]:
        """Offset -> since_ms of every record parked on `topic`."""
        return self._offsets.get(topic, {})

    def oldest_since_ms(self) -> int | None:
        return min(
            (since for offsets in self._offsets.values() for since in offsets.values()),
            default=None,
        )

    def metadata_full(self, topic: str) -> bool:
        """Would one more parked record on `topic` overflow its commit metadata?"""
        used = self._metadata_bytes.get(topic, 0)
        if used + _MAX_ENTRY <= _RAW_BUDGET:
            return False
        # The running figure is an upper bound: measure before refusing.
        used = self._metadata_bytes[topic] = len(_entries(self._offsets[topic]))
        return used + _MAX_ENTRY > _RAW_BUDGET

    @staticmethod
    def metadata(waiting: dict[int, int], position: int) -> str:
        """The offset commit's metadata: the position reached and what still waits
        below it, with when each started waiting."""
        packed = base64.b64encode(_entries(waiting)).decode()
        return f"{_VERSION};{position};{packed}"

    def clear(self) -> None:
        self.__init__(self.backoff)  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Resume:
    """What the committed metadata says about the offsets after the committed one:
    those below `position` were processed, except the `waiting` ones."""

    position: int
    waiting: dict[int, int]  # offset -> since_ms

    def processed(self, offset: int) -> bool:
        return offset < self.position and offset not in self.waiting


def resume_metadata(metadata: str | None) -> Resume | None:
    """Parses `ParkingLot.metadata`; None for empty or foreign metadata."""
    if not metadata or not metadata.startswith(_VERSION + ";"):
        return None
    try:
        _, position, packed = metadata.split(";", 2)
        numbers = _varints(base64.b64decode(packed))
        waiting: dict[int, int] = {}
        offset = since = 0
        pairs = iter(numbers)
        for delta_offset, delta_since in zip(pairs, pairs, strict=True):
            offset += delta_offset
            since += delta_since
            waiting[offset] = since
        return Resume(int(position), waiting)
    except (ValueError, TypeError):
        return None  # written by something else: re-read, the handler's rules decide


# --- zigzag varints: offsets and times as deltas, a few bytes per record --------


def _entries(offsets: dict[int, int]) -> bytes:
    out = bytearray()
    last_offset = last_since = 0
    for offset in sorted(offsets):
        since = offsets[offset]
        _put(out, offset - last_offset)
        _put(out, since - last_since)
        last_offset, last_since = offset, since
    return bytes(out)


def _put(out: bytearray, value: int) -> None:
    value = (value << 1) ^ (value >> 63)  # zigzag
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _varints(data: bytes) -> list[int]:
    numbers: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            numbers.append((value >> 1) ^ -(value & 1))
            value = shift = 0
    if shift or len(numbers) % 2:
        raise ValueError("truncated varints")
    return numbers
