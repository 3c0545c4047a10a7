"""Tasks: the units of work the engine assigns, processes and commits.

A `RouteTask` owns one input partition and no state. A `StatefulTask` owns
partition p of every source topic and the store of partition p; it orders its
records by timestamp, calls its handler, stages state in a store transaction
and parks records that are not ready (see parking.py). Both commit through the
same three steps (prepare, offsets, flush), so the engine has one task map and
one commit path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from enum import Enum

from confluent_kafka import TopicPartition

from processor.runtime.checkpoint import Checkpoint, RecordTooLarge
from processor.runtime.clock import Clock
from processor.runtime.dlq import NotReadyTooLong, dead_letter
from processor.runtime.global_table import GlobalTables
from processor.runtime.handler import (
    BadInput,
    Forward,
    Handler,
    Record,
    Reject,
    Retry,
    Router,
    Skip,
    Stage,
    Unknown,
)
from processor.runtime.ordering import TimestampOrder
from processor.runtime.parking import Backoff, ParkingLot, Resume, resume_metadata
from processor.runtime.stats import RECORD_BUCKETS, Histogram, Stats
from processor.runtime.store import StoreTransaction

log = logging.getLogger(__name__)


class TaskState(Enum):
    RESTORING = "restoring"
    RUNNING = "running"


def _dead_letter(out: Checkpoint, dlq: str, record: Record, error: Exception, stats: Stats) -> None:
    log.warning(
        "dead-lettered %s[%d]@%d to %s: %s: %s",
        record.topic(),
        record.partition(),
        record.offset(),
        dlq,
        type(error).__name__,
        error,
    )
    letter = dead_letter(dlq, record, error)
    timestamp = record.timestamp()[1]
    try:
        out.send(letter.topic, letter.key, letter.value, letter.headers, timestamp)
    except RecordTooLarge:
        # The value and our headers together are over the producer's limit: the letter
        # goes without the value, saying how long it was (topic/partition/offset find it).
        size = [("__streams.errors.value.omitted", str(len(letter.value or b"")).encode())]
        headers = [
            (k, v[:1024] if k == "__streams.errors.stacktrace" else v)
            for k, v in letter.headers or []
        ]
        out.send(letter.topic, letter.key, None, [*headers, *size], timestamp)
    stats.dead_lettered += 1


class RouteTask:
    """The input partitions this instance routes: each record is forwarded, skipped
    or dead-lettered, in timestamp order across them (so the repartitioned events
    of a bundle come out in the order they happened). A record the global tables
    do not know yet holds routing until they caught up to a target taken after
    it missed (a few ms), so order is kept."""

    name = "route"

    def __init__(
        self,
        partitions: Iterable[tuple[str, int]],
        router: Router,
        tables: GlobalTables,
        dlq_topic: str,
        stats: Stats,
        buffer_limit: int = 2000,
        max_idle_s: float = 0.5,
        timing: Histogram | None = None,
    ) -> None:
        self.partitions = sorted(partitions)
        self._timing = timing or Histogram(RECORD_BUCKETS)
        self.state = TaskState.RUNNING
        self.max_records = 1000  # per turn: the loop commits and polls between turns
        self._router = router
        self._tables = tables
        self._dlq = dlq_topic
        self._stats = stats
        self._order: TimestampOrder[tuple[str, int]] = TimestampOrder(
            self.partitions, max_idle_s, buffer_limit
        )
        self.positions: dict[tuple[str, int], int] = {}
        # The head missed the tables: the target deciding it, and what was fetched then.
        self._ticket: tuple[int, dict[tuple[str, int], int]] | None = None
        # Per source, the offset below which a miss is final: the records fetched when
        # the last ticket reached was taken.
        self._covered: dict[tuple[str, int], int] = {}
        self._blocked: list[tuple[str, int]] = []

    def add(self, record: Record) -> None:
        self._order.add((record.topic(), record.partition()), record)

    def at_end(self, topic: str, partition: int, offset: int) -> None:
        self._order.at_end((topic, partition), offset)

    def known_end(self, topic: str, partition: int, end: int) -> None:
        self._order.known_end((topic, partition), end)

    @property
    def pending(self) -> int:
        return self._order.pending

    def process(self, out: Checkpoint, now: float) -> None:
        route, stats, send, positions = self._router, self._stats, out.send, self.positions
        observe, clock = self._timing.observe, time.perf_counter

        def handle(source: tuple[str, int], record: Record) -> bool:
            started = clock()
            outcome = route(record)
            if isinstance(outcome, Forward):
                timestamp = record.timestamp()[1]
                try:
                    for r in outcome.records:
                        send(r.topic, r.key, r.value, r.headers, timestamp)
                    stats.forwarded += 1
                except RecordTooLarge as exc:  # its headers took it over the limit
                    _dead_letter(out, self._dlq, record, BadInput(f"too large: {exc}"), stats)
            elif isinstance(outcome, Unknown):
                if not self._miss_is_final(source, record.offset()):
                    return False  # everything waits behind it
                stats.not_routed += 1
                log.debug("%s[%d]@%d not routed: %s", *source, record.offset(), outcome.reason)
            elif isinstance(outcome, Skip):
                stats.not_routed += 1
            elif isinstance(outcome, Reject):
                _dead_letter(out, self._dlq, record, BadInput(outcome.reason), stats)
            positions[source] = record.offset() + 1
            observe(clock() - started)
            return True

        if self._order.pending:
            out.begin()  # positions move: there is a commit to make even without outputs
        self._order.drain(now, handle, lambda _: False, self.max_records)
        self._blocked = self._order.over_limit()

    def _miss_is_final(self, source: tuple[str, int], offset: int) -> bool:
        """A record at `offset` of `source` missed the tables: is that final? Only once
        they caught up to end offsets taken after the record was fetched."""
        if offset < self._covered.get(source, 0):
            return True
        if self._ticket is None:
            self._ticket = (self._tables.ticket(), self._order.fetched())
        number, fetched = self._ticket
        if not self._tables.caught_up(number):
            return False
        # Every record fetched when the ticket was taken arrived before its target: a
        # miss among them is final at once, with no round of its own (ordinary bookings
        # are most of the input, and a round costs a ListOffsets and a fetch).
        self._covered, self._ticket = fetched, None
        if offset < fetched.get(source, 0):
            return True
        self._ticket = (self._tables.ticket(), self._order.fetched())  # fetched after it
        return False

    def blocked(self) -> list[tuple[str, int]]:
        return self._blocked

    def resume_from(self, committed: Iterable[TopicPartition]) -> None:
        pass  # stateless: the consumer starts at the committed offset, nothing more

    def prepare(self, out: Checkpoint) -> None:
        pass

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.positions.items()]

    def flush(self, changelog_offsets: dict[int, int]) -> None:
        pass

    def abort(self) -> None:
        self._order.clear()
        self.positions.clear()
        self._ticket = None
        self._covered = {}
        self._blocked = []

    def close(self) -> None:
        self.abort()


class StatefulTask:
    """Partition p of every source topic, and the store of partition p."""

    def __init__(
        self,
        partition: int,
        topics: Iterable[str],
        handler: Handler,
        txn: StoreTransaction,
        backoff: Backoff,
        dlq_topic: str,
        stats: Stats,
        max_parked: int = 1000,
        clock: Clock | None = None,
        buffer_limit: int = 2000,
        max_idle_s: float = 0.5,
        timing: Histogram | None = None,
    ) -> None:
        self.partition = partition
        self._timing = timing or Histogram(RECORD_BUCKETS)
        self.topics = tuple(topics)
        self.state = TaskState.RESTORING
        self.max_records = 1000  # per turn: the loop commits and polls between turns
        self._handler = handler
        self.txn = txn
        self.parking = ParkingLot(backoff)
        self._dlq = dlq_topic
        self._stats = stats
        self.max_parked = max_parked
        self._clock = clock or Clock()
        self._order: TimestampOrder[str] = TimestampOrder(self.topics, max_idle_s, buffer_limit)
        self.positions: dict[str, int] = {}  # next offset per topic: all below were seen
        self._resume: dict[str, Resume] = {}
        self._blocked: set[str] = set()

    @property
    def name(self) -> str:
        return f"task {self.partition}"

    @property
    def partitions(self) -> list[tuple[str, int]]:
        return [(t, self.partition) for t in self.topics]

    @property
    def pending(self) -> int:
        return self._order.pending

    @property
    def backlog(self) -> int:
        """Records buffered, and records this instance routed here that it has not
        fetched yet, on the topics it is not holding back."""
        return self._order.pending + self._order.unfetched(self._blocked)

    def add(self, record: Record) -> None:
        self._order.add(record.topic(), record)

    def at_end(self, topic: str, partition: int, offset: int) -> None:
        self._order.at_end(topic, offset)

    def known_end(self, topic: str, partition: int, end: int) -> None:
        self._order.known_end(topic, end)

    def resume_from(self, committed: Iterable[TopicPartition]) -> None:
        """What the last commit's metadata says waits, and was done, after each
        committed offset."""
        for tp in committed:
            resume = resume_metadata(tp.metadata)
            if resume is not None:
                self._resume[tp.topic] = resume

    # --- processing --------------------------------------------------------------

    def process(self, out: Checkpoint, now: float) -> None:
        """Retries what is due, then handles buffered records in timestamp order across
        the task's topics (see ordering.py): a ticket confirmation is handled before
        the younger flight failure it completes, even when they come on two topics."""
        now, now_ms = self._clock.monotonic(), self._clock.wall_ms()
        out.begin()  # state and positions may move without any output: still a commit
        for topic, key in list(self.parking.due(now)):
            if self.parking.blocks(topic, key):
                self._retry_queue(topic, key, out, now, now_ms)

        observe, clock = self._timing.observe, time.perf_counter

        def handle(topic: str, record: Record) -> bool:
            started = clock()
            self._one(record, topic, out, now, now_ms)
            observe(clock() - started)
            return True

        self._blocked = self._order.drain(now, handle, self._must_wait, self.max_records)
        self._blocked.update(self._order.over_limit())

    def _must_wait(self, topic: str) -> bool:
        """Backpressure: parking is bounded per task and by the commit metadata."""
        resume = self._resume.get(topic)
        if resume is not None and self.positions.get(topic, 0) < resume.position:
            return False  # re-reading what already waited before: it fitted then
        parking = self.parking
        if not parking.holds(topic):
            return False
        return len(parking) >= self.max_parked or parking.metadata_full(topic)

    def _one(self, record: Record, topic: str, out: Checkpoint, now: float, now_ms: int) -> None:
        offset = record.offset()
        self.positions[topic] = offset + 1
        since_ms = None
        resume = self._resume.get(topic)
        if resume is not None:
            if offset >= resume.position:
                del self._resume[topic]
            elif resume.processed(offset):
                self._stats.replayed += 1  # done before a restart: costs nothing
                return
            else:
                since_ms = resume.waiting[offset]
        key = record.key() or b""
        if self.parking.blocks(topic, key):
            self.parking.park(record, since_ms or now_ms, now, now_ms)  # behind its key's head
            return
        outcome = self._decide(record, key, out)
        if outcome is None:
            return
        if isinstance(outcome, Retry):
            since = since_ms or now_ms
            if self.parking.past_deadline_ms(since, now_ms):
                _dead_letter(out, self._dlq, record, NotReadyTooLong(outcome.reason), self._stats)
                return
            self._stats.retried += 1
            self.parking.park(record, since, now, now_ms)
            log.debug("%s: %s@%d not ready: %s", self.name, topic, offset, outcome.reason)
        elif self._apply(record, key, outcome, out):
            self._drain(key, out, now, now_ms)

    def _decide(self, record: Record, key: bytes, out: Checkpoint) -> Stage | Skip | Retry | None:
        try:
            return self._handler(record, self.txn.get(key))
        except BadInput as exc:
            _dead_letter(out, self._dlq, record, exc, self._stats)
            return None

    def _apply(self, record: Record, key: bytes, outcome: Stage | Skip, out: Checkpoint) -> bool:
        """Stages the outcome; True when the key's state changed."""
        if isinstance(outcome, Skip):
            self._stats.skipped += 1
            return False
        self.txn.set(key, outcome.state)
        timestamp = record.timestamp()[1]
        send = out.send
        for r in outcome.records:
            send(r.topic, r.key, r.value, r.headers, timestamp)
        self._stats.processed += 1
        return True

    def _drain(self, key: bytes, out: Checkpoint, now: float, now_ms: int) -> None:
        """The key's state changed: its parked records may be ready now."""
        progress = True
        while progress:
            progress = False
            for topic in self.parking.queues_of(key):
                progress |= self._retry_queue(topic, key, out, now, now_ms)

    def _retry_queue(
        self, topic: str, key: bytes, out: Checkpoint, now: float, now_ms: int
    ) -> bool:
        """Retries the head of a parked queue, and those behind it while they are
        ready; True when the key's state changed."""
        parking, changed = self.parking, False
        while parking.blocks(topic, key):
            parked = parking.head(topic, key)
            outcome = self._decide(parked.record, key, out)
            if isinstance(outcome, Retry):
                if not parking.past_deadline_ms(parked.since_ms, now_ms):
                    parking.retry_later(topic, key, now, now_ms)
                    self._stats.retried += 1
                    break
                parking.pop(topic, key)
                error = NotReadyTooLong(outcome.reason)
                _dead_letter(out, self._dlq, parked.record, error, self._stats)
                continue
            parking.pop(topic, key)
            if outcome is not None:
                changed |= self._apply(parked.record, key, outcome, out)
        return changed

    def blocked(self) -> list[tuple[str, int]]:
        return [(t, self.partition) for t in self._blocked]

    def next_due(self) -> float | None:
        return self.parking.next_due()

    # --- committing ----------------------------------------------------------------

    def prepare(self, out: Checkpoint) -> None:
        if self.txn.changed:
            out.changelog(self.partition, self.txn.prepare())

    def offsets(self) -> list[TopicPartition]:
        offsets = []
        for topic, position in self.positions.items():
            waiting = self.parking.waiting(topic)
            resume = self._resume.get(topic)
            reached = position
            if resume is not None and position < resume.position:
                # Still re-reading: what waited before and is not read again yet still waits.
                waiting = {**waiting, **{o: s for o, s in resume.waiting.items() if o >= position}}
                reached = resume.position
            if not waiting and reached == position:
                offsets.append(TopicPartition(topic, self.partition, position))
                continue
            metadata = self.parking.metadata(waiting, reached)
            first = min(waiting, default=position)
            offsets.append(TopicPartition(topic, self.partition, first, metadata=metadata))
        return offsets

    def flush(self, changelog_offsets: dict[int, int]) -> None:
        if self.txn.changed:
            self.txn.flush(changelog_offsets[self.partition])

    def abort(self) -> None:
        """The transaction is gone: forget everything since the last commit; the
        engine seeks back to the committed offsets and calls `resume_from`."""
        self.txn.abort()
        self.parking.clear()
        self._order.clear()
        self.positions.clear()
        self._resume.clear()
        self._blocked.clear()

    def close(self) -> None:
        self.abort()
        self.txn.store.close()
