"""Creating and checking the topology's topics on a multi-broker cluster."""

from __future__ import annotations

import contextlib
import threading
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processor.admin import TopicSpec, check_copartitioned, create_topics, internal_topics
from processor.localkafka.cluster import LocalCluster
from processor.topology import Topics


@pytest.mark.integration
def test_the_copartitioning_check_waits_for_topics_the_metadata_does_not_show_yet(
    local_cluster: LocalCluster,
) -> None:
    # Found by the chaos run: `processor run` exited 2 with "missing topics" right after it
    # had created them (in 1 to 2 creations of 10 here, with a client connected to all three
    # brokers): each metadata request may go to another broker, and a topic reaches each
    # broker's metadata a moment after its creation. Here the moment is made long: the
    # topics appear a second after the check started.
    admin = AdminClient({"bootstrap.servers": local_cluster.bootstrap})
    topics = Topics(f"test-admin-{uuid.uuid4().hex[:10]}")
    specs = [s for s in internal_topics(topics, 2) if s.name != topics.dlq]
    names = [s.name for s in specs]
    later = threading.Timer(1.0, lambda: create_topics(admin, [TopicSpec(n, 2) for n in names]))
    later.start()
    try:
        check_copartitioned(admin, names)
    finally:
        later.join()
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=30)
