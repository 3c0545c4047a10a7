"""The local three-node cluster: unit tests (no broker), then the real cluster.

The integration tests (on the session's `local_cluster`, see conftest.py) stop the node that
coordinates a transactional producer and a consumer group, and check that both go on
(replication factor 3, min.insync.replicas 2) and that the coordinators named by the cluster
API are the ones the clients really use.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic

from processor.localkafka import LocalKafkaError, cluster
from processor.localkafka.cluster import LocalCluster, coordinator_partition, java_string_hash
from processor.localkafka.jvm import alive

# ------------------------------------------------------------------ no broker needed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Printed by jshell: System.out.println("<text>".hashCode())
        ("", 0),
        ("hello", 99162322),
        ("vip-bundle-process-manager-processor-1", 760844317),
        ("\U0001f600é", 54960102),  # a surrogate pair, then a BMP character
        ("polygenelubricants", -(2**31)),
    ],
)
def test_java_string_hash_matches_java(text: str, expected: int) -> None:
    assert java_string_hash(text) == expected


def test_coordinator_partition_uses_kafkas_abs() -> None:
    # Utils.abs(Integer.MIN_VALUE) is 0; Python's abs would give 2**31 % 3 == 2.
    assert coordinator_partition("polygenelubricants", 3) == 0
    assert coordinator_partition("vip-bundle-process-manager-processor-1", 50) == 760844317 % 50
    assert coordinator_partition("hello", 3) == 99162322 % 3


def test_nodes_are_three_voters_with_replicated_internal_topics(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path, 19192)
    assert [node.node_id for node in local.nodes] == [1, 2, 3]
    assert local.bootstrap == "127.0.0.1:19192,127.0.0.1:19194,127.0.0.1:19196"
    voters = "1@127.0.0.1:19193,2@127.0.0.1:19195,3@127.0.0.1:19197"
    for node in local.nodes:
        props = local.settings(node.node_id)
        assert props["node.id"] == str(node.node_id)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["log.dirs"] == str(tmp_path / f"node-{node.node_id}" / "data")
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "share.coordinator.state.topic.replication.factor",
        ):
            assert props[key] == "3", key
        for key in (
            "min.insync.replicas",
            "transaction.state.log.min.isr",
            "share.coordinator.state.topic.min.isr",
        ):
            assert props[key] == "2", key
    with pytest.raises(LocalKafkaError, match="no node 4"):
        local.node(4)


def test_home_and_ports_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(cluster.CLUSTER_PORT_ENV, raising=False)
    monkeypatch.setenv(cluster.CLUSTER_DIR_ENV, str(tmp_path))
    local = cluster.get_cluster()
    assert local.home == tmp_path.resolve()
    # Clear of the single broker (9092/9093) and of docker-compose's host port (19092).
    assert local.base_port == 19192
    monkeypatch.setenv(cluster.CLUSTER_PORT_ENV, "29192")
    assert cluster.get_cluster().bootstrap.startswith("127.0.0.1:29192,")
    monkeypatch.setenv(cluster.CLUSTER_PORT_ENV, "65533")
    with pytest.raises(LocalKafkaError, match=cluster.CLUSTER_PORT_ENV):
        cluster.get_cluster()


def test_nothing_running_is_harmless(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "cluster", 19192)
    assert local.down() is False
    assert local.running() == []
    assert local.stop_node(2) is False


# ---------------------------------------------------------------- real cluster needed

_COORDINATOR_LINE = re.compile(r"Transaction coordinator is broker (\d+)")


class _Lines(logging.Handler):
    """Keeps librdkafka's log lines: its FindCoordinator answers say which node it uses."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def coordinators(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := _COORDINATOR_LINE.search(line))]


def _metadata_with(admin: AdminClient, *names: str, timeout: float = 30.0) -> ClusterMetadata:
    """Cluster metadata once it shows `names` with a leader for every partition: a new topic
    reaches each broker's metadata a moment after create_topics returns."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=10)
        topics = [metadata.topics.get(name) for name in names]
        if all(
            topic is not None
            and topic.partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
            for topic in topics
        ):
            return metadata
        if time.monotonic() > deadline:
            raise AssertionError(f"{names} not all in the metadata after {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def cluster_topic(local_cluster: LocalCluster) -> Iterator[str]:
    admin = AdminClient({"bootstrap.servers": local_cluster.bootstrap})
    name = f"test-cluster-{uuid.uuid4().hex[:12]}"
    # No replication factor given: the cluster's default (3) applies.
    admin.create_topics([NewTopic(name, 3)], operation_timeout=30)[name].result(timeout=30)
    _metadata_with(admin, name)
    yield name
    local_cluster.up()  # a failed test may have left a node down
    admin.delete_topics([name], operation_timeout=30)[name].result(timeout=30)


def _transaction(producer: Producer, topic: str, values: list[bytes]) -> None:
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, key=value, value=value)
    producer.commit_transaction(60)


def _poll_values(consumer: Consumer, count: int, timeout: float = 60.0) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(msg.error())
        values.append(msg.value())
    return values


def _commit(consumer: Consumer, timeout: float = 60.0) -> None:
    """Commit the position; while the group coordinator moves, the commit is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            consumer.commit(asynchronous=False)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline or not exc.args[0].retriable():
                raise
            time.sleep(0.5)


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def _eventually(read: Callable[[], int], not_: int, timeout: float = 20.0) -> int:
    """read() once it no longer answers `not_`."""
    deadline = time.monotonic() + timeout
    while (value := read()) == not_:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {not_} after {timeout:.0f} s")
        time.sleep(0.2)
    return value


def _group_on(local: LocalCluster, node_id: int) -> str:
    """A fresh consumer group id whose coordinator is `node_id`."""
    for _ in range(200):
        group = f"test-group-{uuid.uuid4().hex[:12]}"
        if local.group_coordinator(group) == node_id:
            return group
    raise AssertionError(f"no group id found on node {node_id}")


@pytest.mark.integration
def test_every_topic_has_three_replicas_and_min_isr_two(
    local_cluster: LocalCluster, cluster_topic: str
) -> None:
    admin = AdminClient({"bootstrap.servers": local_cluster.bootstrap})
    names = (cluster_topic, cluster.OFFSETS_TOPIC, cluster.TRANSACTION_TOPIC)
    metadata = _metadata_with(admin, *names)
    assert sorted(metadata.brokers) == [1, 2, 3]
    for name in names:
        partitions = metadata.topics[name].partitions.values()
        assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions), name
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        configs = admin.describe_configs([resource])[resource].result(timeout=30)
        assert configs["min.insync.replicas"].value == "2", name
    local_cluster.wait_healthy(30)


@pytest.mark.integration
def test_producing_and_consuming_go_on_when_the_coordinator_node_stops(
    local_cluster: LocalCluster, cluster_topic: str
) -> None:
    local = local_cluster
    transactional_id = f"test-txn-{uuid.uuid4().hex[:12]}"
    victim = local.transaction_coordinator(transactional_id)
    group = _group_on(local, victim)  # so stopping one node moves both coordinators
    # The group coordinator is found by the same rule as the transaction coordinator.
    admin = AdminClient({"bootstrap.servers": local.bootstrap})
    offsets = _metadata_with(admin, cluster.OFFSETS_TOPIC).topics[cluster.OFFSETS_TOPIC]
    partition = coordinator_partition(group, len(offsets.partitions))
    assert offsets.partitions[partition].leader == victim

    lines = _Lines()
    rdkafka_log = logging.getLogger(f"test.rdkafka.{transactional_id}")
    rdkafka_log.addHandler(lines)
    rdkafka_log.setLevel(logging.DEBUG)
    rdkafka_log.propagate = False
    producer = Producer(
        {
            "bootstrap.servers": local.bootstrap,
            "transactional.id": transactional_id,
            "debug": "eos",
            "logger": rdkafka_log,
        }
    )
    producer.init_transactions(60)
    consumer = _consumer(local.bootstrap, group)
    consumer.subscribe([cluster_topic])
    batches = [[f"{name}-{i}".encode() for i in range(10)] for name in ("a", "b", "c")]
    try:
        _transaction(producer, cluster_topic, batches[0])
        # The coordinator the client found is the one the cluster API names.
        assert lines.coordinators()[-1] == victim
        assert sorted(_poll_values(consumer, 10)) == sorted(batches[0])
        _commit(consumer)

        assert local.stop_node(victim) is True
        health = local.health()
        assert victim in health.down
        assert not health.healthy
        # The brokers learn of the move a moment after the node is gone.
        moved_to = _eventually(lambda: local.transaction_coordinator(transactional_id), victim)
        _eventually(lambda: local.group_coordinator(group), victim)

        # Two of three replicas are in sync: transactions and offset commits still succeed.
        _transaction(producer, cluster_topic, batches[1])
        assert lines.coordinators()[-1] == moved_to
        assert sorted(_poll_values(consumer, 10)) == sorted(batches[1])
        _commit(consumer)

        assert local.start_node(victim) is True
        local.wait_healthy(30)
        assert local.transaction_coordinator(transactional_id) in (1, 2, 3)
        assert local.group_coordinator(group) in (1, 2, 3)
        _transaction(producer, cluster_topic, batches[2])
        assert sorted(_poll_values(consumer, 10)) == sorted(batches[2])
        _commit(consumer)
    finally:
        consumer.close()
        producer.flush(10)

    # Nothing lost or doubled, and the group's offsets survived the move: it has nothing left.
    reader = _consumer(local.bootstrap, f"test-reader-{uuid.uuid4().hex[:12]}")
    reader.subscribe([cluster_topic])
    try:
        everything = _poll_values(reader, 30)
        assert sorted(everything) == sorted(batches[0] + batches[1] + batches[2])
        assert _poll_values(reader, 1, timeout=2.0) == []
    finally:
        reader.close()
    again = _consumer(local.bootstrap, group)
    again.assign([TopicPartition(cluster_topic, p) for p in range(3)])
    try:
        assert _poll_values(again, 1, timeout=5.0) == []
    finally:
        again.close()


@pytest.mark.integration
def test_a_killed_node_is_reported_and_rejoins(local_cluster: LocalCluster) -> None:
    local = local_cluster
    victim = 3
    assert local.stop_node(victim, kill=True) is True
    assert local.pid(victim) is None
    assert victim in local.health().down
    # Refused like any stopped broker, and its ports kept bound by this process meanwhile, so
    # that no client reconnecting to it is given one as its own source port (_hold_ports; the
    # kernel's choice of source port cannot be steered here, so the binding itself is checked).
    node = local.node(victim)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.broker_port), timeout=5).close()
    held = {sock.getsockname()[1] for sock in cluster._HELD[node.broker_port]}
    assert held == {node.broker_port, node.controller_port}
    assert local.stop_node(victim) is False  # idempotent

    assert local.start_node(victim) is True
    assert local.pid(victim) is not None
    local.wait_healthy(30)
    assert local.start_node(victim) is False
    started = time.monotonic()
    assert local.up() == local.bootstrap  # idempotent while it runs
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_the_cli_names_the_same_coordinators(local_cluster: LocalCluster) -> None:
    group, transactional_id = "vip-bundle-process-manager", "vip-bundle-process-manager-p-1"
    command = [
        sys.executable, "-m", "processor.localkafka", "coordinators",
        "--group-id", group, "--transactional-id", transactional_id,
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.splitlines() == [
        f"group {group}: node {local_cluster.group_coordinator(group)}",
        f"transactional id {transactional_id}: "
        f"node {local_cluster.transaction_coordinator(transactional_id)}",
    ]


@pytest.mark.integration
def test_a_node_whose_port_is_taken_while_it_starts_is_started_again(
    local_cluster: LocalCluster,
) -> None:
    # Found by the chaos run: restarting a stopped coordinator failed with "cluster node 1
    # exited during start-up" (BindException), then "port ... is already in use". With the
    # ports in the ephemeral range, a client reconnecting to the stopped node had been given
    # the node's port as its source port and connected to itself. Here a socket takes the
    # port as soon as the node's JVM is spawned, and keeps it until that JVM gave up.
    local = local_cluster
    victim = 2
    node = local.node(victim)
    assert local.stop_node(victim) is True
    held = threading.Event()

    def take_port() -> None:
        deadline = time.monotonic() + 60
        while not node.files.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        first = int(node.files.pid_file.read_text())
        with socket.socket() as sock:
            # Like the JVM, past the old node's connections in TIME_WAIT; listening, so the
            # JVM cannot share the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", node.broker_port))  # before the JVM gets there
            sock.listen()
            held.set()
            while alive(first) and time.monotonic() < deadline:  # until that JVM gave up
                time.sleep(0.1)
            time.sleep(1.0)

    thief = threading.Thread(target=take_port)
    thief.start()
    try:
        assert local.start_node(victim) is True
    finally:
        thief.join()
    assert held.is_set()
    local.wait_healthy(30)
