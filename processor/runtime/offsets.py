"""Log start and end offsets of many partitions in one request each.

The end is the last stable offset (read_committed): what a read_committed
consumer can reach. One batched ListOffsets instead of a round trip per
partition (the consumer's watermark query costs ~200 ms a partition here).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

Offsets = dict[tuple[str, int], int]


def _list(admin: AdminClient, partitions: Iterable[tuple[str, int]], spec: OffsetSpec) -> Offsets:
    request = {TopicPartition(t, p): spec for t, p in partitions}
    if not request:
        return {}
    futures = admin.list_offsets(
        request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=30
    )
    return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}


def end_offsets(admin: AdminClient, partitions: Iterable[tuple[str, int]]) -> Offsets:
    return _list(admin, partitions, OffsetSpec.latest())


def start_offsets(admin: AdminClient, partitions: Iterable[tuple[str, int]]) -> Offsets:
    return _list(admin, partitions, OffsetSpec.earliest())
