"""A global table: every partition of one topic, read by every instance outside the
consumer group (read_committed) into a local RocksDB store, together with the
offsets it reflects, so a restart reads only the tail.

`catch_up()` reads to the end offsets taken when it is called: a lookup that
misses after it is a real miss, never the table lagging behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from rocksdict import WriteBatch

from processor.runtime.offsets import end_offsets
from processor.runtime.store import open_rocksdb

log = logging.getLogger(__name__)

Extract = Callable[[bytes], Iterable[tuple[bytes, bytes]]]
"""record value -> the table entries it contributes (none for records to ignore)."""

_OFFSET_PREFIX = b"\x00offset:"


class GlobalTable:
    def __init__(
        self,
        topic: str,
        path: Path,
        extract: Extract,
        client_config: Mapping[str, str],
    ) -> None:
        self.topic = topic
        self._extract = extract
        self._db = open_rocksdb(path)
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": f"global-table-{topic}",  # required by the client; never committed
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",  # a stored offset below retention
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        self._admin = AdminClient(dict(client_config))
        self._positions: dict[int, int] = {}
        self.records = 0

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def poll(self, timeout: float = 0.0) -> int:
        """Applies what is fetched already (or arrives within `timeout`): keeps the
        table fresh between catch-ups."""
        return self._read(timeout)

    def _read(self, timeout: float) -> int:
        if not self._positions:
            self._assign_new_partitions()
        messages = self._consumer.consume(1000, timeout=timeout)
        batch = WriteBatch(raw_mode=True)
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
            self._positions[msg.partition()] = msg.offset() + 1
        if messages:
            self._note_positions(batch)
            self._db.write(batch)
            self.records += len(messages)
        return len(messages)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Reads until every partition reaches the end offset it has now."""
        self._assign_new_partitions()
        ends = {
            p: end
            for (_, p), end in end_offsets(
                self._admin, ((self.topic, p) for p in self._positions)
            ).items()
        }
        deadline = time.monotonic() + timeout_s
        while any(self._positions[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"global table {self.topic} did not reach {ends}")
            self._read(0.1)
            # Transaction markers leave gaps: the consumer's position says where it is.
            for tp in self._consumer.position([TopicPartition(self.topic, p) for p in ends]):
                if tp.offset >= 0:
                    self._positions[tp.partition] = max(self._positions[tp.partition], tp.offset)

    def _assign_new_partitions(self) -> None:
        metadata = self._consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        new = [p for p in metadata.partitions if p not in self._positions]
        if not new:
            return
        starts = []
        for p in sorted(new):
            stored = self._db.get(_OFFSET_PREFIX + str(p).encode())
            offset = int(stored) if stored is not None else OFFSET_BEGINNING
            self._positions[p] = max(offset, 0)
            starts.append(TopicPartition(self.topic, p, offset))
        self._consumer.incremental_assign(starts)

    def _note_positions(self, batch: WriteBatch) -> None:
        for p, offset in self._positions.items():
            batch.put(_OFFSET_PREFIX + str(p).encode(), str(offset).encode())

    def close(self) -> None:
        self._consumer.close()
        self._db.close()
