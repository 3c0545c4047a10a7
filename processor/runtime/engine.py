"""The exactly-once loop: poll, dispatch to tasks, restore, commit.

One consumer in the application's group (range assignment, so partition p of
every source topic lands on the same instance; static membership, so a
restarted instance takes its partitions back at once), one transactional
producer per instance. Each turn of the loop:

  1. consume a batch and hand each record to the task owning its partition;
  2. restore a slice of every restoring store, read a slice of the global tables;
  3. let every running task process what it holds (and retry parked records);
  4. pause partitions whose tasks push back, resume the others;
  5. commit when the interval is up, or at once when nothing more was fetched.

Rebalance callbacks only create tasks (restoring, paused) and drop them; the
loop does the rest, so membership, commits and health go on while stores restore.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from processor.runtime.checkpoint import Checkpoint, CommitStuck, TransactionFailed
from processor.runtime.clients import Clients, Consumer, KafkaClients
from processor.runtime.clock import Clock
from processor.runtime.global_table import Extract, GlobalTable, GlobalTables
from processor.runtime.handler import Handler, Router, StateSerde, TryLater
from processor.runtime.parking import Backoff
from processor.runtime.restore import Restorer
from processor.runtime.stats import COMMIT_BUCKETS, RECORD_BUCKETS, Histogram, Stats
from processor.runtime.store import (
    MiB,
    PartitionStore,
    StateMemory,
    StoreTransaction,
    direct_writes_supported,
)
from processor.runtime.task import RouteTask, StatefulTask, TaskState

log = logging.getLogger(__name__)

Task = RouteTask | StatefulTask
TP = tuple[str, int]
TRANSACTION_TIMEOUT_S = 10.0


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
    batch_size: int = 1000
    commit_timeout_s: float = 60.0  # a commit stuck longer: new producer, rewind
    route_topics: tuple[str, ...] = ()  # stateless: any partition count
    max_parked: int = 1000  # per task; past it the task's parking partitions pause
    state_memory: int = 64 * MiB  # every RocksDB store of the instance together
    static_membership: bool = True
    commit_when_idle: bool = True  # nothing more fetched: commit now, not at the interval
    # Records a task holds per partition before the partition pauses (Kafka Streams'
    # buffered.records.per.partition); the stateful tasks together hold at most about
    # `buffered_records` before routing pauses.
    buffered_per_partition: int = 2000
    buffered_records: int = 10_000
    # An empty partition known to have more holds its task this long at most; the wait
    # is for records this instance itself committed, so it ends as they are fetched.
    max_task_idle_s: float = 5.0

    @property
    def transactional_id(self) -> str:
        # Stable per instance: a restarted instance fences its predecessor at once.
        return f"{self.application_id}-{self.instance_id}"


@dataclass(frozen=True)
class TableSpec:
    """A global table the engine keeps: `name` is its store's folder."""

    topic: str
    name: str
    extract: Extract


RouterFactory = Callable[[Mapping[str, GlobalTable]], Router]


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        handler: Handler,
        serde: StateSerde,
        router: RouterFactory | None = None,
        tables: Sequence[TableSpec] = (),
        clients: Clients | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or Clock()  # parking's: wall clock waits, monotonic retries
        self.stats = Stats()
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.record_seconds = {
            "route": Histogram(RECORD_BUCKETS),
            "manage": Histogram(RECORD_BUCKETS),
        }
        self.ready = threading.Event()  # every task runs, the global tables caught up
        self.last_loop_at = time.monotonic()  # liveness: the loop is not stuck
        self._handler = handler
        self._serde = serde
        self._clients = clients or KafkaClients()
        self._stopping = threading.Event()
        self._route_topics = frozenset(config.route_topics)
        self._tasks: dict[str, Task] = {}
        self._by_tp: dict[TP, Task] = {}
        self._pending: set[int] = set()  # assigned stateful partitions without a task yet
        self._suspended: dict[int, PartitionStore] = {}  # revoked; reused if they come back
        self._paused: set[TP] = set()  # pushed back by their task
        self._assigned_once = False
        self._tables_behind = False
        self._routing_held = False
        self._held_until: float | None = None  # paused for a TryLater until then
        self._try_later_s = 0.0
        self._rebalancing = False  # inside the revocation callback
        self.memory = StateMemory(
            config.state_memory, direct_writes=direct_writes_supported(config.state_dir)
        )
        common = {"bootstrap.servers": config.bootstrap_servers, **config.client_config}
        group = {
            **common,
            "group.id": config.application_id,
            "client.id": config.transactional_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A new application id starts from the beginning, as Kafka Streams does.
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
            # A bounded prefetch, taken a little of every partition at a time: records
            # wait in the tasks' buffers, not behind another stage's in librdkafka's queue.
            "queued.max.messages.kbytes": 4096,
            # librdkafka waits this long to fetch again once its queue is full (1 s by
            # default): with a bounded queue, a stall per fill.
            "fetch.queue.backoff.ms": 10,
            "fetch.max.bytes": 4 * MiB,
            "max.partition.fetch.bytes": 256 * 1024,
            # End-of-partition events tell a task which partitions have nothing more.
            "enable.partition.eof": True,
            **config.consumer_config,
        }
        if config.static_membership:
            group["group.instance.id"] = config.transactional_id
        self._consumer = self._clients.consumer(group)
        # The stateful partitions are owned through the group but fetched by a consumer
        # of their own: one queue per stage, so repartitioned records never wait behind
        # an input backlog in a shared fetch queue (the group consumer keeps them paused).
        fetch_keys = (
            "queued.max.messages.kbytes", "fetch.max.bytes", "max.partition.fetch.bytes",
            "fetch.queue.backoff.ms",
            "enable.partition.eof", "isolation.level", "enable.auto.commit",
            "enable.auto.offset.store", "auto.offset.reset",
        )  # fmt: skip
        self._fetcher = self._clients.consumer(
            {
                **common,
                **{k: group[k] for k in fetch_keys},
                "group.id": f"{config.application_id}-fetch",  # required; never committed
                "client.id": f"{config.transactional_id}-fetch",
            }
        )
        reader = {
            **common,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",  # a stored offset below retention
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Restores and the index catch-up read fast from a bounded buffer: a fetch
            # response may otherwise be 50 MB (fetch.max.bytes), on top of the queue.
            "queued.max.messages.kbytes": 8192,
            "fetch.max.bytes": 8 * MiB,
            "fetch.queue.backoff.ms": 10,
        }
        # Admin clients only log when polled: the loop polls them now and then.
        self._admins = (self._clients.admin(common), self._clients.admin(common))
        self._admins_polled_at = 0.0
        self._lag: dict[TP, int] = {}
        self._restorer = Restorer(
            self._clients.consumer({**reader, "group.id": f"{config.application_id}-restore"}),
            self._admins[0],
            config.changelog_topic,
        )
        built = {
            spec.topic: GlobalTable(
                spec.topic,
                config.state_dir / spec.name,
                spec.extract,
                self._clients.consumer({**reader, "group.id": f"global-table-{spec.topic}"}),
                self.memory,
            )
            for spec in tables
        }
        self._tables = GlobalTables(built.values(), self._admins[1])
        self._router = router(built) if router is not None else None
        self._producer_config = {
            **common,
            "transactional.id": config.transactional_id,
            "client.id": config.transactional_id,
            "linger.ms": 5,
            # Java's default partitioner: keys land where Kafka Streams would put them.
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_S * 1000),
            # The broker's default max.message.bytes (1048588) less a batch's framing, not
            # librdkafka's 1000000: a record the broker took can be dead-lettered whole.
            # Larger ones are refused here, synchronously, not by the broker mid-transaction.
            "message.max.bytes": 1_048_000,
        }
        self._producer = self._clients.producer(self._producer_config)
        self._abandoned: list[object] = []  # stuck in a call: kept alive, never used
        self._checkpoint = self._new_checkpoint()

    # --- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Processes until `stop()`; commits or aborts the open transaction on the way out."""
        self.start()
        try:
            while not self._stopping.is_set():
                self.turn()
            self._leave()
        finally:
            self.close()

    def start(self) -> None:
        """Fences any predecessor, starts the global tables and joins the group."""
        self._producer.init_transactions(60)
        self._tables.start()
        self._consumer.subscribe(
            [*self.config.route_topics, *self.config.source_topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("instance %s joined group %s", self.config.instance_id, self.config.application_id)

    def turn(self) -> None:
        """One turn of the loop (see the module's docstring)."""
        self._turn()

    def _leave(self) -> None:
        self._commit_or_abort()
        # A static member does not leave the group when it closes, and its
        # partitions would wait out its session; leaving first hands them over now.
        # The leave is sent once the revocation was served by a poll.
        self._consumer.unsubscribe()
        deadline = time.monotonic() + 10
        while self._consumer.assignment() and time.monotonic() < deadline:
            self._consumer.consume(100, timeout=0.05)
        self._consumer.consume(1, timeout=0.05)

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        try:
            self._consumer.close()
            self._fetcher.close()
        finally:
            for task in self._tasks.values():
                task.close()
            self._tasks.clear()
            self._by_tp.clear()
            for store in self._suspended.values():
                store.close()
            self._suspended.clear()
            self._restorer.close()
            self._tables.close()
            self._producer.flush(5)
            log.info("instance %s stopped: %s", self.config.instance_id, self.stats)

    # --- what the outside may ask (from other threads too) -----------------------

    @property
    def global_tables(self) -> GlobalTables:
        return self._tables

    @property
    def assigned_partitions(self) -> set[int]:
        return {t.partition for t in list(self._tasks.values()) if isinstance(t, StatefulTask)}

    def stateful_tasks(self) -> list[StatefulTask]:
        return [t for t in list(self._tasks.values()) if isinstance(t, StatefulTask)]

    def state_labels(self) -> dict[str, int]:
        """States in this instance's stores by the serde's label."""
        total: dict[str, int] = {}
        for task in self.stateful_tasks():
            for label, count in list(task.txn.labels.items()):
                total[label] = total.get(label, 0) + count
        return total

    def lag(self) -> dict[TP, int]:
        """Records each assigned partition has beyond what this instance fetched, as
        the loop measured them last (every second). Safe from another thread: it
        touches no client. A consumer call from another thread waits for the loop's
        own calls, and the loop calls its consumers back to back: /metrics answered in
        0.2 s to over 2 s while it asked the consumers itself."""
        return dict(self._lag)

    def _measure_lag(self) -> dict[TP, int]:
        """From the consumers' cached high watermarks (no request)."""
        lags: dict[TP, int] = {}
        for consumer, tps in self._split(self._by_tp):
            for tp in consumer.position(tps):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lags[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
        return lags

    @property
    def paused_partitions(self) -> int:
        """Partitions paused because their task pushes back (parking bound, table wait)."""
        return len(self._paused)

    @property
    def parked(self) -> int:
        return sum(len(t.parking) for t in self.stateful_tasks())

    def oldest_wait_s(self) -> float:
        oldest = [since for t in self.stateful_tasks() if (since := t.parking.oldest_since_ms())]
        return (self._clock.wall_ms() - min(oldest)) / 1000 if oldest else 0.0

    def readiness(self) -> dict[str, object]:
        """What /readyz says: ready only when every task runs and the tables caught up."""
        restoring = {
            str(r.partition): {"restored": r.restored, "remaining": r.remaining}
            for r in list(self._restorer.active.values())
        }
        return {
            "ready": self.ready.is_set(),
            "partitions": sorted(self.assigned_partitions),
            "restoring": restoring,
            "initializing": sorted(self._pending),
            "global_tables": {"caught_up": self._tables.ready, "lag": self._tables.lag},
        }

    def lookup(self, key: bytes) -> bytes | None:
        """The committed state of `key`, if one of this instance's tasks holds it.
        Safe from another thread: RocksDB reads are; a store closing under a
        rebalance raises, and the caller retries."""
        for task in self.stateful_tasks():
            value = task.txn.store.get(key)
            if value is not None:
                return value
        return None

    # --- the loop ----------------------------------------------------------------

    def _turn(self) -> None:
        now = self.last_loop_at = time.monotonic()
        if self._pending:
            self._initialize_tasks()
        timeout = self._poll_timeout(now)
        messages = self._fetcher.consume(self.config.batch_size, timeout=0)
        if messages:
            timeout = 0.0
        messages += self._consumer.consume(self.config.batch_size, timeout=min(timeout, 0.005))
        by_tp = self._by_tp
        fetched = 0
        for msg in messages:
            error = msg.error()
            if error is None:
                task = by_tp.get((msg.topic(), msg.partition()))
                if task is not None:
                    task.add(msg)
                    fetched += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                task = by_tp.get((msg.topic(), msg.partition()))
                if task is not None:
                    task.at_end(msg.topic(), msg.partition(), msg.offset())
            else:
                self._consumer_error(error)
        if self._restorer.active:
            # Nothing else came in: wait a little for the changelogs instead of spinning.
            for done in self._restorer.step(timeout=0.0 if fetched else 0.01):
                elapsed = time.monotonic() - done.started_at
                log.info(
                    "task %d restored %d records in %.2fs",
                    done.partition,
                    done.restored,
                    elapsed,
                )
                self._start(self._tasks[f"task {done.partition}"])
            self.stats.restored = self._restorer.restored
        now = time.monotonic()
        parking_now = self._clock.monotonic()
        out = self._checkpoint
        if self._held_until is not None and now >= self._held_until:
            self._held_until = None
            self._resume(
                tp for t in self._running() for tp in t.partitions if tp not in self._paused
            )
        try:
            self._tables_behind = self._tables.step()
            for task in self._tasks.values():
                if task.state is TaskState.RUNNING and (
                    task.pending or self._due(task, parking_now)
                ):
                    task.process(out, parking_now)
        except TryLater as exc:
            self._try_later(exc)
            return
        self._push_back()
        if out.is_open and (
            (not fetched and self.config.commit_when_idle)
            or now - out.opened_at >= self.config.commit_interval_s
        ):
            self._commit()
        if now - self._admins_polled_at >= 1.0:
            self._admins_polled_at = now
            for admin in self._admins:
                admin.poll(0)
            self._lag = self._measure_lag()
        if not self.ready.is_set() and self._is_ready():
            self.ready.set()
            log.info("ready: %d tasks running", len(self._tasks))

    @staticmethod
    def _due(task: Task, now: float) -> bool:
        if not isinstance(task, StatefulTask):
            return False
        due = task.next_due()
        return due is not None and due <= now

    def _poll_timeout(self, now: float) -> float:
        if self._restorer.active or self._tables_behind:
            return 0.0
        timeout = 0.1
        if self._checkpoint.is_open:
            left = self.config.commit_interval_s - (now - self._checkpoint.opened_at)
            timeout = min(timeout, left)
        parking_now = self._clock.monotonic()
        for task in self.stateful_tasks():
            due = task.next_due()
            if due is not None:
                timeout = min(timeout, due - parking_now)
        return max(timeout, 0.0)

    def _consumer_error(self, error: KafkaError) -> None:
        # _FATAL: e.g. "static consumer fenced", another process took our instance id.
        if error.fatal() or error.code() == KafkaError._FATAL:
            raise KafkaException(error)
        log.warning("consumer: %s", error)

    def _is_ready(self) -> bool:
        return (
            self._assigned_once
            and not self._pending
            and not self._restorer.active
            and self._tables.ready
        )

    def _push_back(self) -> None:
        """Pauses the partitions tasks hold back; resumes the ones they let go, from
        the first record the task has not buffered."""
        blocked = {tp for task in self._tasks.values() for tp in task.blocked()}
        # Routing runs ahead of managing on a backlog: its records would crowd the
        # fetch queue while the repartitioned ones wait. Hold it while manage catches up.
        behind = sum(t.backlog for t in self._tasks.values() if isinstance(t, StatefulTask))
        if behind > self.config.buffered_records or (
            self._routing_held and behind > self.config.buffered_records // 2
        ):
            self._routing_held = True
            blocked |= {
                tp for t in self._tasks.values() if isinstance(t, RouteTask) for tp in t.partitions
            }
        else:
            self._routing_held = False
        if blocked == self._paused:
            return
        if new := blocked - self._paused:
            self._pause(new)
        if released := self._paused - blocked:
            self._resume(
                tp
                for tp in released
                if (task := self._by_tp.get(tp)) is not None and task.state is TaskState.RUNNING
            )
        self._paused = blocked

    def _split(self, tps: Iterable[TP]) -> list[tuple[Consumer, list[TopicPartition]]]:
        """Partitions by the consumer that fetches them."""
        routed, stateful = [], []
        for t, p in tps:
            (routed if t in self._route_topics else stateful).append(TopicPartition(t, p))
        return [(c, tps) for c, tps in ((self._consumer, routed), (self._fetcher, stateful)) if tps]

    def _pause(self, tps: Iterable[TP]) -> None:
        for consumer, split in self._split(tps):
            consumer.pause(split)

    def _resume(self, tps: Iterable[TP]) -> None:
        for consumer, split in self._split(tps):
            consumer.resume(split)

    # --- transactions --------------------------------------------------------------

    def _running(self) -> list[Task]:
        return [t for t in self._tasks.values() if t.state is TaskState.RUNNING]

    def _commit(self) -> None:
        started = time.perf_counter()
        tasks = self._running()
        backoff = 0.1
        while True:
            try:
                self._checkpoint.commit_within(
                    tasks, self._consumer.consumer_group_metadata(), self.config.commit_timeout_s
                )
                break
            except CommitStuck as exc:
                log.error(
                    "%s; replacing the producer (it fences that transaction), then carrying "
                    "on from what Kafka holds: it may have committed or not",
                    exc,
                )
                self._recover_unknown_outcome()
                return
            except TransactionFailed as exc:
                log.warning("transaction aborted, its work will be redone: %s", exc)
                self._abort_and_rewind()
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
                if not self._timed_out_by_the_coordinator(exc):
                    raise
                # Fenced at commit: most likely not committed, but a lost answer to a
                # commit that went through fails the same way.
                self._recover_unknown_outcome()
                return
        for task in tasks:
            task.flush(self._checkpoint.changelog_offsets)
        self.commit_seconds.observe(time.perf_counter() - started)
        self._try_later_s = 0.0
        for (topic, partition), end in self._checkpoint.produced_ends.items():
            owner = self._by_tp.get((topic, partition))
            if owner is not None:
                owner.known_end(topic, partition, end)
        self.stats.transactions += 1

    def _commit_or_abort(self) -> None:
        if self._checkpoint.is_open:
            self._commit()

    def _abort_and_rewind(self) -> None:
        try:
            self._checkpoint.abort()
        except KafkaException as exc:
            if not self._timed_out_by_the_coordinator(exc):
                raise
            self._replace_producer()  # the coordinator's abort already ended it
        self._rewind()

    def _timed_out_by_the_coordinator(self, exc: KafkaException) -> bool:
        """Whether a fatal error at commit or abort ends only our transaction, not our
        instance, as Kafka Streams' TaskMigrated does (new producer, work redone).

        A broker that does not answer for longer than the transaction timeout has the
        coordinator abort the transaction and bump the producer's epoch; librdkafka's
        commit or abort is then told "fenced" (or INVALID_TXN_STATE, when the
        coordinator's abort overtook ours), and both are fatal (found by the chaos run:
        a node SIGSTOPped for 15 s). A successor with the same instance id fences us the
        same way, but it also took our static group membership: the group consumer
        reports that as a fatal error at its next heartbeat. So: fatal, after a
        transaction open longer than the timeout, and still a member after a short poll
        (the records it fetches are dropped: the caller rewinds to the committed
        offsets) = the timeout. Raises the consumer's own fatal error if it has one."""
        error: KafkaError = exc.args[0]
        if not error.fatal() or self._rebalancing:  # no consume() inside a rebalance callback
            return False
        if time.monotonic() - self._checkpoint.opened_at < TRANSACTION_TIMEOUT_S:
            return False
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for msg in self._consumer.consume(self.config.batch_size, timeout=0.1):
                failed = msg.error()
                if failed is not None and (failed.fatal() or failed.code() == KafkaError._FATAL):
                    raise KafkaException(failed) from exc
        if not self._consumer.assignment():
            return False
        log.warning(
            "the transaction outlived the transaction timeout and the coordinator ended "
            "it (%s); this instance is still a member: new producer, work redone",
            error.str(),
        )
        return True

    def _replace_producer(self) -> None:
        """A new producer with the same transactional.id: init_transactions fences the
        stuck one and aborts its open transaction on the broker."""
        self._abandoned.append(self._producer)
        self._producer = self._clients.producer(self._producer_config)
        self._producer.init_transactions(60)
        self._checkpoint = self._new_checkpoint()

    def _try_later(self, exc: TryLater) -> None:
        """A dependency is away: drop this transaction's work, pause every partition a
        while (doubling up to 30 s), then go on from the committed offsets."""
        self._try_later_s = min(max(self._try_later_s * 2, 1.0), 30.0)
        log.warning("%s; aborting, trying again in %.0fs", exc, self._try_later_s)
        self._abort_and_rewind()
        self._pause(tp for t in self._running() for tp in t.partitions)
        self._held_until = time.monotonic() + self._try_later_s

    def _recover_unknown_outcome(self) -> None:
        """After a commit given up or fenced: a new producer, whose fencing ends the
        transaction one way or the other. Restoring every store's changelog tail and
        rewinding to the committed offsets is right either way: committed, both include
        it; aborted, neither does."""
        self._replace_producer()
        self._rewind()
        stores = {}
        for task in self.stateful_tasks():
            if task.state is TaskState.RUNNING:
                task.state = TaskState.RESTORING
                task.txn.forget()  # decoded states may be of the lost transaction
                self._pause(task.partitions)
                stores[task.partition] = task.txn.store
        for p in self._restorer.add(stores):
            self._start(self._tasks[f"task {p}"])

    def _new_checkpoint(self) -> Checkpoint:
        sources = frozenset(self.config.source_topics)
        return Checkpoint(self._producer, self.config.changelog_topic, sources)

    def _rewind(self) -> None:
        """Drops what the transaction staged and goes back to the committed offsets."""
        self.stats.aborted += 1
        running = self._running()
        for task in running:
            task.abort()
        tps = [TopicPartition(t, p) for task in running for t, p in task.partitions]
        committed = self._consumer.committed(tps, timeout=30) if tps else []
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            fetcher = self._consumer if tp.topic in self._route_topics else self._fetcher
            fetcher.seek(TopicPartition(tp.topic, tp.partition, offset))
        self._resume_tasks(committed)
        if self._paused:
            self._resume(self._paused)
            self._paused = set()

    def _resume_tasks(self, committed: list[TopicPartition]) -> None:
        by_task: dict[str, list[TopicPartition]] = {}
        for tp in committed:
            task = self._by_tp.get((tp.topic, tp.partition))
            if task is not None:
                by_task.setdefault(task.name, []).append(tp)
        for name, tps in by_task.items():
            self._tasks[name].resume_from(tps)

    # --- tasks ------------------------------------------------------------------------

    def _add_task(self, task: Task) -> None:
        self._tasks[task.name] = task
        for tp in task.partitions:
            self._by_tp[tp] = task

    def _drop_task(self, task: Task, keep_store: bool) -> None:
        self._tasks.pop(task.name, None)
        for tp in task.partitions:
            self._by_tp.pop(tp, None)
            self._paused.discard(tp)
        if isinstance(task, StatefulTask):
            self._restorer.remove([task.partition])
            self._fetcher.incremental_unassign([TopicPartition(t, p) for t, p in task.partitions])
            if keep_store:
                task.abort()
                self._suspended[task.partition] = task.txn.store
                return
        task.close()

    def _initialize_tasks(self) -> None:
        """Opens the stores of newly assigned partitions, reads what the last commit
        says waits in them, and starts restoring: nothing here reads a changelog."""
        new, self._pending = sorted(self._pending), set()
        stores = {}
        for p in new:
            store = self._suspended.pop(p, None)
            stores[p] = store or PartitionStore(
                self.config.state_dir / self.config.changelog_topic / str(p), self.memory
            )
        for store in self._suspended.values():  # not coming back: another instance owns them
            store.close()
        self._suspended.clear()
        tasks = []
        for p, store in stores.items():
            task = StatefulTask(
                p,
                self.config.source_topics,
                self._handler,
                StoreTransaction(store, self._serde),
                self.config.backoff,
                self.config.dlq_topic,
                self.stats,
                self.config.max_parked,
                self._clock,
                buffer_limit=self.config.buffered_per_partition,
                max_idle_s=self.config.max_task_idle_s,
                timing=self.record_seconds["manage"],
            )
            self._add_task(task)
            tasks.append(task)
        tps = [TopicPartition(t, p) for task in tasks for t, p in task.partitions]
        committed = self._consumer.committed(tps, timeout=30) if tps else []
        self._resume_tasks(committed)
        if committed:
            starts = [
                TopicPartition(
                    tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                )
                for tp in committed
            ]
            self._fetcher.incremental_assign(starts)
            self._fetcher.pause(starts)  # until restored
        started = time.monotonic()
        for p in self._restorer.add(stores):
            self._start(self._tasks[f"task {p}"])
        if self._restorer.active:
            log.info(
                "restoring %d of %d new tasks (%d records) while the loop goes on",
                len(self._restorer.active),
                len(tasks),
                sum(r.remaining for r in self._restorer.active.values()),
            )
        log.debug("tasks %s initialized in %.3fs", new, time.monotonic() - started)

    def _start(self, task: Task) -> None:
        """Restored: the task runs and its partitions are fetched."""
        task.state = TaskState.RUNNING
        if isinstance(task, StatefulTask) and hasattr(self._serde, "label"):
            task.txn.labels = task.txn.store.count(self._serde.label)
        self._resume(task.partitions)

    # --- rebalance ------------------------------------------------------------------

    def _on_assign(self, consumer: object, partitions: list[TopicPartition]) -> None:
        self.ready.clear()
        self._assigned_once = True
        self._consumer.assign(partitions)
        stateful = [tp for tp in partitions if tp.topic not in self._route_topics]
        if stateful:
            self._consumer.pause(stateful)  # for good: the fetcher reads them
        routed = [(tp.topic, tp.partition) for tp in partitions if tp.topic in self._route_topics]
        if routed:
            assert self._router is not None, "route topics without a router"
            self._add_task(
                RouteTask(
                    routed,
                    self._router,
                    self._tables,
                    self.config.dlq_topic,
                    self.stats,
                    self.config.buffered_per_partition,
                    self.config.max_task_idle_s,
                    self.record_seconds["route"],
                )
            )
        self._pending |= {tp.partition for tp in stateful}
        log.info(
            "assigned %d input and %d stateful partitions",
            len(partitions) - len(stateful),
            len(self._pending),
        )

    def _on_revoke(self, consumer: object, partitions: list[TopicPartition]) -> None:
        self.ready.clear()
        self._rebalancing = True
        try:
            self._commit_or_abort()
        except KafkaException as exc:
            log.warning("commit on revocation failed: %s", exc)
            self._abort_quietly()
        finally:
            self._rebalancing = False
        self._drop(partitions, keep_stores=True)

    def _on_lost(self, consumer: object, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: nothing of ours may commit.
        self.ready.clear()
        self._abort_quietly()
        self._drop(partitions, keep_stores=False)

    def _drop(self, partitions: list[TopicPartition], keep_stores: bool) -> None:
        for tp in partitions:
            if tp.topic not in self._route_topics:
                self._pending.discard(tp.partition)
            task = self._by_tp.get((tp.topic, tp.partition))
            if task is not None:
                self._drop_task(task, keep_store=keep_stores)

    def _abort_quietly(self) -> None:
        """Abort, where a fenced (fatal) producer cannot: its transaction dies anyway."""
        try:
            self._checkpoint.abort()
        except KafkaException as exc:
            log.warning("abort failed: %s", exc)
            self._checkpoint.is_open = False
        for task in self._running():
            task.abort()
