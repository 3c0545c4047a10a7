"""Log start and end offsets of many partitions in one request each.

The end is the last stable offset (read_committed): what a read_committed
consumer can reach. One batched ListOffsets instead of a round trip per
partition (the consumer's watermark query costs ~200 ms a partition here).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]


def list_offsets(
    admin: AdminClient,
    specs: dict[tuple[str, int], OffsetSpec],
    timeout_s: float = 120.0,
) -> Offsets:
    """ListOffsets for every partition in one request, retried through transient errors."""
    request = {TopicPartition(t, p): spec for (t, p), spec in specs.items()}
    if not request:
        return {}
    deadline = time.monotonic() + timeout_s
    backoff = 0.1
    while True:
        futures = admin.list_offsets(
            request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=30
        )
        try:
            return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
        except KafkaException as exc:
            # Leader changes, a restarting broker and a just-created topic (its leader
            # is in the metadata before the broker serves it) answer with transient
            # errors (FENCED_LEADER_EPOCH, NOT_LEADER...): wait them out, as the clients do.
            error = exc.args[0]
            if error.fatal() or time.monotonic() + backoff > deadline:
                raise
            # A new topic's first second of NOT_LEADER is routine; say so only if it lasts.
            level = logging.WARNING if backoff >= 1.0 else logging.DEBUG
            log.log(level, "listing offsets failed, retrying: %s", error)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            # The admin client keeps stale leader epochs after a broker restart
            # (FENCED_LEADER_EPOCH forever) until its metadata is refreshed.
            with contextlib.suppress(KafkaException):
                admin.list_topics(timeout=10)


def end_offsets(admin: AdminClient, partitions: Iterable[tuple[str, int]]) -> Offsets:
    return list_offsets(admin, dict.fromkeys(partitions, OffsetSpec.latest()))


def start_offsets(admin: AdminClient, partitions: Iterable[tuple[str, int]]) -> Offsets:
    return list_offsets(admin, dict.fromkeys(partitions, OffsetSpec.earliest()))
