"""The local Kafka launcher: unit tests (no broker) and integration tests against a real broker."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from processor import localkafka

TopicFactory = Callable[..., str]


def _fail(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("must not be called")


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


# ------------------------------------------------------------------ no broker needed


def test_server_properties_are_single_node_kraft_on_loopback() -> None:
    props = _properties(
        localkafka.render_server_properties(broker_port=19092, data_dir=Path("/x/data"))
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == "/x/data"
    for key in (
        "offsets.topic.replication.factor",
        "offsets.topic.num.partitions",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "transaction.state.log.num.partitions",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["log.cleaner.dedupe.buffer.size"]) <= 32 * 1024 * 1024


def test_port_and_home_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(localkafka.PORT_ENV, raising=False)
    assert localkafka.bootstrap() == "127.0.0.1:9092"
    monkeypatch.setenv(localkafka.PORT_ENV, "29092")
    assert localkafka.bootstrap() == "127.0.0.1:29092"
    monkeypatch.setenv(localkafka.PORT_ENV, "nope")
    with pytest.raises(localkafka.LocalKafkaError, match=localkafka.PORT_ENV):
        localkafka.bootstrap()

    monkeypatch.setenv(localkafka.DIR_ENV, str(tmp_path))
    paths = localkafka.get_paths()
    assert paths.home == tmp_path.resolve()
    # The jar cache is per Kafka version (and pom), so a version bump fetches anew.
    assert paths.libs.parent == tmp_path.resolve() / "libs"
    assert paths.libs.name.startswith(f"kafka-{localkafka.kafka_version()}-")


def test_down_and_status_are_harmless_when_nothing_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(localkafka.DIR_ENV, str(tmp_path / "kafka"))
    assert localkafka.down() is False
    assert localkafka.status().running is False


def test_a_pid_file_naming_another_process_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(localkafka.DIR_ENV, str(tmp_path))
    pid_file = localkafka.get_paths().pid_file
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a Kafka broker: never signal it
    assert localkafka.status().running is False
    assert localkafka.down() is False
    assert not pid_file.exists()


def test_up_names_the_port_and_env_var_when_the_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setenv(localkafka.DIR_ENV, str(tmp_path))
        monkeypatch.setenv(localkafka.PORT_ENV, str(taken))
        monkeypatch.setattr(localkafka, "_fetch", _fail)
        with pytest.raises(localkafka.LocalKafkaError) as info:
            localkafka.up()
    assert str(taken) in str(info.value)
    assert localkafka.PORT_ENV in str(info.value)


# ---------------------------------------------------------------- real broker needed


def _transactional_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    return producer


def _read_all(bootstrap: str, topic: str, isolation: str, at_least: int) -> list[bytes]:
    """Values of partition 0 from the start, until `at_least` are seen and the end is reached."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    at_end = False
    deadline = time.monotonic() + 30
    try:
        # Transaction markers land just after commit returns, so the end may move: keep reading.
        while not (at_end and len(values) >= at_least) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                at_end = True
                continue
            at_end = False
            values.append(msg.value())
    finally:
        consumer.close()
    return values


@pytest.mark.integration
def test_committed_transaction_is_read_by_read_committed(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic()
    producer = _transactional_producer(kafka_bootstrap)
    producer.begin_transaction()
    sent = [f"record-{i}".encode() for i in range(5)]
    for value in sent:
        producer.produce(topic, key=b"k", value=value)
    producer.commit_transaction(30)

    assert _read_all(kafka_bootstrap, topic, "read_committed", len(sent)) == sent


@pytest.mark.integration
def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic()
    producer = _transactional_producer(kafka_bootstrap)
    aborted = [b"aborted-1", b"aborted-2", b"aborted-3"]
    producer.begin_transaction()
    for value in aborted:
        producer.produce(topic, value=value)
    producer.flush(30)  # written to the log before the abort, not just dropped client-side
    producer.abort_transaction(30)
    committed = [b"committed-1", b"committed-2"]
    producer.begin_transaction()
    for value in committed:
        producer.produce(topic, value=value)
    producer.commit_transaction(30)

    assert _read_all(kafka_bootstrap, topic, "read_committed", len(committed)) == committed
    everything = _read_all(kafka_bootstrap, topic, "read_uncommitted", len(aborted + committed))
    assert everything == aborted + committed


@pytest.mark.integration
def test_compacted_topic_can_be_created_and_used(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(config={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"

    producer = _transactional_producer(kafka_bootstrap)
    producer.begin_transaction()
    producer.produce(topic, key=b"saga-1", value=b"v1")
    producer.produce(topic, key=b"saga-1", value=b"v2")
    producer.commit_transaction(30)
    assert _read_all(kafka_bootstrap, topic, "read_committed", 2) == [b"v1", b"v2"]


@pytest.mark.integration
def test_up_is_idempotent_while_the_local_broker_runs(kafka_bootstrap: str) -> None:
    local = kafka_bootstrap == localkafka.bootstrap() and not os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS"
    )
    if not local or not localkafka.status().running:
        pytest.skip("the session uses an external or containerised broker")
    started = time.monotonic()
    assert localkafka.up() == kafka_bootstrap
    assert time.monotonic() - started < 10
    assert localkafka.status().answers
