"""One Kafka transaction and the tasks whose work it carries.

begin -> tasks produce outputs -> commit:
  1. every task prepares: one changelog record per key it changed;
  2. the producer flushes (delivery reports give the changelog offsets);
  3. the tasks' positions (with their parking metadata) go to the transaction;
  4. commit;
  5. every task flushes its state to RocksDB with the changelog offset it reflects.
A failure before 5 aborts: the tasks drop what they staged and rewind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from processor.runtime.clients import Producer
from processor.runtime.handler import Headers


class CommitStuck(Exception):
    """The commit neither succeeded nor failed in time."""


class RecordTooLarge(Exception):
    """The producer refused a record for its size before sending it: the transaction
    is fine, the record is not."""


class TransactionFailed(Exception):
    """A record of the transaction was refused (too large, topic gone...): the
    transaction can only be aborted, and its work redone."""


class Committable(Protocol):
    """What a task does at each step of a commit."""

    def prepare(self, checkpoint: Checkpoint) -> None: ...
    def offsets(self) -> list[TopicPartition]: ...
    def flush(self, changelog_offsets: dict[int, int]) -> None: ...


class Checkpoint:
    def __init__(
        self,
        producer: Producer,
        changelog_topic: str | None,
        source_topics: frozenset[str] = frozenset(),
    ) -> None:
        self._producer = producer
        self._changelog_topic = changelog_topic
        # Records to the instance's own sources (repartition topics): their offsets
        # tell its tasks what is still to come (see ordering.py).
        self._sources = source_topics
        self.produced_ends: dict[tuple[str, int], int] = {}
        self._changelog_offsets: dict[int, int] = {}
        self._failed: list[KafkaError] = []
        self.is_open = False
        self.opened_at = 0.0
        self.records = 0
        self._prepared = False  # a retried commit must not produce the changelog twice

    def begin(self) -> None:
        if not self.is_open:
            self._producer.begin_transaction()
            self.is_open = True
            self.opened_at = time.monotonic()
            self.records = 0
            self._prepared = False
            self._changelog_offsets.clear()
            self.produced_ends = {}
            self._failed.clear()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        timestamp: int = 0,
    ) -> None:
        if not self.is_open:
            self.begin()
        produce = self._producer.produce
        delivered = self._produced if topic in self._sources else None
        while True:
            try:
                produce(
                    topic, value, key, headers=headers, timestamp=timestamp, on_delivery=delivered
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLarge(f"{len(value or b'')} bytes for {topic}") from exc
                # An earlier record of this transaction was refused: it can only abort.
                # Keep going until the commit says so, rather than stop halfway.
                self._failed.append(exc.args[0])
                break
        self.records += 1

    def changelog(self, partition: int, changes: dict[bytes, bytes | None]) -> None:
        """Produces `changes` to changelog partition `partition`; the delivery report
        of the last one tells the offset they end at (a partition's records are
        delivered in order)."""
        assert self._changelog_topic is not None, "changelog records without a changelog"
        if not changes:
            return
        self.begin()
        last = len(changes) - 1
        for i, (key, value) in enumerate(changes.items()):
            while True:
                try:
                    self._producer.produce(
                        self._changelog_topic,
                        value,
                        key,
                        partition=partition,
                        on_delivery=self._delivered if i == last else None,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
                except KafkaException as exc:
                    self._failed.append(exc.args[0])
                    break
        self.records += len(changes)

    def _produced(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(err)
            return
        tp, end = (msg.topic(), msg.partition()), msg.offset() + 1
        if end > self.produced_ends.get(tp, 0):
            self.produced_ends[tp] = end

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(err)
        else:
            self._changelog_offsets[msg.partition()] = msg.offset() + 1

    def commit(self, tasks: Sequence[Committable], group_metadata: Any) -> None:
        """Steps 1-4: commits the transaction with every task's work. Raises
        KafkaException as librdkafka reports it; the tasks still hold their staged
        state then. The caller does step 5 (`task.flush`) once this returned."""
        self.begin()
        if not self._prepared:
            for task in tasks:
                task.prepare(self)
            self._prepared = True
        self._producer.flush()  # serve the delivery reports here, before the commit
        if self._failed:
            raise TransactionFailed(f"a record was refused: {self._failed[0].str()}")
        offsets = [tp for task in tasks for tp in task.offsets()]
        if offsets:
            self._producer.send_offsets_to_transaction(offsets, group_metadata)
        self._producer.commit_transaction()
        self.is_open = False

    @property
    def changelog_offsets(self) -> dict[int, int]:
        """Changelog partition -> the next offset, after the last commit."""
        return self._changelog_offsets

    def commit_within(
        self, tasks: Sequence[Committable], group_metadata: Any, timeout_s: float
    ) -> None:
        """`commit`, given up after `timeout_s`: librdkafka's send_offsets_to_transaction
        can hang for good after its group coordinator went away, whatever its timeout
        (librdkafka issues #5511 and #5456). Raises CommitStuck then; the caller must
        replace the producer, whose successor fences and aborts the stuck transaction."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                self.commit(tasks, group_metadata)
                outcome.append(None)
            except BaseException as exc:  # handed to the calling thread
                outcome.append(exc)

        worker = threading.Thread(target=run, name="commit", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if not outcome:
            raise CommitStuck(f"transaction commit did not return within {timeout_s:.0f}s")
        if outcome[0] is not None:
            raise outcome[0]

    def abort(self) -> None:
        if self.is_open:
            self.is_open = False
            self._producer.abort_transaction()
