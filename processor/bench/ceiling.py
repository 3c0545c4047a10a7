"""The ceilings: what Kafka and the client allow with no processing at all.

A transactional pass-through of the input records, with the engine's client
settings and commit interval, one consumer and one producer, exactly-once
(consume -> produce -> send_offsets_to_transaction -> commit every 100 ms):

- one hop: inputs -> sink;
- two hops, the topology's shape: inputs -> an intermediate topic per input
  (as the repartition topics) -> sink, both hops in the same loop and
  transactions, the second reading (read_committed) what the first committed.

The backlog alone would pass in about a second, too short to mean much, so the
pass-throughs read copies of it: the same records, written again as often as
`ceiling_records` needs, into source topics of their own. (Seeking back to the
start instead leaves the consumer waiting out fetch.wait.max.ms at each end.)
A pass-through stops reading its sources after `ceiling_s`, lets what it read
through, and is measured up to there: slow settings do not make the run long.

The engine's consumer settings, which include a bounded fetch queue
(queued.max.messages.kbytes) and a short fetch.queue.backoff.ms: librdkafka
postpones the fetches of a full queue by that backoff, 1 s by default, and a
bare loop fills its queue at once. (Without the bounds, the sources flood a 64 MB
queue and the second hop starves.) The settings used go in the result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from processor.bench.config import BenchError
from processor.bench.kafka import BATCH, Counter, Tail, bulk_producer, produce
from processor.bench.sampling import Sample, follow, wait_for
from processor.bench.session import Session
from processor.runtime.offsets import end_offsets, start_offsets
from processor.topology import Topics

COMMIT_INTERVAL_S = 0.1  # the engine's default


@dataclass
class Ceiling:
    hops: int
    events: int  # input records that reached the sink
    copies: int  # of the backlog, read back to back
    cut_short: bool  # stopped reading after ceiling_s, before the end of the copies
    elapsed_s: float  # from the assignment to the last sink record visible
    events_per_s: float
    transactions: int
    output_records: int  # sink records seen by a read_committed consumer
    consumer: dict[str, object] = field(default_factory=dict)  # its settings
    producer: dict[str, object] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)  # (s, records into the sink)


def client_settings(session: Session) -> tuple[dict[str, object], dict[str, object]]:
    """(consumer, producer) settings of the pass-throughs: the engine's."""
    consumer = dict(session.settings["group"])
    return consumer, dict(session.settings["producer"])


def read_backlog(session: Session, topics: Topics) -> list[Message]:
    """Every record in the inputs of `topics` now: the backlog the ceilings copy, read
    before later phases add records of their own."""
    cfg = session.config
    metadata = session.admin.list_topics(timeout=30).topics
    partitions = [(t, p) for t in topics.inputs for p in metadata[t].partitions]
    lows, ends = start_offsets(session.admin, partitions), end_offsets(session.admin, partitions)
    backlog = sum(ends[tp] - lows[tp] for tp in partitions)
    group = f"{session.app}-ceiling-copy"  # never committed
    reader = Consumer({**session.settings["reader"], "group.id": group})
    reader.assign([TopicPartition(t, p, lows[(t, p)]) for t, p in partitions])
    records: list[Message] = []
    deadline = time.monotonic() + cfg.timeout_s
    try:
        while len(records) < backlog:
            if time.monotonic() > deadline:
                raise BenchError(f"ceilings: read {len(records)} of {backlog} input records")
            for msg in reader.consume(BATCH, timeout=1):
                if msg.error() is None:
                    records.append(msg)
    finally:
        reader.close()
    return records


def copy_backlog(session: Session, topics: Topics, records: list[Message]) -> tuple[list[str], int]:
    """Source topics for the ceilings, one per input topic, holding `records` (same
    partitions, keys, values, headers, timestamps) as many times as `ceiling_records`
    needs; (topics, copies)."""
    cfg = session.config
    copies = max(1, -(-cfg.ceiling_records // max(len(records), 1)))
    task = session.progress.add_task(f"ceilings: {copies} copies of the backlog", total=copies)
    sources = {t: session.topic(f"ceiling-in-{i}", cfg.input_partitions)
               for i, t in enumerate(topics.inputs)}  # fmt: skip
    producer = bulk_producer(cfg.bootstrap_servers)
    for copy in range(copies):
        for msg in records:
            while True:
                try:
                    producer.produce(sources[msg.topic()], msg.value(), msg.key(),
                                     partition=msg.partition(), timestamp=msg.timestamp()[1],
                                     headers=msg.headers())  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        session.progress.update(task, completed=copy + 1)
    if producer.flush(120):
        raise BenchError("ceilings: the copies were not delivered within 120 s")
    return list(sources.values()), copies


class PassThrough:
    """The pass-through loop, in a thread of its own, until every source partition
    was read to its end and all of it is committed to the sink."""

    def __init__(
        self,
        consumer: Mapping[str, object],
        producer: Mapping[str, object],
        sources: Sequence[str],
        intermediates: Mapping[str, str],  # source -> intermediate; empty: one hop
        sink: str,
        name: str,
        partitions: int,
        max_s: float,
    ) -> None:
        self._consumer = Consumer({**consumer, "group.id": name})
        self._producer = Producer({**producer, "transactional.id": name})
        self._sources = list(sources)
        self._next = dict(intermediates)  # where a record of each topic goes
        self._sink = sink
        self._left = {(t, p) for t in sources for p in range(partitions)}
        self._max_s = max_s
        self.cut_short = False
        self.assigned = threading.Event()
        self.first_hop = 0  # records read from the sources
        self.delivered = 0  # records produced to the sink
        self.transactions = 0
        self.finished = False
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-ceiling", daemon=True)
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
        consumer.subscribe(
            [*self._sources, *self._next.values()], on_assign=lambda *_: self.assigned.set()
        )
        sources, sink, hops = set(self._sources), self._sink, self._next
        started: float | None = None
        positions: dict[tuple[str, int], int] = {}
        opened_at: float | None = None
        while not self._stopping.is_set():
            if started is None and self.assigned.is_set():
                started = time.monotonic()
            if started is not None and self._left and time.monotonic() - started >= self._max_s:
                # Enough: read no more, let through what was read.
                consumer.pause([TopicPartition(t, p) for t, p in self._left])
                self._left.clear()
                self.cut_short = True
            timeout = 0.1
            if opened_at is not None:
                timeout = max(0.0, min(timeout, COMMIT_INTERVAL_S - (time.monotonic() - opened_at)))
            for msg in consumer.consume(BATCH, timeout=timeout):
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert topic is not None and partition is not None and offset is not None
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if topic in sources:  # all written before: its end is the end
                            self._left.discard((topic, partition))
                    elif error.fatal():
                        raise KafkaException(error)
                    continue
                if self.cut_short and topic in sources:
                    continue  # fetched before the pause: never read, so never committed
                if opened_at is None:
                    producer.begin_transaction()
                    opened_at = time.monotonic()
                destination = hops.get(topic, sink)
                produce(producer, destination, msg.value(), msg.key(), msg.timestamp()[1],
                        msg.headers())  # fmt: skip
                if topic in sources:
                    self.first_hop += 1
                if destination == sink:
                    self.delivered += 1
                positions[(topic, partition)] = offset + 1
            if opened_at is not None and time.monotonic() - opened_at >= COMMIT_INTERVAL_S:
                producer.flush()
                offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
                producer.commit_transaction()
                self.transactions += 1
                opened_at = None
            if opened_at is None and not self._left and self.delivered == self.first_hop:
                self.finished = True  # every source read, and all of it committed to the sink
                return

    def check(self) -> None:
        if self.errors:
            raise BenchError(f"the pass-through failed: {self.errors[0]!r}") from self.errors[0]

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(60)
        self.check()


def ceiling(session: Session, sources: list[str], copies: int, hops: int) -> Ceiling:
    """Passes the records of `sources` through `hops` transactional hops."""
    cfg = session.config
    name = f"ceiling{hops}"
    sink = session.topic(f"{name}-sink", cfg.partitions)
    intermediates = {
        t: session.topic(f"{name}-hop-{i}", cfg.partitions)
        for i, t in enumerate(sources)
        if hops == 2
    }
    session.warm([sink, *intermediates.values()])  # written in transactions, like the engine's
    counter = Counter()
    tail = Tail(cfg.bootstrap_servers, [sink], counter)
    consumer, producer = client_settings(session)
    passthrough = PassThrough(consumer, producer, sources, intermediates, sink,
                              session.group(name), cfg.input_partitions, cfg.ceiling_s)  # fmt: skip

    def finished() -> float | None:
        done = passthrough.finished and counter.count >= passthrough.delivered
        return counter.last_at if done else None

    what = "one hop" if hops == 1 else "two hops"
    try:
        t0 = wait_for(session.progress, f"ceiling, {what}: joining", passthrough.assigned,
                      passthrough.check, cfg.timeout_s)  # fmt: skip
        elapsed, samples = follow(
            session.progress,
            f"ceiling, {what}",
            None,
            lambda: (passthrough.delivered,),
            finished,
            passthrough.check,
            t0,
            cfg.sample_every_s,
            cfg.timeout_s,
        )
    finally:
        passthrough.stop()
        tail.stop()
    return Ceiling(
        hops=hops,
        events=passthrough.delivered,
        copies=copies,
        cut_short=passthrough.cut_short,
        elapsed_s=round(elapsed, 3),
        events_per_s=round(passthrough.delivered / elapsed, 1),
        transactions=passthrough.transactions,
        output_records=counter.count,
        consumer={k: v for k, v in consumer.items() if k != "bootstrap.servers"},
        producer={k: v for k, v in producer.items() if k != "bootstrap.servers"},
        samples=samples,
    )
