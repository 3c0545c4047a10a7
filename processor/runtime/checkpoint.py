"""One Kafka transaction: outputs, changelog and DLQ records, and input offsets.

begin -> send / changelog ... -> commit (or abort). The offsets of the changelog
records, learnt from delivery reports during the commit's flush, tell each
task which changelog offset its newly committed state reflects.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from processor.runtime.handler import OutputRecord


class CommitStuck(Exception):
    """The commit neither succeeded nor failed in time."""


class Checkpoint:
    def __init__(self, producer: Producer, changelog_topic: str) -> None:
        self._producer = producer
        self._changelog_topic = changelog_topic
        self._changelog_offsets: dict[int, int] = {}
        self._failed: list[KafkaError] = []
        self.is_open = False
        self.opened_at = 0.0
        self.records = 0

    def begin(self) -> None:
        if not self.is_open:
            self._producer.begin_transaction()
            self.is_open = True
            self.opened_at = time.monotonic()
            self.records = 0
            self._changelog_offsets.clear()
            self._failed.clear()

    def send(self, record: OutputRecord, timestamp: int = 0) -> None:
        self._produce(record.topic, record.key, record.value, record.headers, timestamp)

    def changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._produce(self._changelog_topic, key, value, None, 0, partition)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        timestamp: int,
        partition: int = -1,
    ) -> None:
        self.begin()
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    partition=partition,
                    timestamp=timestamp,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)
        self.records += 1

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(err)
        elif msg.topic() == self._changelog_topic:
            partition, offset = msg.partition(), msg.offset()
            if offset > self._changelog_offsets.get(partition, -1):
                self._changelog_offsets[partition] = offset

    def commit(self, offsets: list[TopicPartition], group_metadata: object) -> dict[int, int]:
        """Commits the transaction; returns the next changelog offset per partition
        written in it. Raises KafkaException as librdkafka reports it."""
        self._producer.flush()  # serve delivery reports here, before the commit
        if offsets:
            self._producer.send_offsets_to_transaction(offsets, group_metadata)
        self._producer.commit_transaction()
        if self._failed:  # cannot happen after a successful commit; never hide it
            raise KafkaException(self._failed[0])
        self.is_open = False
        return {p: o + 1 for p, o in self._changelog_offsets.items()}

    def commit_within(
        self, offsets: list[TopicPartition], group_metadata: object, timeout_s: float
    ) -> dict[int, int]:
        """`commit`, given up after `timeout_s`: librdkafka's send_offsets_to_transaction
        can hang for good after its group coordinator went away, whatever its timeout
        (librdkafka issues #5511 and #5456). Raises CommitStuck then; the caller must
        replace the producer, whose successor fences and aborts the stuck transaction."""
        outcome: list[dict[int, int] | BaseException] = []

        def run() -> None:
            try:
                outcome.append(self.commit(offsets, group_metadata))
            except BaseException as exc:  # handed to the calling thread
                outcome.append(exc)

        worker = threading.Thread(target=run, name="commit", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if not outcome:
            raise CommitStuck(f"transaction commit did not return within {timeout_s:.0f}s")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def abort(self) -> None:
        if self.is_open:
            self._producer.abort_transaction()
            self.is_open = False
