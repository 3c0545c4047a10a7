"""Global tables: every partition of one topic, read by every instance outside the
consumer group (read_committed) into a local RocksDB store, together with the
offsets it reflects, so a restart reads only the tail.

The main loop reads a slice each turn (`step`); nothing blocks. A lookup that
misses is final only once the table has reached end offsets taken after the
record that missed arrived (`GlobalTables.caught_up`): never decide from
a lagging table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from rocksdict import WriteBatch

from processor.runtime.clients import Admin, Consumer
from processor.runtime.offsets import end_offsets
from processor.runtime.store import NO_WAL, StateMemory, open_rocksdb

log = logging.getLogger(__name__)

Extract = Callable[[bytes], Iterable[tuple[bytes, bytes]]]
"""record value -> the table entries it contributes (none for records to ignore)."""

_META = "meta"
PARTITIONS_CHECK_S = 30.0  # how often a target also looks for partitions added to a table


class GlobalTable:
    def __init__(
        self,
        topic: str,
        path: Path,
        extract: Extract,
        consumer: Consumer,
        memory: StateMemory,
    ) -> None:
        self.topic = topic
        self._extract = extract
        self._db = open_rocksdb(path, memory)
        self._meta_handle = self._db.get_column_family_handle(_META)
        self._meta = self._db.get_column_family(_META)
        self._consumer = consumer
        self.positions: dict[int, int] = {}
        self.records = 0

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def assign_new_partitions(self, admin: Admin) -> None:
        # Asked of the admin client: the consumer's own metadata requests queue behind
        # its long-polling fetches (fetch.wait.max.ms) on the same connection.
        metadata = admin.list_topics(self.topic, timeout=30).topics[self.topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        new = sorted(p for p in metadata.partitions if p not in self.positions)
        if not new:
            return
        starts = []
        for p in new:
            stored = self._meta.get(str(p).encode())
            offset = int(stored) if stored is not None else OFFSET_BEGINNING
            self.positions[p] = max(offset, 0)
            starts.append(TopicPartition(self.topic, p, offset))
        self._consumer.incremental_assign(starts)

    def step(self, max_records: int = 10_000) -> int:
        """Applies what is fetched already; returns the records read."""
        messages = self._consumer.consume(max_records, timeout=0)
        if not messages:
            return 0
        batch = WriteBatch(raw_mode=True)
        read = 0
        positions = dict(self.positions)  # applied only with the batch: extract may raise
        try:
            read = self._apply(messages, batch, positions)
        except BaseException:
            # Read again what this slice took, once whatever failed is back.
            for p, offset in self.positions.items():
                self._consumer.seek(TopicPartition(self.topic, p, offset))
            raise
        for p, offset in positions.items():
            batch.put(str(p).encode(), str(offset).encode(), self._meta_handle)
        self._db.write(batch, NO_WAL)  # see store.py: consistent on disk, the topic is the copy
        self.positions = positions
        self.records += read
        return read

    def _apply(self, messages: list, batch: WriteBatch, positions: dict[int, int]) -> int:
        read = 0
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("global table %s: %s", self.topic, error)
                continue
            for key, value in self._extract(msg.value() or b""):
                batch.put(key, value)
            positions[msg.partition()] = msg.offset() + 1
            read += 1
        return read

    def reached(self, target: dict[int, int]) -> bool:
        if all(self.positions.get(p, 0) >= end for p, end in target.items()):
            return True
        # Transaction markers leave gaps: the consumer's position says where it is.
        for tp in self._consumer.position([TopicPartition(self.topic, p) for p in target]):
            if tp.offset >= 0 and tp.offset > self.positions.get(tp.partition, 0):
                self.positions[tp.partition] = tp.offset
        return all(self.positions.get(p, 0) >= end for p, end in target.items())

    def close(self) -> None:
        self._consumer.close()
        del self._meta, self._meta_handle
        self._db.close()


class GlobalTables:
    """Drives an engine's global tables: one ListOffsets for all of them when a
    miss needs a fresh target, a slice of reading per turn.

    Targets are numbered: a miss takes a ticket, the number of the next target,
    which is taken after the miss; the miss may be decided once that target is
    reached.
    """

    def __init__(self, tables: Iterable[GlobalTable], admin: Admin) -> None:
        self.tables = tuple(tables)
        self._admin = admin
        self._target: dict[str, dict[int, int]] | None = None
        self._next = 1  # number of the next target to take
        self._taken = 0
        self._reached = 0
        self._wanted = False
        self.first_caught_up_s: float | None = None  # start-up catch-up, for the logs
        self._started = time.monotonic()
        self._partitions_checked = self._started

    def start(self) -> None:
        for table in self.tables:
            table.assign_new_partitions(self._admin)
        self._partitions_checked = time.monotonic()
        self.ticket()  # readiness waits for the first catch-up

    def ticket(self) -> int:
        """For a record that just missed: the target that will decide it."""
        self._wanted = True
        return self._next

    def caught_up(self, ticket: int) -> bool:
        return self._reached >= ticket

    @property
    def ready(self) -> bool:
        return not self.tables or self.first_caught_up_s is not None

    @property
    def targets(self) -> int:
        """Targets taken so far: each a ListOffsets and a catch-up (a round)."""
        return self._taken

    @property
    def behind(self) -> bool:
        """A target was taken and is not reached yet."""
        return self._reached < self._taken

    @property
    def lag(self) -> int:
        if self._target is None:
            return 0
        return sum(
            max(end - table.positions.get(p, 0), 0)
            for table in self.tables
            for p, end in self._target[table.topic].items()
        )

    def step(self) -> bool:
        """Reads a slice; returns True while some table is behind its target."""
        if not self.tables:
            return False
        if self._wanted:
            self._take_target()
        if self._reached < self._taken:
            for table in self.tables:
                table.step()
            assert self._target is not None
            if all(t.reached(self._target[t.topic]) for t in self.tables):
                self._reached = self._taken
                if self.first_caught_up_s is None:
                    self.first_caught_up_s = time.monotonic() - self._started
                    log.info(
                        "global tables caught up in %.2fs (%d records)",
                        self.first_caught_up_s,
                        sum(t.records for t in self.tables),
                    )
        else:
            for table in self.tables:  # keep fresh between targets
                table.step(1000)
        return self._reached < self._taken

    def _take_target(self) -> None:
        self._taken, self._next, self._wanted = self._next, self._next + 1, False
        if time.monotonic() - self._partitions_checked >= PARTITIONS_CHECK_S:
            self._partitions_checked = time.monotonic()
            for table in self.tables:
                table.assign_new_partitions(self._admin)
        ends = end_offsets(self._admin, [(t.topic, p) for t in self.tables for p in t.positions])
        self._target = {t.topic: {p: ends[(t.topic, p)] for p in t.positions} for t in self.tables}

    def close(self) -> None:
        for table in self.tables:
            table.close()
