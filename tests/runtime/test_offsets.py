"""Batched ListOffsets against the real broker: the read_committed end, and topics
listed the moment they are created (their leader is announced before it serves)."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from processor.runtime.offsets import end_offsets, start_offsets
from tests.harness import wait_for


def test_the_end_is_the_last_stable_offset_not_the_high_watermark(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = new_topic()
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"t-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=b"committed %d" % i)
    producer.commit_transaction(30)  # offsets 0-2, its marker at 3
    producer.begin_transaction()
    for i in range(2):
        producer.produce(topic, value=b"open %d" % i)
    producer.flush(30)  # offsets 4-5, in a transaction still open
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    assert end_offsets(admin, [(topic, 0)]) == {(topic, 0): 4}
    assert start_offsets(admin, [(topic, 0)]) == {(topic, 0): 0}

    producer.commit_transaction(30)
    # The coordinator writes the commit markers after EndTxn answers: the end moves soon.
    wait_for(lambda: end_offsets(admin, [(topic, 0)]) == {(topic, 0): 7}, 30, "end past the commit")


def test_topics_are_listed_as_soon_as_they_are_created(kafka_bootstrap: str, new_topic) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for _ in range(5):
        topic = new_topic(partitions=6)
        partitions = [(topic, p) for p in range(6)]
        assert end_offsets(admin, partitions) == dict.fromkeys(partitions, 0)
