"""Kafka plumbing the phases share: the engine's own client settings, private topic
names, producing with backpressure, a read_committed tail, and a raw read."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processor.runtime.engine import Engine, EngineConfig
from processor.runtime.handler import Outcome, Record
from processor.runtime.offsets import end_offsets, start_offsets
from processor.topology import Topics

Config = dict[str, Any]
Headers = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None

BATCH = 1000  # the engine's consume batch


def private_topics(app: str) -> Topics:
    """Inputs and outputs named after the application id: nobody else's records."""
    defaults = Topics()
    return Topics(app, {t: f"{t}.{app}" for t in (*defaults.inputs, *defaults.outputs)})


# --- the engine's client settings ------------------------------------------------------


class _Inert:
    """Stands in for a client while the engine is only constructed."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine called {name} while only being constructed")


class _Recorder:
    def __init__(self) -> None:
        self.consumers: list[Config] = []
        self.producers: list[Config] = []

    def consumer(self, config: Config) -> Any:
        self.consumers.append(dict(config))
        return _Inert()

    def producer(self, config: Config) -> Any:
        self.producers.append(dict(config))
        return _Inert()

    def admin(self, config: Config) -> Any:
        return _Inert()


def engine_settings(bootstrap: str) -> dict[str, Config]:
    """The configs the engine gives its clients: "group" (the consumer in the
    application's group), "reader" (its restore consumer) and "producer". Taken
    from a constructed Engine, so the ceiling and the raw reads use exactly the
    engine's settings, today's and tomorrow's."""
    recorder = _Recorder()

    def nothing(record: Record, state: Any) -> Outcome:
        raise AssertionError("not called")

    with tempfile.TemporaryDirectory() as state_dir:
        config = EngineConfig(
            bootstrap_servers=bootstrap,
            application_id="settings",
            instance_id="0",
            source_topics=("s",),
            changelog_topic="c",
            dlq_topic="d",
            state_dir=Path(state_dir),
        )
        Engine(config, nothing, None, clients=recorder)  # type: ignore[arg-type]
    by_group = {c["group.id"]: c for c in recorder.consumers}
    settings = {
        "group": by_group["settings"],
        "reader": by_group["settings-restore"],
        "producer": recorder.producers[0],
    }
    for config in settings.values():
        for identity in ("group.id", "client.id", "group.instance.id", "transactional.id"):
            config.pop(identity, None)
    return settings


# --- producing -----------------------------------------------------------------------------


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    timestamp: int = 0,
    headers: Headers = None,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, timestamp=timestamp)
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.05)


def bulk_producer(bootstrap: str) -> Producer:
    """Idempotent, with large batches and a deep queue: for writing a lot, fast.
    No compression, as the engine's producer."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # Keys land on the partition Kafka Streams and the engine would use.
            "partitioner": "murmur2_random",
        }
    )


def commit_at_end(admin: AdminClient, bootstrap: str, group: str, topics: Iterable[str]) -> None:
    """Commits `group`'s offsets at the end of `topics`: all read already."""
    metadata = admin.list_topics(timeout=30).topics
    ends = end_offsets(admin, [(t, p) for t in topics for p in metadata[t].partitions])
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


# --- reading -------------------------------------------------------------------------------


class Counter:
    """Counts records; notes when the last one was seen and when `target` was reached."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.count = 0
        self.last_at = 0.0
        self.reached_at: float | None = None

    def __call__(self, msg: Message, now: float) -> None:
        self.count += 1
        self.last_at = now
        if self.reached_at is None and self.target is not None and self.count >= self.target:
            self.reached_at = now


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
                "group.id": f"bench-tail-{uuid.uuid4().hex}",  # never committed
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
                messages = self._consumer.consume(BATCH, timeout=0.05)
                now = time.monotonic()
                for msg in messages:
                    if msg.error() is None:
                        self._on_record(msg, now)
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)


def raw_read(
    bootstrap: str, admin: AdminClient, topic: str, reader: Config, timeout_s: float
) -> tuple[int, float]:
    """Reads every committed record of `topic` with the engine's reader settings and
    does nothing with them: (records, seconds). The floor of any restore."""
    metadata = admin.list_topics(topic, timeout=30).topics[topic]
    partitions = [(topic, p) for p in sorted(metadata.partitions)]
    consumer = Consumer(
        {**reader, "group.id": f"bench-raw-{uuid.uuid4().hex}", "enable.partition.eof": True}
    )
    # Timed from the offset lookups on, as a restore is (Restorer.add looks them up).
    started = time.monotonic()
    lows, ends = start_offsets(admin, partitions), end_offsets(admin, partitions)
    consumer.assign([TopicPartition(t, p, lows[(t, p)]) for t, p in partitions])
    records = 0
    left = {tp for tp in partitions if lows[tp] < ends[tp]}
    try:
        while left:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"raw read of {topic}: {records} records in {timeout_s:.0f}s")
            for msg in consumer.consume(BATCH, timeout=0.05):
                if msg.error() is None:
                    records += 1
            # Transaction markers leave offset gaps: the position tells the end.
            for tp in consumer.position([TopicPartition(t, p) for t, p in left]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    left.discard((tp.topic, tp.partition))
        return records, time.monotonic() - started
    finally:
        consumer.close()
