"""One bench run's shared things: the broker's admin client, the run's name (the
prefix of every topic and group it creates), the generated stories, the progress
display, and the clean-up of all of it."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from rich.progress import Progress

from processor.admin import TopicSpec, create_topics, ensure_internal_topics
from processor.bench.config import BenchConfig
from processor.bench.kafka import engine_settings, private_topics
from processor.bench.workload import Stories
from processor.codec import Codec
from processor.topology import Topics

log = logging.getLogger(__name__)


class Session:
    def __init__(self, config: BenchConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.codec = Codec()
        self.admin = AdminClient({"bootstrap.servers": config.bootstrap_servers})
        self.app = f"bench-{uuid.uuid4().hex[:8]}"
        self.stories = Stories(config.seed)
        self.settings = engine_settings(config.bootstrap_servers)
        self.state_dir = config.state_dir / self.app
        self._topics: list[str] = []
        self._groups: list[str] = []  # consumer groups that committed offsets

    def deployment(self, name: str) -> Topics:
        """A complete deployment (inputs, outputs, internal topics) of its own,
        named <run>-<name>: phases never see each other's records."""
        cfg = self.config
        topics = private_topics(f"{self.app}-{name}")
        ensure_internal_topics(self.admin, topics, cfg.partitions)
        create_topics(
            self.admin,
            [TopicSpec(t, cfg.input_partitions) for t in topics.inputs]
            + [TopicSpec(t, cfg.partitions) for t in topics.outputs],
        )
        self._topics += [*topics.inputs, *topics.outputs, *topics.repartitions]
        self._topics += [topics.changelog, topics.dlq]
        self._groups.append(topics.application_id)
        self.warm([*topics.repartitions, topics.changelog, *topics.outputs, topics.dlq])
        return topics

    def topic(self, name: str, partitions: int) -> str:
        """A plain topic of this run, named <run>-<name>."""
        topic = f"{self.app}-{name}"
        create_topics(self.admin, [TopicSpec(topic, partitions)])
        self._topics.append(topic)
        return topic

    def warm(self, topics: list[str]) -> float:
        """Has the broker write its first transaction markers to every partition of
        `topics` before anything is timed; returns the seconds it took.

        A broker pays once for the first writes to a new partition, and under load
        that is slow: on this machine the WriteTxnMarkers of the engine's first
        transactions over freshly created topics took 0.2-1.2 s (then 0-9 ms), and the
        producer waits that long to start the next transaction (CONCURRENT_TRANSACTIONS).
        A deployment pays it once, in its first seconds; the bench times steady work,
        so it pays it here, idle: one aborted transaction over every partition
        (read_committed readers never see its records), then a second producer with the
        same transactional.id, whose init_transactions returns once those markers are
        written. Best effort: a slow broker is logged, not an error.
        """
        metadata = self.admin.list_topics(timeout=30).topics
        partitions = [(t, p) for t in topics for p in metadata[t].partitions]
        config = {
            "bootstrap.servers": self.config.bootstrap_servers,
            "transactional.id": f"{self.app}-warm-{uuid.uuid4().hex[:8]}",
        }
        started = time.monotonic()
        try:
            producer = Producer(config)
            producer.init_transactions(30)
            producer.begin_transaction()
            for topic, partition in partitions:
                # A key: the changelog is compacted.
                producer.produce(topic, b"", b"warm-up", partition=partition)
            producer.flush(30)
            producer.abort_transaction(30)
            Producer(config).init_transactions(30)
        except KafkaException as exc:
            log.warning("warming %d partitions failed (timing goes on): %s", len(partitions), exc)
        seconds = time.monotonic() - started
        log.info("first transaction markers on %d partitions: %.2fs", len(partitions), seconds)
        return seconds

    def group(self, name: str) -> str:
        """A consumer group of this run (deleted at the end)."""
        group = f"{self.app}-{name}"
        self._groups.append(group)
        return group

    def cleanup(self, keep_topics: bool = False) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if no other run uses it
            self.config.state_dir.rmdir()
        if keep_topics:
            return
        if self._groups:
            self._delete(self.admin.delete_consumer_groups(self._groups, request_timeout=30))
        if self._topics:
            self._delete(self.admin.delete_topics(self._topics, operation_timeout=30))

    @staticmethod
    def _delete(futures: dict[str, Any]) -> None:
        # Best effort: a phase that failed early never created some of them.
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                log.info("could not delete %s: %s", name, exc)
