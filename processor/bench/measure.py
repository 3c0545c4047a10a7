"""The bench's measurements, each on its own private topics of one broker.

Clients use the engine's settings (read_committed, linger.ms=5, 100 ms commits),
so the pass-through ceiling differs from the processor only by what the
processor does, not by how it talks to Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from rich.progress import Progress

from processor.admin import TopicSpec, create_topics, ensure_internal_topics
from processor.app import build_engine
from processor.bench.workload import Bundle, Stories, key_of, produce, produce_histories
from processor.codec import Codec
from processor.runtime.engine import Engine
from processor.runtime.offsets import end_offsets, start_offsets
from processor.runtime.restore import Restorer
from processor.runtime.store import PartitionStore, StateMemory
from processor.topology import BUNDLE_HEADER, Topics

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 0.5
COMMIT_INTERVAL_S = 0.1  # the engine's default
BATCH_SIZE = 500  # the engine's default


class BenchError(RuntimeError):
    """A measurement could not complete; the message says where it stopped."""


@dataclass(frozen=True)
class BenchConfig:
    bootstrap_servers: str
    state_dir: Path
    bundles: int = 10_000
    partitions: int = 6
    input_partitions: int = 3
    latency_samples: int = 300
    latency_rate: float = 25.0
    rss_bundles: tuple[int, ...] = (10_000, 100_000)
    timeout_s: float = 300.0
    seed: int = 1
    log_dir: Path = Path(".local/bench")  # the RSS runs' processor logs


# --- results (plain values: they go to JSON as they are) -----------------------


@dataclass
class Throughput:
    events: int
    bundles: int
    elapsed_s: float  # from the first assignment to the last output visible
    startup_s: float  # from start to the first assignment (restore, index catch-up)
    events_per_s: float
    bundles_per_s: float
    transactions: int = 0
    output_records: int = 0
    retried: int = 0  # not-ready attempts: the backlog is read in no causal order
    skipped: int = 0  # events ignored by the saga (e.g. a confirmation after the flight)
    # (s since assignment, input events done[, input events routed]) every SAMPLE_EVERY_S
    samples: list[tuple[float, ...]] = field(default_factory=list)

    @classmethod
    def of(
        cls, events: int, bundles: int, elapsed: float, startup: float, **counts: Any
    ) -> Throughput:
        """The rates derived from the counts, rounded for the report."""
        return cls(
            events=events,
            bundles=bundles,
            elapsed_s=round(elapsed, 3),
            startup_s=round(startup, 3),
            events_per_s=round(events / elapsed, 1),
            bundles_per_s=round(bundles / elapsed, 1),
            **counts,
        )


@dataclass
class Latency:
    samples: int
    rate_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    refunds: int
    values_ms: list[float]


@dataclass
class Restore:
    partitions: int
    records: int
    restore_s: float
    restore_records_per_s: float
    raw_records: int
    raw_read_s: float
    raw_records_per_s: float
    ratio: float  # restore rate / raw read rate


@dataclass
class Rss:
    bundles: int
    peak_rss_mib: float  # VmHWM of the processor process
    rss_mib: float  # VmRSS once restored
    restored: int
    ready_s: float  # from spawn until it logged its assignment
    restore_s: float  # sum of the tasks' restore times, as the processor logs them
    restore_records_per_s: float | None


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- helpers ------------------------------------------------------------------------


def private_topics(app: str) -> Topics:
    """Inputs and outputs named after the application id: nobody else's records."""
    defaults = Topics()
    return Topics(app, {t: f"{t}.{app}" for t in (*defaults.inputs, *defaults.outputs)})


class Tail:
    """A read_committed consumer on every partition of `topics` from the beginning, in
    a thread: `on_record(msg, now)` sees each record as soon as it is visible."""

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        on_record: Callable[[Message, float], None],
    ) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-tail-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                # The observer must not add the broker's default 500 ms fetch wait.
                "fetch.wait.max.ms": 10,
            }
        )
        metadata = self._consumer.list_topics(timeout=30).topics
        self._consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
        )
        self._on_record = on_record
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                messages = self._consumer.consume(BATCH_SIZE, timeout=0.05)
                now = time.monotonic()
                for msg in messages:
                    if msg.error() is None:
                        self._on_record(msg, now)
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)


class Counter:
    """Counts records; notes when the count reached `target`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.reached_at: float | None = None

    def __call__(self, msg: Message, now: float) -> None:
        self.count += 1
        if self.count >= self.target and self.reached_at is None:
            self.reached_at = now


class EngineThread:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.errors: list[BaseException] = []
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:
            self.errors.append(exc)

    def check(self) -> None:
        if self.errors:
            raise BenchError(f"the engine failed: {self.errors[0]!r}") from self.errors[0]
        if not self._thread.is_alive():
            raise BenchError("the engine stopped by itself")

    def stop(self) -> None:
        self.engine.stop()
        self._thread.join(60)
        if self.errors:
            raise BenchError(f"the engine failed: {self.errors[0]!r}") from self.errors[0]


class PassThrough:
    """The ceiling: consume -> produce -> send_offsets_to_transaction -> commit, with
    the engine's client settings and commit interval, and nothing else."""

    def __init__(self, bootstrap: str, sources: Iterable[str], sink: str, name: str) -> None:
        common = {"bootstrap.servers": bootstrap}
        self._consumer = Consumer(
            {
                **common,
                "group.id": name,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",
            }
        )
        self._producer = Producer(
            {
                **common,
                "transactional.id": name,
                "linger.ms": 5,
                "partitioner": "murmur2_random",
                "transaction.timeout.ms": 10_000,
            }
        )
        self._sources = list(sources)
        self._sink = sink
        self.assigned = threading.Event()
        self.copied = 0
        self.transactions = 0
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-ceiling", daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self._consumer.close()
            self._producer.close()

    def _loop(self) -> None:
        producer, consumer = self._producer, self._consumer
        producer.init_transactions(60)
        consumer.subscribe(self._sources, on_assign=lambda *_: self.assigned.set())
        positions: dict[tuple[str, int], int] = {}
        opened_at: float | None = None
        while not self._stopping.is_set():
            timeout = 0.1
            if opened_at is not None:
                timeout = max(0.0, min(timeout, COMMIT_INTERVAL_S - (time.monotonic() - opened_at)))
            for msg in consumer.consume(BATCH_SIZE, timeout=timeout):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                if opened_at is None:
                    producer.begin_transaction()
                    opened_at = time.monotonic()
                produce(
                    producer, self._sink, msg.value(), msg.key(), msg.timestamp()[1], msg.headers()
                )
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert topic is not None and partition is not None and offset is not None
                positions[(topic, partition)] = offset + 1
                self.copied += 1
            if opened_at is not None and time.monotonic() - opened_at >= COMMIT_INTERVAL_S:
                producer.flush()
                offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
                producer.commit_transaction()
                self.transactions += 1
                opened_at = None

    def check(self) -> None:
        if self.errors:
            raise BenchError(f"the pass-through failed: {self.errors[0]!r}") from self.errors[0]

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(60)
        self.check()


def _proc_status(pid: int) -> dict[str, int]:
    """Memory lines of /proc/<pid>/status, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[name] = int(rest.split()[0])
    return values


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_RESTORED = re.compile(r"task \d+ restored (\d+) records in ([\d.]+)s")


# --- the bench ----------------------------------------------------------------------------


class Bench:
    """One run: every phase on private topics, deleted by `cleanup()`."""

    def __init__(self, config: BenchConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.codec = Codec()
        self.admin = AdminClient({"bootstrap.servers": config.bootstrap_servers})
        self.app = f"bench-{uuid.uuid4().hex[:8]}"
        self.topics = private_topics(self.app)
        self.stories = Stories(config.seed)
        self.created: list[str] = []
        self.groups: list[str] = []  # consumer groups that committed offsets
        self.bundles: list[Bundle] = []
        self.inputs = 0
        self.state_dir = config.state_dir / self.app
        self._engine: EngineThread | None = None

    # --- set-up ----------------------------------------------------------------------------

    def _deploy(self, topics: Topics) -> None:
        """Every topic of a deployment; all named after this run, so cleanup() deletes
        nobody else's."""
        cfg = self.config
        ensure_internal_topics(self.admin, topics, cfg.partitions)
        create_topics(
            self.admin,
            [TopicSpec(t, cfg.input_partitions) for t in topics.inputs]
            + [TopicSpec(t, cfg.partitions) for t in topics.outputs],
        )
        self.created += [*topics.inputs, *topics.outputs, *topics.repartitions]
        self.created += [topics.changelog, topics.dlq]
        self.groups.append(topics.application_id)

    def prepare(self) -> None:
        """Private topics, and the complete histories of every bundle in the inputs."""
        cfg = self.config
        self._deploy(self.topics)
        sink = f"{self.app}-ceiling-sink"
        create_topics(self.admin, [TopicSpec(sink, cfg.partitions)])
        self.created.append(sink)
        self.bundles = [self.stories.bundle() for _ in range(cfg.bundles)]
        total = sum(len(b.events) for b in self.bundles)
        task = self.progress.add_task("pre-producing input events", total=total)
        producer = Producer(
            {
                "bootstrap.servers": cfg.bootstrap_servers,
                "enable.idempotence": True,
                "linger.ms": 20,
                "partitioner": "murmur2_random",
            }
        )
        self.inputs = produce_histories(
            producer,
            self.codec,
            self.topics,
            self.bundles,
            base_ms=int(time.time() * 1000) - 10 * len(self.bundles) - 1000,
            progress=lambda n: self.progress.update(task, completed=n),
        )
        producer.close()

    def _follow(
        self,
        what: str,
        total: int,
        count: Callable[[], int],
        finished: Callable[[], float | None],
        check: Callable[[], None],
        t0: float,
        also: Callable[[], int] | None = None,
    ) -> tuple[float, list[tuple[float, ...]]]:
        """Samples (s since t0, `count`[, `also`]) every SAMPLE_EVERY_S until `finished`
        gives the end time; the last sample is taken at that end."""
        task = self.progress.add_task(what, total=total)

        def sample(at: float) -> tuple[float, ...]:
            return (round(at - t0, 3), count(), *((also(),) if also else ()))

        samples = [sample(t0)]
        next_at = t0 + SAMPLE_EVERY_S
        while (end := finished()) is None:
            check()
            now = time.monotonic()
            if now - t0 > self.config.timeout_s:
                raise BenchError(f"{what}: {count()} of {total} after {self.config.timeout_s:.0f}s")
            if now >= next_at:
                samples.append(sample(now))
                next_at += SAMPLE_EVERY_S
            self.progress.update(task, completed=count())
            time.sleep(0.01)
        samples.append(sample(end))
        self.progress.update(task, completed=total)
        return end - t0, samples

    def _wait(self, what: str, event: threading.Event, check: Callable[[], None]) -> float:
        task = self.progress.add_task(what, total=None)
        started = time.monotonic()
        while not event.wait(0.05):
            check()
            if time.monotonic() - started > self.config.timeout_s:
                raise BenchError(f"{what}: timed out")
        self.progress.update(task, total=1, completed=1)
        return time.monotonic()

    # --- 2. the ceiling --------------------------------------------------------------------

    def ceiling(self) -> Throughput:
        sink = f"{self.app}-ceiling-sink"
        counter = Counter(self.inputs)
        tail = Tail(self.config.bootstrap_servers, [sink], counter)
        self.groups.append(f"{self.app}-ceiling")
        passthrough = PassThrough(
            self.config.bootstrap_servers, self.topics.inputs, sink, f"{self.app}-ceiling"
        )
        try:
            t0 = self._wait("ceiling: joining", passthrough.assigned, passthrough.check)
            elapsed, samples = self._follow(
                "ceiling: pass-through",
                self.inputs,
                lambda: passthrough.copied,
                lambda: counter.reached_at,
                passthrough.check,
                t0,
            )
        finally:
            passthrough.stop()
            tail.stop()
        return Throughput.of(
            self.inputs,
            len(self.bundles),
            elapsed,
            t0 - passthrough.started,
            transactions=passthrough.transactions,
            output_records=counter.count,
            samples=samples,
        )

    # --- 1. the full topology --------------------------------------------------------------

    def ours(self) -> Throughput:
        """Starts the engine (left running for the latency phase) and times the backlog."""
        expected = sum(b.outputs for b in self.bundles)
        counter = Counter(expected)
        tail = Tail(self.config.bootstrap_servers, self.topics.outputs, counter)
        engine = build_engine(
            bootstrap_servers=self.config.bootstrap_servers,
            topics=self.topics,
            instance_id="bench",
            state_dir=self.state_dir / "ours",
            codec=self.codec,
        )
        self._engine = running = EngineThread(engine)
        stats = engine.stats

        def handled() -> int:
            # A confirmation read after its bundle's FlightBooked_v1 is ignored (skipped):
            # the six topics are read in no causal order.
            return stats.processed + stats.skipped

        def finished() -> float | None:
            done = stats.forwarded >= self.inputs and handled() >= self.inputs
            return counter.reached_at if done else None

        try:
            t0 = self._wait("processor: joining and restoring", engine.ready, running.check)
            elapsed, samples = self._follow(
                "processor: full topology",
                self.inputs,
                handled,
                finished,
                running.check,
                t0,
                also=lambda: stats.forwarded,
            )
        finally:
            tail.stop()
        if stats.dead_lettered or stats.not_routed:
            raise BenchError(f"unexpected outcomes: {stats}")
        return Throughput.of(
            self.inputs,
            len(self.bundles),
            elapsed,
            t0 - running.started,
            transactions=stats.transactions,
            output_records=counter.count,
            retried=stats.retried,
            skipped=stats.skipped,
            samples=samples,
        )

    # --- 3. end-to-end latency -------------------------------------------------------------

    def latency(self) -> Latency:
        """FlightBookingFailed_v1 committed -> its bundle's last RefundTicket visible,
        with the engine live and idle otherwise."""
        running = self._engine
        assert running is not None, "latency() runs on the engine ours() started"
        cfg = self.config
        stats = running.engine.stats
        bundles = [self.stories.bundle("flight-failed") for _ in range(cfg.latency_samples)]
        # Everything but the failure first, so that each failure is actionable at once.
        before = [e for b in bundles for e in b.events[:-1]]
        feeder = Producer({"bootstrap.servers": cfg.bootstrap_servers, "linger.ms": 5})
        base = stats.processed + stats.skipped
        for event in before:
            produce(feeder, self.topics.input(event.schema_name), self.codec.encode(event),
                    key_of(event).encode())  # fmt: skip
        feeder.flush(60)
        feeder.close()
        t0 = time.monotonic()
        self._follow(
            "latency: bundles awaiting their flight",
            len(before),
            lambda: stats.processed + stats.skipped - base,
            lambda: (
                time.monotonic() if stats.processed + stats.skipped - base >= len(before) else None
            ),
            running.check,
            t0,
        )
        time.sleep(3 * COMMIT_INTERVAL_S)  # their transaction commits: the engine is idle

        tickets = {b.vip_bundle_id: b.tickets for b in bundles}
        seen: dict[str, int] = {}
        refunded: dict[str, float] = {}

        def on_refund(msg: Message, now: float) -> None:
            raw = dict(msg.headers() or []).get(BUNDLE_HEADER)
            bundle = raw.decode() if isinstance(raw, bytes) else raw
            if bundle in tickets:
                seen[bundle] = seen.get(bundle, 0) + 1
                if seen[bundle] == tickets[bundle]:
                    refunded[bundle] = now

        tail = Tail(
            cfg.bootstrap_servers, [self.topics.output_named("command", "RefundTicket")], on_refund
        )
        producer = Producer(
            {
                "bootstrap.servers": cfg.bootstrap_servers,
                "transactional.id": f"{self.app}-latency",
                "linger.ms": 0,
            }
        )
        producer.init_transactions(60)
        committed: dict[str, float] = {}
        task = self.progress.add_task("latency: failures -> refunds", total=len(bundles))
        try:
            next_at = time.monotonic()
            for bundle in bundles:
                running.check()
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += 1 / cfg.latency_rate
                failure = bundle.events[-1]
                producer.begin_transaction()
                producer.produce(
                    self.topics.input(failure.schema_name),
                    self.codec.encode(failure),
                    key_of(failure).encode(),
                )
                producer.commit_transaction(30)
                committed[bundle.vip_bundle_id] = time.monotonic()
                self.progress.update(task, completed=len(refunded))
            deadline = time.monotonic() + cfg.timeout_s
            while len(refunded) < len(bundles):
                running.check()
                if time.monotonic() > deadline:
                    raise BenchError(f"latency: {len(refunded)} of {len(bundles)} refunded")
                self.progress.update(task, completed=len(refunded))
                time.sleep(0.02)
            self.progress.update(task, completed=len(refunded))
        finally:
            tail.stop()
            producer.close()
        values = sorted(max(0.0, (refunded[b] - committed[b]) * 1000) for b in committed)  # ms
        return Latency(
            samples=len(values),
            rate_per_s=cfg.latency_rate,
            p50_ms=round(percentile(values, 0.50), 1),
            p90_ms=round(percentile(values, 0.90), 1),
            p99_ms=round(percentile(values, 0.99), 1),
            max_ms=round(values[-1], 1),
            mean_ms=round(sum(values) / len(values), 1),
            refunds=sum(seen.values()),
            values_ms=[round(v, 2) for v in values],
        )

    def stop_engine(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.stop()

    # --- 4. changelog restore --------------------------------------------------------------

    def restore(self) -> Restore:
        """Restores the changelog the engine wrote into fresh stores, against a plain
        read of the same changelog (read_committed, no store)."""
        self.stop_engine()  # its last transaction is in: the changelog is complete
        changelog = self.topics.changelog
        metadata = self.admin.list_topics(changelog, timeout=30).topics[changelog]
        partitions = [(changelog, p) for p in sorted(metadata.partitions)]
        lows = start_offsets(self.admin, partitions)
        ends = end_offsets(self.admin, partitions)
        task = self.progress.add_task("changelog: raw read and restore", total=2)

        reader = Consumer(
            {
                "bootstrap.servers": self.config.bootstrap_servers,
                "group.id": f"{self.app}-raw-read",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        started = time.monotonic()
        reader.assign([TopicPartition(t, p, lows[(t, p)]) for t, p in partitions])
        raw = 0
        left = {tp for tp in partitions if lows[tp] < ends[tp]}
        while left:
            if time.monotonic() - started > self.config.timeout_s:
                raise BenchError(f"raw read of {changelog} stalled")
            # A short timeout: consume() waits it out unless 1000 records are there.
            for msg in reader.consume(1000, timeout=0.05):
                if msg.error() is None:
                    raw += 1
            # Transaction markers leave offset gaps: the position tells the end.
            for tp in reader.position([TopicPartition(t, p) for t, p in left]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    left.discard((tp.topic, tp.partition))
        raw_s = time.monotonic() - started
        reader.close()
        self.progress.update(task, completed=1)

        # The engine's restorer: every partition together into fresh stores, a slice
        # per step, as the engine's loop drives it.
        restorer = Restorer(
            Consumer(
                {
                    "bootstrap.servers": self.config.bootstrap_servers,
                    "group.id": f"{self.app}-restore",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "queued.max.messages.kbytes": 16384,
                }
            ),
            self.admin,
            changelog,
        )
        root = self.state_dir / "restored"
        memory = StateMemory()
        stores = {p: PartitionStore(root / str(p), memory) for _, p in partitions}
        started = time.monotonic()
        restorer.add(stores)
        while restorer.active:
            if time.monotonic() - started > self.config.timeout_s:
                raise BenchError(f"restore of {changelog} stalled")
            restorer.step(timeout=0.01)
        restored = restorer.restored
        for store in stores.values():
            store.close()
        restore_s = time.monotonic() - started
        restorer.close()
        self.progress.update(task, completed=2)
        if restored != raw:
            raise BenchError(f"restored {restored} records but the changelog holds {raw}")
        return Restore(
            partitions=len(partitions),
            records=restored,
            restore_s=round(restore_s, 3),
            restore_records_per_s=round(restored / restore_s, 1),
            raw_records=raw,
            raw_read_s=round(raw_s, 3),
            raw_records_per_s=round(raw / raw_s, 1),
            ratio=round((restored / restore_s) / (raw / raw_s), 3),
        )

    # --- 5. memory with N bundles in state -------------------------------------------------

    def rss(self, bundles: int) -> Rss:
        """Peak RSS of `processor run` (its own process) once it restored `bundles`
        states and indexed as many initializations."""
        cfg = self.config
        topics = private_topics(f"{self.app}-rss{bundles}")
        self._deploy(topics)
        if bundles:
            self._write_state(topics, bundles)
        state_dir = self.state_dir / f"rss{bundles}"
        log_path = cfg.log_dir / f"processor-rss{bundles}.log"
        args = [
            sys.executable, "-m", "processor", "run",
            "--bootstrap-servers", cfg.bootstrap_servers,
            "--application-id", topics.application_id,
            "--state-dir", str(state_dir),
            "--instance-id", "rss",
            "--partitions", str(cfg.partitions),
            # Served as in production, on a free port: runs may overlap on this machine.
            "--http", f"127.0.0.1:{_free_port()}",
            "--log-level", "INFO",
        ]  # fmt: skip
        for default, name in topics.overrides.items():
            args += ["--topic", f"{default}={name}"]
        task = self.progress.add_task(f"RSS: processor restoring {bundles} bundles", total=bundles)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log_file:
            process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        spawned = time.monotonic()
        try:
            while True:
                if process.poll() is not None:
                    raise BenchError(
                        f"processor exited with {process.returncode}:\n{log_path.read_text()}"
                    )
                text = log_path.read_text()
                done = [(int(n), float(s)) for n, s in _RESTORED.findall(text)]
                restored = sum(n for n, _ in done)
                self.progress.update(task, completed=restored)
                if "ready: " in text and restored >= bundles:
                    break
                if time.monotonic() - spawned > cfg.timeout_s:
                    raise BenchError(f"processor restored {restored} of {bundles}; see {log_path}")
                time.sleep(0.1)
            ready_s = time.monotonic() - spawned
            time.sleep(1.0)  # what it allocates right after the assignment counts too
            memory = _proc_status(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        restore_s = sum(s for _, s in done)
        return Rss(
            bundles=bundles,
            peak_rss_mib=round(memory["VmHWM"] / 1024, 1),
            rss_mib=round(memory["VmRSS"] / 1024, 1),
            restored=restored,
            ready_s=round(ready_s, 3),
            restore_s=round(restore_s, 3),
            restore_records_per_s=round(restored / restore_s, 1) if restore_s > 0 else None,
        )

    def _write_state(self, topics: Topics, bundles: int) -> None:
        """What the engine would have written for `bundles` bundles: their states in the
        changelog, their initializations in the index's input topic, and the group's
        input offsets at the end (all routed already)."""
        producer = Producer(
            {
                "bootstrap.servers": self.config.bootstrap_servers,
                "transactional.id": f"{topics.application_id}-writer",
                "linger.ms": 20,
                # Keys land on the changelog partition of their task, as the engine's would.
                "partitioner": "murmur2_random",
            }
        )
        producer.init_transactions(60)
        task = self.progress.add_task(f"RSS: writing {bundles} bundle states", total=bundles)
        init_topic = topics.input("VipBundleInitialized_v1")
        producer.begin_transaction()
        for i in range(bundles):
            init, state = self.stories.state()
            key = init.vip_bundle_id.encode()
            produce(producer, init_topic, self.codec.encode(init), key)
            produce(producer, topics.changelog, self.codec.encode(state), key)
            if (i + 1) % 5000 == 0 or i + 1 == bundles:
                producer.commit_transaction(60)
                self.progress.update(task, completed=i + 1)
                if i + 1 < bundles:
                    producer.begin_transaction()
        producer.close()
        inputs = [(t, p) for t in topics.inputs for p in range(self.config.input_partitions)]
        group = Consumer(
            {"bootstrap.servers": self.config.bootstrap_servers, "group.id": topics.application_id}
        )
        try:
            ends = end_offsets(self.admin, inputs)
            group.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False
            )
        finally:
            group.close()

    # --- clean-up --------------------------------------------------------------------------

    def cleanup(self, keep_topics: bool = False) -> None:
        try:
            self.stop_engine()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # only if no other run uses it
                self.config.state_dir.rmdir()
            if self.created and not keep_topics:
                self._delete(self.admin.delete_topics(self.created, operation_timeout=30))
            if self.groups and not keep_topics:
                self._delete(self.admin.delete_consumer_groups(self.groups, request_timeout=30))

    @staticmethod
    def _delete(futures: dict[str, Any]) -> None:
        # Best effort: a phase that failed early never created some of them.
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                log.info("could not delete %s: %s", name, exc)
