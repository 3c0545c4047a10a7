"""Runtime bugs the chaos run found, each at the smallest size that shows it.

The runtime is not this branch's to change: each test is marked xfail(strict=True) with
the bug in its reason, so it runs and fails today without failing the suite, and turns
into a failure (XPASS) the moment a fix lands, which is when its marker goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from processor.chaos.verdict import DLQ_HEADERS
from tests.harness import Deployment, wait_for

pytestmark = pytest.mark.integration

# librdkafka's producer default message.max.bytes; the broker's default is 1048588.
CLIENT_MAX = 1_000_000


@pytest.mark.xfail(
    strict=True,
    reason="runtime bug: an input record above the producer's message.max.bytes (1,000,000, "
    "librdkafka's default) but within the broker's (1,048,588) cannot be dead-lettered: "
    "produce() raises MSG_SIZE_TOO_LARGE out of the route task and the instance exits; "
    "every restart meets the record again (a poison pill)",
)
def test_an_undecodable_input_above_the_clients_default_size_is_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, tmp_path)
    topic = deployment.topics.input("BookingFailed_v1")
    value = b"\x00" * (CLIENT_MAX + 100)  # no C3 01 marker: undecodable, for the DLQ
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 1_048_576})
    producer.produce(topic, value, b"key", headers=[("origin", b"test")])
    assert producer.flush(30) == 0

    running = deployment.start()
    wait_for(lambda: running.engine.stats.dead_lettered or not running.thread.is_alive())
    running.stop()  # re-raises what the engine died of

    [letter] = deployment.read([deployment.topics.dlq], until=lambda r: len(r) >= 1)
    assert letter.message == value
    assert letter.headers["origin"] == b"test"
    assert set(DLQ_HEADERS) <= letter.headers.keys()
