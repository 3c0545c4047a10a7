"""A toy application for driving the runtime without a broker and without the saga.

Two co-partitioned source topics: `adds` ("add:N" adds N to the key's total)
and `needs` ("need:N" is not ready until the total reaches N, then publishes
"done:N"), as a flight failure waits for ticket confirmations. "bad" is bad
input. Every change publishes the new total to `totals`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.runtime.clock import Clock
from processor.runtime.engine import Engine, EngineConfig
from processor.runtime.handler import BadInput, OutputRecord, Record, Retry, Stage
from tests.runtime.fakekafka import FakeCluster, FakeConsumer, FakeMessage

ADDS, NEEDS, TOTALS, DONE = "adds", "needs", "totals", "done"
CHANGELOG, DLQ = "toy-changelog", "toy-dlq"


class FakeClock(Clock):
    """The cluster's clock: tests move it by setting `cluster.clock_ms`."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def monotonic(self) -> float:
        return self.cluster.clock_ms / 1000

    def wall_ms(self) -> int:
        return self.cluster.clock_ms


class IntSerde:
    def dumps(self, state: int) -> bytes:
        return str(state).encode()

    def loads(self, raw: bytes) -> int:
        return int(raw)

    def label(self, raw: bytes) -> str:
        return "big" if int(raw) >= 10 else "small"


def handle(record: Record, total: int | None) -> Stage | Retry:
    verb, _, number = (record.value() or b"").decode().partition(":")
    if not number.isdigit():
        raise BadInput(f"not a toy command: {record.value()!r}")
    n, total = int(number), total or 0
    if verb == "add":
        total += n
        return Stage(total, [OutputRecord(TOTALS, record.key(), str(total).encode())])
    if verb == "need":
        if total < n:
            return Retry(f"total {total} < {n}")
        return Stage(total, [OutputRecord(DONE, record.key(), f"done:{n}".encode())])
    raise BadInput(f"unknown verb {verb!r}")


@dataclass
class Toy:
    """A fake cluster with the toy's topics, and engines over it."""

    state_dir: Path
    partitions: int = 2
    cluster: FakeCluster = field(default_factory=FakeCluster)

    def __post_init__(self) -> None:
        self.clients = self.cluster.clients()
        for topic in (ADDS, NEEDS, CHANGELOG):
            self.cluster.create_topic(topic, self.partitions)
        for topic in (TOTALS, DONE, DLQ):
            self.cluster.create_topic(topic, 1)

    def engine(self, instance: str = "a", **options: Any) -> Engine:
        config = EngineConfig(
            bootstrap_servers="fake",
            application_id="toy",
            instance_id=instance,
            source_topics=(ADDS, NEEDS),
            changelog_topic=CHANGELOG,
            dlq_topic=DLQ,
            state_dir=self.state_dir / instance,
            state_memory=16 << 20,
            **options,
        )
        engine = Engine(
            config,
            handle,
            IntSerde(),
            clients=self.clients,
            clock=FakeClock(self.cluster),
        )
        engine.start()
        return engine

    def send(self, topic: str, key: str, value: str) -> tuple[int, int]:
        return self.cluster.produce(topic, value.encode(), key.encode())

    def values(self, topic: str) -> list[tuple[str, str]]:
        return [
            ((m.key() or b"").decode(), (m.value() or b"").decode())
            for m in self.cluster.committed_records(topic)
        ]

    def fetcher(self) -> FakeConsumer:
        """The newest engine's consumer of its stateful partitions."""
        return [c for c in self.clients.consumers if c.group_id == "toy-fetch"][-1]

    def dead(self) -> list[FakeMessage]:
        return self.cluster.committed_records(DLQ)

    def committed(self, topic: str, partition: int) -> tuple[int, str] | None:
        return self.cluster.committed_offset("toy", topic, partition)


def turns(engine: Engine, n: int = 5) -> None:
    for _ in range(n):
        engine.turn()


def same_partition_keys(partitions: int, count: int = 2) -> list[str]:
    """Keys that land on one partition (murmur2, as the producer places them)."""
    from tests.harness import partition_of

    keys = [f"k{i}" for i in range(200)]
    first = partition_of(keys[0], partitions)
    return [k for k in keys if partition_of(k, partitions) == first][:count]
