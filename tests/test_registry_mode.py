"""Registry mode against a real broker and a real Schema Registry (the project's local
Apicurio, or SCHEMA_REGISTRY_URL): the Confluent wire format in and out, compatible
evolution, bad ids and incompatible writers dead-lettered, replay identical."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from processor import registry
from processor.admin import ensure_internal_topics
from processor.codec import DEFAULT_SCHEMA_DIR
from processor.registry_codec import RegistryCodec, input_topics, processor_topics
from tests.factories import OUTCOMES, BundleStory, avro_record
from tests.harness import Deployment, expected_outputs, observed
from tests.test_reset import reset_cli, start

pytestmark = pytest.mark.integration


def in_registry_mode(deployment: Deployment, url: str) -> registry.SchemaRegistryClient:
    client = registry.make_client(url)
    deployment.codec = RegistryCodec(client, processor_topics(deployment.topics))
    deployment.services_codec = RegistryCodec(client, input_topics(deployment.topics))
    return client


@pytest.fixture
def deployment(kafka_bootstrap: str, tmp_path: Path) -> Deployment:
    return Deployment(kafka_bootstrap, tmp_path / "state", partitions=2)


def raw_records(deployment: Deployment, topics: list[str]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of every committed record, as bytes."""
    consumer = Consumer(
        {
            "bootstrap.servers": deployment.bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    metadata = consumer.list_topics(timeout=30).topics
    tps = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
    consumer.assign(tps)
    records, ends = [], 0
    try:
        while ends < len(tps):
            for msg in consumer.consume(500, timeout=1):
                if msg.error() is not None:
                    ends += 1
                else:
                    records.append((msg.topic(), msg.key() or b"", msg.value() or b""))
    finally:
        consumer.close()
    return records


def test_registry_encoded_inputs_give_registry_encoded_outputs_under_their_subjects(
    deployment: Deployment, schema_registry_url: str
) -> None:
    client = in_registry_mode(deployment, schema_registry_url)
    expected: Counter[tuple[str, str, object]] = Counter()
    for n, outcome in enumerate(OUTCOMES):
        events = BundleStory(seed=f"{deployment.app}/{n}", tickets=2).history(outcome)
        expected += expected_outputs(deployment.topics, events)
        deployment.publish(*events, key="any")
    running = deployment.start()
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()

    assert observed(received) == expected
    for topic, _, value in raw_records(deployment, list(deployment.topics.outputs)):
        schema_id = registry.schema_id_of(value)  # magic byte 0, then the id
        latest = client.get_latest_version(registry.subject_for(topic))
        assert schema_id == latest.schema_id
    assert deployment.read([deployment.topics.dlq], timeout=2, until=lambda _: True) == []


def test_a_newer_writer_schema_with_an_optional_field_is_read(
    deployment: Deployment, schema_registry_url: str
) -> None:
    client = in_registry_mode(deployment, schema_registry_url)
    topic = deployment.topics.input("BookingMade_v1")
    v2 = registry.load_writer_schemas(DEFAULT_SCHEMA_DIR)["BookingMade_v1"]
    v2 = {
        **v2,
        "fields": [*v2["fields"], {"name": "channel", "type": ["null", "string"], "default": None}],
    }
    [v2_id] = registry.register_schemas(client, {topic: v2}).values()  # BACKWARD allows it
    story = BundleStory(seed=f"{deployment.app}/v2", tickets=1)
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body, fastavro.parse_schema(v2), avro_record(story.booking_made(), channel="web")
    )
    deployment.publish(story.initialized())
    deployment.send_raw(topic, None, registry.frame(v2_id, body.getvalue()))
    expected = expected_outputs(deployment.topics, [story.initialized(), story.booking_made()])

    running = deployment.start()
    received = deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()
    assert observed(received) == expected  # BookFlight came from the v2 record


def test_an_unknown_schema_id_and_an_incompatible_writer_go_to_the_dlq(
    deployment: Deployment, schema_registry_url: str
) -> None:
    client = in_registry_mode(deployment, schema_registry_url)
    topic = deployment.topics.input("BookingMade_v1")
    # A writer whose number_of_tickets is a string cannot be read as ours (an int);
    # registered under a subject of its own, as another team's tool might have.
    wrong = registry.load_writer_schemas(DEFAULT_SCHEMA_DIR)["BookingMade_v1"]
    wrong = {
        **wrong,
        "fields": [
            {**f, "type": "string"} if f["name"] == "number_of_tickets" else f
            for f in wrong["fields"]
        ],
    }
    [wrong_id] = registry.register_schemas(client, {f"other-{deployment.app}": wrong}).values()
    story = BundleStory(seed=f"{deployment.app}/bad", tickets=1)
    body = io.BytesIO()
    record = avro_record(story.booking_made(), number_of_tickets="one")
    fastavro.schemaless_writer(body, fastavro.parse_schema(wrong), record)
    deployment.send_raw(topic, b"incompatible", registry.frame(wrong_id, body.getvalue()))
    deployment.send_raw(topic, b"unknown", registry.frame(987_654_321, b"\x00"))
    healthy = BundleStory(seed=f"{deployment.app}/ok", tickets=1)
    deployment.publish(healthy.initialized())

    running = deployment.start()
    dead = deployment.read([deployment.topics.dlq], until=lambda got: len(got) >= 2)
    outputs = deployment.read(until=lambda got: len(got) >= 1)
    running.stop()

    kinds = {r.key: r.headers["__streams.errors.message"].decode() for r in dead}
    assert len(dead) == 2
    assert kinds["incompatible"].startswith("incompatible-schema")
    assert kinds["unknown"].startswith("unknown-schema-id")
    assert all(r.headers["__streams.errors.topic"] == topic.encode() for r in dead)
    assert [type(r.message).__name__ for r in outputs] == ["BookShowTickets"]  # it went on


def test_a_replay_in_registry_mode_re_emits_identical_records(
    deployment: Deployment, schema_registry_url: str, tmp_path: Path
) -> None:
    in_registry_mode(deployment, schema_registry_url)
    expected: Counter[tuple[str, str, object]] = Counter()
    for n, outcome in enumerate(OUTCOMES):
        events = BundleStory(seed=f"{deployment.app}/{n}", tickets=2).history(outcome)
        expected += expected_outputs(deployment.topics, events)
        deployment.publish(*events)
    outputs = list(deployment.topics.outputs)
    running = start(deployment)
    deployment.read(until=lambda got: len(got) >= sum(expected.values()))
    running.stop()
    first = Counter(raw_records(deployment, outputs))

    assert reset_cli(deployment, deployment.state_root).returncode == 0
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    ensure_internal_topics(admin, deployment.topics, deployment.partitions)  # as `run` does
    running = start(deployment)
    deployment.read(until=lambda got: len(got) >= 2 * sum(expected.values()))
    running.stop()
    both = Counter(raw_records(deployment, outputs))

    assert sum(first.values()) == sum(expected.values())
    assert both == first + first  # every record again, byte for byte
