"""Restore a partition store from its changelog, from the offset it reflects to the end."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processor.runtime.store import PartitionStore

log = logging.getLogger(__name__)

_FLUSH_EVERY = 10_000


def restore(
    consumer: Consumer,
    store: PartitionStore,
    topic: str,
    partition: int,
    low: int,
    end: int,
    timeout_s: float = 300,
) -> int:
    """Reads changelog partition `partition` from the offset `store` reflects up to
    `end` (its last stable offset); returns the records read.

    `consumer` is read_committed; the end is detected by position, since
    transaction markers leave offset gaps.
    """
    start = store.changelog_offset
    if start is not None and not low <= start <= end:
        # The changelog was recreated or truncated under us: start over.
        log.warning(
            "store of %s[%d] reflects offset %d outside [%d, %d]; rebuilding",
            topic,
            partition,
            start,
            low,
            end,
        )
        store.wipe()
        start = None
    position = low if start is None else start
    if position >= end:
        return 0
    consumer.assign([TopicPartition(topic, partition, position)])
    changes: dict[bytes, bytes | None] = {}
    restored = 0
    deadline = time.monotonic() + timeout_s
    try:
        while position < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic}[{partition}] stalled at {position}/{end}")
            # A short wait: consume() holds a partial batch for the whole timeout.
            for msg in consumer.consume(1000, timeout=0.05):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("restoring %s[%d]: %s", topic, partition, error)
                    continue
                changes[msg.key()] = msg.value()
                restored += 1
            [now_at] = consumer.position([TopicPartition(topic, partition)])
            position = max(position, now_at.offset)
            if len(changes) >= _FLUSH_EVERY:
                store.write(changes, position)
                changes.clear()
        store.write(changes, position)
    finally:
        consumer.unassign()
    return restored
