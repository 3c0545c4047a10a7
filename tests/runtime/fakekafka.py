"""An in-memory Kafka for unit tests of the runtime, in the spirit of Kafka Streams'
TopologyTestDriver: partition logs, read_committed transactions with fencing,
committed offsets with metadata, a consumer group with range assignment and
eager rebalances served from consume(), pause/resume, seek and ListOffsets.

It implements only what `processor.runtime.clients` declares. Exactly-once
against the real protocol, fencing races and real rebalances are tested
against the real broker; this is for holds, DLQ, retry, rewind and backpressure,
made deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from tests.harness import murmur2

METADATA_MAX = 4096


@dataclass
class Entry:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    timestamp: int
    txn: tuple[str, int] | None = None  # (transactional id, epoch) while pending
    state: str = "committed"  # pending | committed | aborted


@dataclass(frozen=True)
class FakeMessage:
    topic_: str
    partition_: int
    offset_: int
    entry: Entry

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.entry.timestamp)

    def key(self) -> bytes | None:
        return self.entry.key

    def value(self) -> bytes | None:
        return self.entry.value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.entry.headers

    def error(self) -> None:
        return None


@dataclass(frozen=True)
class FakeEof:
    """What librdkafka hands out when a partition was read to its end."""

    topic_: str
    partition_: int
    offset_: int

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._PARTITION_EOF)


@dataclass
class Group:
    members: dict[str, FakeConsumer] = field(default_factory=dict)
    offsets: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)


class FakeCluster:
    def __init__(self) -> None:
        self.logs: dict[str, list[list[Entry]]] = {}
        self.groups: dict[str, Group] = {}
        self.epochs: dict[str, int] = {}
        self.clock_ms = 1_800_000_000_000
        self.fail_next_commit: KafkaError | None = None
        self.fail_next_abort: KafkaError | None = None  # raised once the records are aborted
        self.max_message_bytes = 1_000_000
        self.commits = 0
        self._round_robin = itertools.count()

    # --- topics ----------------------------------------------------------------

    def create_topic(self, name: str, partitions: int) -> None:
        self.logs.setdefault(name, [[] for _ in range(partitions)])

    def partition_for(self, topic: str, key: bytes | None) -> int:
        count = len(self.logs[topic])
        if key is None:
            return next(self._round_robin) % count
        return (murmur2(key) & 0x7FFFFFFF) % count

    def append(self, topic: str, partition: int, entry: Entry) -> int:
        log = self.logs[topic][partition]
        log.append(entry)
        return len(log) - 1

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int | None = None,
    ) -> tuple[int, int]:
        """A plain committed record, as a non-transactional service would write it."""
        if partition < 0:
            partition = self.partition_for(topic, key)
        self.clock_ms += 1
        entry = Entry(key, value, headers, timestamp or self.clock_ms)
        return partition, self.append(topic, partition, entry)

    def lso(self, topic: str, partition: int) -> int:
        for offset, entry in enumerate(self.logs[topic][partition]):
            if entry.state == "pending":
                return offset
        return len(self.logs[topic][partition])

    def metadata(self, topic: str | None = None) -> Any:
        """What list_topics answers: `topic`'s partitions, or every topic's."""
        names = [topic] if topic else list(self.logs)
        return SimpleNamespace(
            topics={
                name: SimpleNamespace(
                    error=None, partitions={p: None for p in range(len(self.logs[name]))}
                )
                for name in names
            }
        )

    def committed_records(self, topic: str) -> list[FakeMessage]:
        return [
            FakeMessage(topic, p, o, e)
            for p, log in enumerate(self.logs[topic])
            for o, e in enumerate(log)
            if e.state == "committed"
        ]

    def committed_offset(self, group: str, topic: str, partition: int) -> tuple[int, str] | None:
        return self.groups.setdefault(group, Group()).offsets.get((topic, partition))

    # --- the group -------------------------------------------------------------------

    def rebalance(self, group_id: str) -> None:
        """Eager range assignment over every member's subscription."""
        group = self.groups[group_id]
        members = sorted(group.members)
        assignment: dict[str, list[TopicPartition]] = {m: [] for m in members}
        topics = sorted({t for m in group.members.values() for t in m.subscription})
        for topic in topics:
            if topic not in self.logs:
                continue
            subscribed = [m for m in members if topic in group.members[m].subscription]
            count = len(self.logs[topic])
            per, extra = divmod(count, len(subscribed))
            start = 0
            for i, member in enumerate(subscribed):
                size = per + (1 if i < extra else 0)
                assignment[member] += [TopicPartition(topic, p) for p in range(start, start + size)]
                start += size
        for member, tps in assignment.items():
            group.members[member].pending_assignment = tps

    def expire(self, group_id: str, member: str) -> None:
        """The member's session ran out."""
        group = self.groups[group_id]
        group.members.pop(member, None)
        if group.members:
            self.rebalance(group_id)

    def clients(self) -> FakeClients:
        return FakeClients(self)


class FakeClients:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []

    def consumer(self, config: dict[str, Any]) -> FakeConsumer:
        consumer = FakeConsumer(self.cluster, config)
        self.consumers.append(consumer)
        return consumer

    def producer(self, config: dict[str, Any]) -> FakeProducer:
        producer = FakeProducer(self.cluster, config)
        self.producers.append(producer)
        return producer

    def admin(self, config: dict[str, Any]) -> FakeAdmin:
        return FakeAdmin(self.cluster)


class FakeConsumer:
    def __init__(self, cluster: FakeCluster, config: dict[str, Any]) -> None:
        self.cluster = cluster
        self.group_id: str = config["group.id"]
        self.member_id: str = config.get("group.instance.id") or f"m-{id(self)}"
        self.static = "group.instance.id" in config
        self.read_committed = config.get("isolation.level") == "read_committed"
        self.eof = bool(config.get("enable.partition.eof"))
        self._eof_sent: set[tuple[str, int]] = set()
        self.subscription: list[str] = []
        self.positions: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.pending_assignment: list[TopicPartition] | None = None
        self.callbacks: dict[str, Callable[..., None]] = {}
        self.closed = False

    # --- group membership -----------------------------------------------------------

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self.subscription = list(topics)
        self.callbacks = callbacks
        group = self.cluster.groups.setdefault(self.group_id, Group())
        group.members[self.member_id] = self
        self.cluster.rebalance(self.group_id)

    def unsubscribe(self) -> None:
        self._revoke()
        group = self.cluster.groups[self.group_id]
        if group.members.get(self.member_id) is self:
            del group.members[self.member_id]
            if group.members:
                self.cluster.rebalance(self.group_id)
        self.subscription = []

    def _revoke(self) -> None:
        if self.positions and "on_revoke" in self.callbacks:
            self.callbacks["on_revoke"](self, self.assignment())
        self.positions.clear()
        self.paused.clear()

    def _serve_rebalance(self) -> None:
        if self.pending_assignment is None:
            return
        new, self.pending_assignment = self.pending_assignment, None
        self._revoke()
        if "on_assign" in self.callbacks:
            self.callbacks["on_assign"](self, new)
        if not self.positions:
            self.assign(new)

    # --- assignment and positions ------------------------------------------------------

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions.clear()
        self.incremental_assign(partitions)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions[(tp.topic, tp.partition)] = self._start(tp)

    def _start(self, tp: TopicPartition) -> int:
        if tp.offset >= 0:
            return tp.offset
        if tp.offset == OFFSET_END:
            return len(self.cluster.logs[tp.topic][tp.partition])
        committed = self.cluster.committed_offset(self.group_id, tp.topic, tp.partition)
        if tp.offset != OFFSET_BEGINNING and committed is not None:
            return committed[0]
        return 0  # auto.offset.reset=earliest

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions.pop((tp.topic, tp.partition), None)
            self.paused.discard((tp.topic, tp.partition))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, tp: TopicPartition) -> None:
        self.positions[(tp.topic, tp.partition)] = max(tp.offset, 0)
        self._eof_sent.discard((tp.topic, tp.partition))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.cluster.logs[tp.topic][tp.partition])

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            found = self.cluster.committed_offset(self.group_id, tp.topic, tp.partition)
            if found is None:
                out.append(TopicPartition(tp.topic, tp.partition, -1001))
            else:
                out.append(TopicPartition(tp.topic, tp.partition, found[0], metadata=found[1]))
        return out

    def consumer_group_metadata(self) -> Any:
        return SimpleNamespace(group_id=self.group_id, member=self)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self.cluster.metadata(topic)

    # --- reading ------------------------------------------------------------------------

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage | FakeEof]:
        if self.closed:
            raise RuntimeError("consumer closed")
        self._serve_rebalance()
        out: list[FakeMessage | FakeEof] = []
        for (topic, partition), position in list(self.positions.items()):
            if (topic, partition) in self.paused:
                continue
            log = self.cluster.logs[topic][partition]
            end = self.cluster.lso(topic, partition) if self.read_committed else len(log)
            while position < end and len(out) < num_messages:
                entry = log[position]
                if entry.state != "aborted":
                    out.append(FakeMessage(topic, partition, position, entry))
                    self._eof_sent.discard((topic, partition))
                position += 1
            self.positions[(topic, partition)] = position
            if self.eof and position >= end and (topic, partition) not in self._eof_sent:
                self._eof_sent.add((topic, partition))
                out.append(FakeEof(topic, partition, position))
        return out

    def close(self) -> None:
        if self.subscription and not self.static:
            self.unsubscribe()
        self.closed = True


class FakeProducer:
    def __init__(self, cluster: FakeCluster, config: dict[str, Any]) -> None:
        self.cluster = cluster
        self.transactional_id: str | None = config.get("transactional.id")
        self.epoch = -1
        self.in_transaction = False
        self._written: list[Entry] = []
        self._offsets: list[tuple[str, TopicPartition]] = []
        self._deliveries: list[tuple[Callable[..., None], FakeMessage]] = []

    def _check_fenced(self) -> None:
        if self.transactional_id and self.cluster.epochs.get(self.transactional_id) != self.epoch:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    def init_transactions(self, timeout: float = -1) -> None:
        assert self.transactional_id
        # A new epoch fences the previous producer and aborts what it left open.
        self.epoch = self.cluster.epochs.get(self.transactional_id, -1) + 1
        self.cluster.epochs[self.transactional_id] = self.epoch
        for partitions in self.cluster.logs.values():
            for log in partitions:
                for entry in log:
                    if (
                        entry.state == "pending"
                        and entry.txn
                        and entry.txn[0] == self.transactional_id
                    ):
                        entry.state, entry.txn = "aborted", None

    def begin_transaction(self) -> None:
        self._check_fenced()
        assert not self.in_transaction, "a transaction is open already"
        self.in_transaction = True

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int = 0,
        on_delivery: Callable[..., None] | None = None,
    ) -> None:
        self._check_fenced()
        assert self.in_transaction, "produce outside a transaction"
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers or [])
        if size > self.cluster.max_message_bytes:  # librdkafka's message.max.bytes
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))
        if partition < 0:
            partition = self.cluster.partition_for(topic, key)
        self.cluster.clock_ms += 1
        entry = Entry(
            key,
            value,
            headers,
            timestamp or self.cluster.clock_ms,
            txn=(self.transactional_id or "", self.epoch),
            state="pending",
        )
        offset = self.cluster.append(topic, partition, entry)
        self._written.append(entry)
        if on_delivery is not None:
            self._deliveries.append((on_delivery, FakeMessage(topic, partition, offset, entry)))

    def poll(self, timeout: float = 0) -> int:
        served, self._deliveries = self._deliveries, []
        for callback, message in served:
            callback(None, message)
        return len(served)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return 0

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._check_fenced()
        for tp in positions:
            if len(tp.metadata or "") > METADATA_MAX:
                raise KafkaException(
                    KafkaError(
                        KafkaError.OFFSET_METADATA_TOO_LARGE, "metadata", txn_requires_abort=True
                    )
                )
            self._offsets.append((group_metadata.group_id, tp))

    def commit_transaction(self, timeout: float = -1) -> None:
        self._check_fenced()
        failure, self.cluster.fail_next_commit = self.cluster.fail_next_commit, None
        if failure is not None:
            raise KafkaException(failure)
        for entry in self._written:
            entry.state, entry.txn = "committed", None
        for group_id, tp in self._offsets:
            group = self.cluster.groups.setdefault(group_id, Group())
            group.offsets[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")
        self._end()
        self.cluster.commits += 1

    def abort_transaction(self, timeout: float = -1) -> None:
        for entry in self._written:
            entry.state, entry.txn = "aborted", None
        self._end()
        failure, self.cluster.fail_next_abort = self.cluster.fail_next_abort, None
        if failure is not None:
            raise KafkaException(failure)

    def _end(self) -> None:
        self._written, self._offsets, self._deliveries = [], [], []
        self.in_transaction = False


class FakeAdmin:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def list_offsets(
        self, request: dict[TopicPartition, Any], **_: Any
    ) -> dict[TopicPartition, Future[Any]]:
        out: dict[TopicPartition, Future[Any]] = {}
        for tp, spec in request.items():
            future: Future[Any] = Future()
            if isinstance(spec, type(OffsetSpec.earliest())):
                offset = 0
            else:
                offset = self.cluster.lso(tp.topic, tp.partition)
            future.set_result(SimpleNamespace(offset=offset))
            out[tp] = future
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self.cluster.metadata(topic)

    def poll(self, timeout: float = 0) -> int:
        return 0
