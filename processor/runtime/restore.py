"""Restoring stores from their changelogs, a slice per turn of the main loop.

Every restoring partition is read together, by one consumer, so restoring
never happens inside a rebalance callback: the main loop goes on polling the
group consumer (membership, commits, liveness) between slices, as Kafka
Streams' StreamThread does between `restoreAllActiveTasks` calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from rocksdict import WriteBatch

from processor.runtime.clients import Admin, Consumer
from processor.runtime.offsets import end_offsets, start_offsets
from processor.runtime.store import PartitionStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Restoring:
    partition: int
    store: PartitionStore
    start: int
    end: int  # the changelog's last stable offset when restoring began
    position: int
    restored: int = 0
    started_at: float = 0.0

    @property
    def remaining(self) -> int:
        return max(self.end - self.position, 0)


class Restorer:
    def __init__(self, consumer: Consumer, admin: Admin, topic: str) -> None:
        self._consumer = consumer
        self._admin = admin
        self.topic = topic
        self.active: dict[int, Restoring] = {}
        self.restored = 0

    def add(self, stores: dict[int, PartitionStore]) -> list[int]:
        """Starts restoring `stores` (partition -> store); returns the partitions
        already up to date, which need no reading at all."""
        if not stores:
            return []
        keys = [(self.topic, p) for p in stores]
        lows, ends = start_offsets(self._admin, keys), end_offsets(self._admin, keys)
        done, assign = [], []
        now = time.monotonic()
        for partition, store in stores.items():
            low, end = lows[(self.topic, partition)], ends[(self.topic, partition)]
            start = store.changelog_offset
            if start is not None and not low <= start <= end:
                # The changelog was recreated or truncated under us: start over.
                log.warning(
                    "store of %s[%d] reflects offset %d outside [%d, %d]; rebuilding",
                    self.topic,
                    partition,
                    start,
                    low,
                    end,
                )
                store.wipe()
                start = None
            position = low if start is None else start
            if position >= end:
                done.append(partition)
                continue
            self.active[partition] = Restoring(partition, store, position, end, position, 0, now)
            assign.append(TopicPartition(self.topic, partition, position))
        if assign:
            self._consumer.incremental_assign(assign)
        return done

    def remove(self, partitions: Iterable[int]) -> None:
        gone = []
        for p in partitions:
            restoring = self.active.pop(p, None)
            if restoring is not None:
                restoring.store.persist()  # before any write with the WAL
                gone.append(p)
        if gone:
            self._consumer.incremental_unassign([TopicPartition(self.topic, p) for p in gone])

    def step(self, max_records: int = 2_000, timeout: float = 0.0) -> list[Restoring]:
        """Reads one slice of every restoring partition; returns those that reached
        their end (their stores now reflect it). Slices of a few thousand records stay
        in the CPU's caches from consume() to the WriteBatch: measured 530-555k
        records/s against 457-493k with 10,000."""
        if not self.active:
            return []
        batches: dict[int, WriteBatch] = {}
        counts: dict[int, int] = {}
        last, batch, put, count = -1, None, None, 0  # records come in runs of one partition
        for msg in self._consumer.consume(max_records, timeout=timeout):
            key = msg.key()
            if key is None:  # changelog records have keys: an error event, or junk
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("restoring %s: %s", self.topic, error)
                continue
            partition = msg.partition()
            if partition != last:
                if batch is not None:
                    counts[last] = counts.get(last, 0) + count
                last, count = partition, 0
                batch = batches.get(partition)
                if batch is None and partition in self.active:
                    batch = batches[partition] = WriteBatch(raw_mode=True)
                put = None if batch is None else batch.put
            if put is None:
                continue  # removed while fetched
            value = msg.value()
            if value is None:
                batch.delete(key)  # type: ignore[union-attr]
            else:
                put(key, value)
            count += 1
        if batch is not None:
            counts[last] = counts.get(last, 0) + count
        # Transaction markers leave gaps: the consumer's position says where it is.
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in self.active])
        finished: list[Restoring] = []
        for tp in positions:
            restoring = self.active[tp.partition]
            batch = batches.get(tp.partition)
            position = max(restoring.position, tp.offset)
            if batch is not None or position != restoring.position:
                # No WAL while restoring (twice as fast); persisted when done (`remove`).
                restoring.store.write_batch(batch or WriteBatch(raw_mode=True), position, wal=False)
            restoring.position = position
            restoring.restored += counts.get(tp.partition, 0)
            if position >= restoring.end:
                finished.append(restoring)
        self.restored += sum(counts.values())
        if finished:
            self.remove(r.partition for r in finished)
        return finished

    def close(self) -> None:
        self.active.clear()
        self._consumer.close()
