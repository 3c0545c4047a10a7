"""Creating and checking the topics the topology needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processor.topology import Topics

log = logging.getLogger(__name__)


class TopologyError(RuntimeError):
    """The cluster's topics do not fit the topology; the message names them."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


def internal_topics(topics: Topics, partitions: int) -> list[TopicSpec]:
    """Repartition topics and changelog must be co-partitioned; the DLQ need not be."""
    return [
        *(TopicSpec(name, partitions) for name in topics.repartitions),
        TopicSpec(topics.changelog, partitions, {"cleanup.policy": "compact"}),
        TopicSpec(topics.dlq, 1),
    ]


def partition_counts(admin: AdminClient, names: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic among `names`."""
    metadata = admin.list_topics(timeout=30).topics
    return {
        name: len(metadata[name].partitions)
        for name in names
        if name in metadata and metadata[name].error is None
    }


def create_topics(admin: AdminClient, specs: Iterable[TopicSpec]) -> list[str]:
    """Creates the topics that do not exist; returns their names."""
    specs = list(specs)
    existing = partition_counts(admin, (s.name for s in specs))
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=dict(s.config))
        for s in specs
        if s.name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_visible(admin, created)
    log.info("created topics %s", created)
    return created


def _wait_visible(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    # CreateTopics can answer before the broker's metadata cache shows the topics.
    deadline = time.monotonic() + timeout_s
    while len(partition_counts(admin, names)) < len(names):
        if time.monotonic() > deadline:
            raise TopologyError(f"created topics not visible after {timeout_s}s: {names}")
        time.sleep(0.1)


def ensure_internal_topics(admin: AdminClient, topics: Topics, partitions: int) -> int:
    """Creates missing internal topics (matching existing ones' partition count),
    then refuses mis-partitioned ones. Returns the partition count in use."""
    specs = internal_topics(topics, partitions)
    copartitioned = [s.name for s in specs if s.name != topics.dlq]
    counts = partition_counts(admin, copartitioned)
    if counts:
        partitions = max(counts.values())
        specs = internal_topics(topics, partitions)
    create_topics(admin, specs)
    check_copartitioned(admin, copartitioned)
    return partitions


def check_copartitioned(admin: AdminClient, names: list[str], wait_s: float = 30.0) -> None:
    """Called once `names` exist: a missing one is one the broker that answered has not
    learnt of yet (a new topic reaches each broker's metadata a moment after its creation,
    and each request may go to another broker), so it is waited for, up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        counts = partition_counts(admin, names)
        missing = [n for n in names if n not in counts]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if missing:
        raise TopologyError(f"missing topics: {', '.join(missing)}")
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{n} ({c})" for n, c in sorted(counts.items()))
        raise TopologyError(
            f"internal topics are not co-partitioned (they need equal partition counts): {listing}"
        )


def require_topics(admin: AdminClient, names: Iterable[str], what: str) -> None:
    names = list(names)
    missing = sorted(set(names) - partition_counts(admin, names).keys())
    if missing:
        raise TopologyError(f"missing {what} topics: {', '.join(missing)}")
