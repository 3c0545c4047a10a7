"""The stateful exactly-once loop: consume the sources, run tasks, commit transactions.

One consumer in the application's group (range assignment, so partition p of
every source topic lands on the same instance), one transactional producer per
instance. Every commit interval, the outputs, changelog and DLQ records and the
consumed offsets commit in one transaction; only then does each task write its
staged state to RocksDB.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from processor.runtime.checkpoint import Checkpoint, CommitStuck
from processor.runtime.dlq import NotReadyTooLong, dead_letter
from processor.runtime.global_table import GlobalTable
from processor.runtime.handler import (
    BadInput,
    Forward,
    Handler,
    InputRecord,
    Outcome,
    Reject,
    Retry,
    Router,
    Skip,
    Stage,
)
from processor.runtime.offsets import end_offsets, start_offsets
from processor.runtime.restore import restore
from processor.runtime.store import PartitionStore
from processor.runtime.task import Backoff, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    bootstrap_servers: str
    application_id: str
    instance_id: str
    source_topics: tuple[str, ...]  # stateful: co-partitioned with the changelog
    changelog_topic: str
    dlq_topic: str
    state_dir: Path
    commit_interval_s: float = 0.1
    backoff: Backoff = field(default_factory=Backoff)
    client_config: Mapping[str, str] = field(default_factory=dict)  # every client
    consumer_config: Mapping[str, str] = field(default_factory=dict)  # the group consumer's
    batch_size: int = 500
    commit_timeout_s: float = 60.0  # a commit stuck longer: new producer, rewind
    route_topics: tuple[str, ...] = ()  # stateless: any partition count

    @property
    def transactional_id(self) -> str:
        # Stable per instance: a restarted instance fences its predecessor at once.
        return f"{self.application_id}-{self.instance_id}"


@dataclass
class Stats:
    processed: int = 0
    skipped: int = 0
    forwarded: int = 0
    not_routed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    restored: int = 0
    transactions: int = 0
    aborted: int = 0


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        handler: Handler,
        router: Router | None = None,
        global_tables: tuple[GlobalTable, ...] = (),
    ) -> None:
        self.config = config
        self.handler = handler
        self.router = router
        self.global_tables = global_tables
        self._route_topics = frozenset(config.route_topics)
        self._route_positions: dict[tuple[str, int], int] = {}
        self.stats = Stats()
        self.ready = threading.Event()  # set once the first assignment is restored
        self.last_loop_at = time.monotonic()  # liveness: the loop is not stuck
        self._stopping = threading.Event()
        self._tasks: dict[int, Task] = {}
        common = {"bootstrap.servers": config.bootstrap_servers, **config.client_config}
        self._consumer = Consumer(
            {
                **common,
                "group.id": config.application_id,
                "client.id": config.transactional_id,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # A new application id starts from the beginning, as Kafka Streams does.
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",
                # librdkafka prefetches up to 64 MB into the one consumer queue: on a
                # backlog the repartitioned records would wait behind all of it.
                "queued.max.messages.kbytes": 2048,
                **config.consumer_config,
            }
        )
        self._restorer = Consumer(
            {
                **common,
                "group.id": f"{config.application_id}-restore",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",  # a stored offset below retention
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self._producer_config = {
            **common,
            "transactional.id": config.transactional_id,
            "client.id": config.transactional_id,
            "linger.ms": 5,
            # Java's default partitioner: keys land where Kafka Streams would put them.
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": 10_000,
        }
        self._producer = Producer(self._producer_config)
        self._abandoned: list[Producer] = []  # stuck in a call: kept alive, never used
        self._admin = AdminClient(common)
        self._checkpoint = Checkpoint(self._producer, config.changelog_topic)

    # --- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Processes until `stop()`; commits or aborts the open transaction on the way out."""
        self._producer.init_transactions(60)
        for table in self.global_tables:
            table.catch_up()
        self._consumer.subscribe(
            [*self.config.route_topics, *self.config.source_topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("instance %s joined group %s", self.config.instance_id, self.config.application_id)
        try:
            while not self._stopping.is_set():
                self._poll_once()
            self._commit_or_abort()
        finally:
            self._close()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def assigned_partitions(self) -> set[int]:
        return set(self._tasks)

    @property
    def held_partitions(self) -> int:
        """Source partitions waiting on a not-ready record."""
        return sum(len(task.waiting) for task in list(self._tasks.values()))

    def lookup(self, key: bytes) -> bytes | None:
        """The committed state of `key`, if one of this instance's tasks holds it.
        Safe from another thread: RocksDB reads are; a store closing under a
        rebalance raises, and the caller retries."""
        for task in list(self._tasks.values()):
            value = task.store.get(key)
            if value is not None:
                return value
        return None

    def _close(self) -> None:
        try:
            self._consumer.close()  # revokes (commits nothing more) and leaves the group
        finally:
            for task in self._tasks.values():
                task.close()
            self._tasks.clear()
            self._restorer.close()
            for table in self.global_tables:
                table.close()
            self._producer.flush(5)
            log.info("instance %s stopped: %s", self.config.instance_id, self.stats)

    # --- the loop ----------------------------------------------------------------

    def _poll_once(self) -> None:
        self.last_loop_at = time.monotonic()
        messages = self._consumer.consume(self.config.batch_size, timeout=self._poll_timeout())
        batches: dict[int, list[InputRecord]] = defaultdict(list)
        to_route: list[InputRecord] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer: %s", error)
                continue
            record = InputRecord(
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                timestamp=msg.timestamp()[1],
                key=msg.key(),
                value=msg.value(),
                headers=list(msg.headers() or []),
            )
            if record.topic in self._route_topics:
                to_route.append(record)
            else:
                batches[record.partition].append(record)
        for table in self.global_tables:
            table.poll()
        if to_route:
            self._route(to_route)
        for partition, records in batches.items():
            task = self._tasks.get(partition)
            if task is None:
                continue  # revoked while the batch was in flight
            held = task.run(records, lambda r, t=task: self._handle(t, r))
            if held:
                self._consumer.pause([TopicPartition(topic, partition) for topic in held])
        self._retry_due()
        if (
            self._checkpoint.is_open
            and time.monotonic() - self._checkpoint.opened_at >= self.config.commit_interval_s
        ):
            self._commit()

    def _poll_timeout(self) -> float:
        timeout = 0.1
        if self._checkpoint.is_open:
            left = self.config.commit_interval_s - (time.monotonic() - self._checkpoint.opened_at)
            timeout = min(timeout, max(left, 0.0))
        return timeout

    def _handle(self, task: Task, record: InputRecord) -> Outcome | None:
        self._checkpoint.begin()
        try:
            outcome = self.handler(record, task.get(record.key or b""))
        except BadInput as exc:
            self._dead_letter(record, exc)
            return None
        if isinstance(outcome, Retry):
            if task.past_deadline(record, time.monotonic()):
                self._dead_letter(record, NotReadyTooLong(outcome.reason))
                return None
            self.stats.retried += 1
            log.debug(
                "%s[%d]@%d not ready: %s",
                record.topic,
                record.partition,
                record.offset,
                outcome.reason,
            )
            return outcome
        if isinstance(outcome, Stage):
            for out in outcome.records:
                self._checkpoint.send(out, record.timestamp)
            self._checkpoint.changelog(task.partition, record.key or b"", outcome.state)
            self.stats.processed += 1
        elif isinstance(outcome, Skip):
            self.stats.skipped += 1
        return outcome

    def _route(self, records: list[InputRecord]) -> None:
        assert self.router is not None, "route topics without a router"
        outcomes = self.router(records)
        self._checkpoint.begin()
        for record, outcome in zip(records, outcomes, strict=True):
            match outcome:
                case Forward():
                    for out in outcome.records:
                        self._checkpoint.send(out, record.timestamp)
                    self.stats.forwarded += 1
                case Skip():
                    self.stats.not_routed += 1
                    log.debug(
                        "%s[%d]@%d not routed: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        outcome.reason,
                    )
                case Reject():
                    self._dead_letter(record, BadInput(outcome.reason))
            self._route_positions[(record.topic, record.partition)] = record.offset + 1

    def _dead_letter(self, record: InputRecord, error: Exception) -> None:
        log.warning(
            "dead-lettered %s[%d]@%d to %s: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self.config.dlq_topic,
            type(error).__name__,
            error,
        )
        self._checkpoint.send(dead_letter(self.config.dlq_topic, record, error), record.timestamp)
        self.stats.dead_lettered += 1

    def _retry_due(self) -> None:
        now = time.monotonic()
        for task in self._tasks.values():
            for topic, offset in task.due(now):
                self._consumer.seek(TopicPartition(topic, task.partition, offset))
                self._consumer.resume([TopicPartition(topic, task.partition)])

    # --- transactions --------------------------------------------------------------

    def _commit(self) -> None:
        offsets = [
            TopicPartition(topic, partition, offset)
            for partition, task in self._tasks.items()
            for topic, offset in task.positions.items()
        ]
        offsets += [TopicPartition(t, p, o) for (t, p), o in self._route_positions.items()]
        backoff = 0.1
        while True:
            try:
                changelog_ends = self._checkpoint.commit_within(
                    offsets, self._consumer.consumer_group_metadata(), self.config.commit_timeout_s
                )
                break
            except CommitStuck as exc:
                log.error(
                    "%s; replacing the producer (it fences and aborts that transaction) "
                    "and reprocessing from the committed offsets",
                    exc,
                )
                self._replace_producer()
                self._rewind()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.retriable() and not self._stopping.is_set():
                    log.warning("commit failed, retrying: %s", error)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if error.txn_requires_abort() or error.retriable():
                    log.warning("transaction aborted: %s", error)
                    self._abort_and_rewind()
                    return
                raise
        for partition, task in self._tasks.items():
            task.committed(changelog_ends.get(partition))
        self.stats.transactions += 1

    def _commit_or_abort(self) -> None:
        if self._checkpoint.is_open:
            self._commit()

    def _abort_and_rewind(self) -> None:
        self._checkpoint.abort()
        self._rewind()

    def _replace_producer(self) -> None:
        """A new producer with the same transactional.id: init_transactions fences the
        stuck one and aborts its open transaction on the broker."""
        self._abandoned.append(self._producer)
        self._producer = Producer(self._producer_config)
        self._producer.init_transactions(60)
        self._checkpoint = Checkpoint(self._producer, self.config.changelog_topic)

    def _rewind(self) -> None:
        """Drops what the transaction staged and seeks back to the committed offsets."""
        self.stats.aborted += 1
        assigned = self._consumer.assignment()
        for tp in self._consumer.committed(assigned, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self._consumer.resume(assigned)
        for task in self._tasks.values():
            task.aborted()
            task.positions.clear()
        self._route_positions.clear()

    # --- rebalance ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stateful = {tp.partition for tp in partitions if tp.topic not in self._route_topics}
        new = sorted(stateful - self._tasks.keys())
        changelog = [(self.config.changelog_topic, p) for p in new]
        lows = start_offsets(self._admin, changelog)
        ends = end_offsets(self._admin, changelog)
        for partition in new:
            store = PartitionStore(
                self.config.state_dir / self.config.changelog_topic / str(partition)
            )
            started = time.monotonic()
            key = (self.config.changelog_topic, partition)
            count = restore(self._restorer, store, key[0], partition, low=lows[key], end=ends[key])
            self.stats.restored += count
            log.info(
                "task %d: restored %d changelog records in %.2fs",
                partition,
                count,
                time.monotonic() - started,
            )
            self._tasks[partition] = Task(partition, store, self.config.backoff)
        log.info("assigned partitions %s", sorted(self._tasks))
        self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._commit_or_abort()
        except KafkaException as exc:
            log.warning("commit on revocation failed: %s", exc)
            self._abort_quietly()
        self._drop_tasks(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: nothing of ours may commit.
        self._abort_quietly()
        self._drop_tasks(partitions)

    def _abort_quietly(self) -> None:
        """Abort, where a fenced (fatal) producer cannot: its transaction dies anyway."""
        try:
            self._checkpoint.abort()
        except KafkaException as exc:
            log.warning("abort failed: %s", exc)
            self._checkpoint.is_open = False
        for task in self._tasks.values():
            task.aborted()

    def _drop_tasks(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._route_positions.pop((tp.topic, tp.partition), None)
        stateful = {tp.partition for tp in partitions if tp.topic not in self._route_topics}
        for partition in stateful & self._tasks.keys():
            self._tasks.pop(partition).close()
