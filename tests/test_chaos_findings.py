"""Runtime bugs the chaos run found, each a regression test at the smallest size that
shows it: a record near the broker's maximum size was a poison pill, and a broker silent
past the transaction timeout ended the instance."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from processor.chaos.verdict import DLQ_HEADERS
from processor.localkafka.cluster import LocalCluster
from tests.factories import BundleStory
from tests.harness import FAST_GROUP, Deployment, codec, wait_for

pytestmark = pytest.mark.integration

# librdkafka's producer default message.max.bytes; the broker's default is 1048588.
CLIENT_MAX = 1_000_000


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


def test_a_broker_silent_past_the_transaction_timeout_is_waited_out(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    # Found by the chaos run: an instance exited 1 (_MSG_TIMED_OUT; or _FENCED after a 30 s
    # stall) when a node leading partitions it writes to was gone for longer than the
    # transaction timeout (10 s): after SIGKILL, leaders move only once the controller
    # fences the node (about 10 s). A node that stops answering (SIGSTOP) shows it every
    # time: the records in flight to it time out. The node chosen coordinates neither the
    # group nor the instance's transactions, so only deliveries (and, below, the group's
    # heartbeats) are involved.
    deployment = Deployment(local_cluster.bootstrap, tmp_path)
    # A session longer than the node's silence: the victim still replicates the group's
    # __consumer_offsets partition, and until it leaves the ISR (replica.lag.time.max.ms,
    # 30 s) the coordinator answers heartbeats COORDINATOR_NOT_AVAILABLE (Kafka 4 makes a
    # heartbeat a write operation, which waits for the high watermark). After a session
    # of that (6 s here by default), librdkafka rejoins as a new member under the same
    # group.instance.id and is fenced by itself, fatally (librdkafka #3437; seen in 1 of 7
    # runs). The default session (45 s) outlasts the ISR's 30 s.
    running = deployment.start("a", consumer_config={**FAST_GROUP, "session.timeout.ms": "30000"})
    coordinators = {
        local_cluster.group_coordinator(deployment.app),
        local_cluster.transaction_coordinator(f"{deployment.app}-a"),
    }
    victim = next(n.node_id for n in local_cluster.nodes if n.node_id not in coordinators)
    stories = [BundleStory(seed=f"{deployment.app}/{n}", tickets=1) for n in range(3000)]
    burst = Producer({"bootstrap.servers": local_cluster.bootstrap, "linger.ms": 20})
    initialized = deployment.topics.input("VipBundleInitialized_v1")
    for story in stories:
        burst.produce(initialized, codec.encode(story.initialized()))
    assert burst.flush(30) == 0  # a backlog: the instance is busy writing when the node stops
    wait_for(lambda: running.engine.stats.processed > 0, what="processing under way")
    pid = local_cluster.pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(15)
    finally:
        os.kill(pid, signal.SIGCONT)
    local_cluster.wait_healthy(60)

    # Read while it runs: an aborted transaction's work is counted as processed, then
    # redone, so only the committed outputs say when it is done.
    topic = deployment.topics.output_named("command", "BookShowTickets")
    outputs = deployment.read(
        [topic],
        until=lambda r: len(r) >= len(stories) or not running.thread.is_alive(),
        timeout=180,
    )
    running.stop()  # re-raises what the engine died of
    booked = Counter(r.key for r in outputs)
    assert booked == dict.fromkeys((s.vip_bundle_id for s in stories), 1)
