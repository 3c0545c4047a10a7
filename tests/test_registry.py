"""processor.registry: the wire format, client settings and schemas offline; registration,
compatibility and the writer-schema cache against the real registry (schema_registry_url)."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processor import registry
from processor.cli import main as cli_main
from processor.codec import DEFAULT_SCHEMA_DIR, SchemaStore
from processor.registry import RecordSchemaError, RegistryUnavailable
from processor.topology import EVENT_NAMES, Topics

SCHEMAS = registry.load_writer_schemas(DEFAULT_SCHEMA_DIR)
REFUND = SCHEMAS["RefundTicket"]


def refund_record() -> dict[str, Any]:
    return {
        "header": {
            "id": uuid.uuid4(),
            "published_at": datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC),
            "idempotency_key": uuid.uuid4(),
        },
        "ticket_id": uuid.uuid4(),
    }


def with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    changed["fields"].append(field)
    return changed


OPTIONAL_NOTE = {"name": "note", "type": ["null", "string"], "default": None}
REQUIRED_NOTE = {"name": "note", "type": "string"}


# ------------------------------------------------------------------ wire format


def test_frame_is_magic_zero_and_big_endian_id() -> None:
    assert registry.header(42) == b"\x00\x00\x00\x00\x2a"
    assert registry.frame(0x01020304, b"body") == b"\x00\x01\x02\x03\x04body"
    assert registry.parse(registry.frame(2**31 - 1, b"\x02ab")) == (2**31 - 1, b"\x02ab")
    assert registry.schema_id_of(registry.frame(7, b"")) == 7


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00\x00\x01", b"\xc3\x01" + bytes(12), b"\x01\x00\x00\x00\x01body"],
    ids=["empty", "short", "single-object", "magic-1"],
)
def test_unframed_data_is_the_records_fault(data: bytes) -> None:
    with pytest.raises(RecordSchemaError) as caught:
        registry.parse(data)
    assert caught.value.kind == "not-registry-framed"


def test_client_config_strips_the_prefix_and_makes_numbers() -> None:
    config = registry.client_config(
        "https://sr:8081",
        {
            "schema.registry.basic.auth.user.info": "me:secret",
            "ssl.ca.location": "/ca.pem",
            "schema.registry.timeout": "10",
            "retries.wait.ms": "250.5",
        },
    )
    assert config == {
        "url": "https://sr:8081",
        "basic.auth.user.info": "me:secret",
        "ssl.ca.location": "/ca.pem",
        "timeout": 10,
        "retries.wait.ms": 250.5,
    }
    with pytest.raises(ValueError, match="not a number"):
        registry.client_config("http://sr", {"max.retries": "many"})
    with pytest.raises(ValueError, match="URL on its own"):
        registry.client_config("http://sr", {"schema.registry.url": "http://other"})


def test_make_client_passes_basic_auth_through_and_rejects_unknown_settings() -> None:
    client = registry.make_client("http://127.0.0.1:1", [("basic.auth.user.info", "me:secret")])
    assert client._rest_client.auth == ("me", "secret")
    with pytest.raises(ValueError, match="Unrecognized properties: colour"):
        registry.make_client("http://127.0.0.1:1", {"colour": "blue"})


# ---------------------------------------------------------------------- schemas


def test_writer_schemas_are_the_codecs_expanded_schemas() -> None:
    store = SchemaStore(DEFAULT_SCHEMA_DIR)
    assert set(SCHEMAS) == {name.rsplit(".", 1)[-1] for name in store.readers}
    for name, schema in SCHEMAS.items():
        assert not any(key.startswith("__") for key in schema), name
        json.loads(registry.schema_json(schema))  # plain JSON
        # Same Parsing Canonical Form, so the same fingerprint as single-object encoding.
        ours = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
        assert bytes.fromhex(ours) == store.reader(name).fingerprint, name
    # Self-contained: MessageHeader is inlined, not referenced by name.
    assert REFUND["fields"][0]["type"]["name"] == "ticketing.MessageHeader"


def test_processor_topics_are_outputs_and_changelog_and_on_request_inputs() -> None:
    topics = Topics("app", {"commands.RefundTicket": "refunds"})
    mapping = registry.processor_topic_schemas(topics, SCHEMAS)
    assert set(mapping) == {*topics.outputs, topics.changelog}
    assert {t: s["name"] for t, s in mapping.items()} == {
        "commands.BookShowTickets": "ticketing.BookShowTickets",
        "commands.BookFlight": "ticketing.BookFlight",
        "refunds": "ticketing.RefundTicket",
        "events.VipBundleFinalized_v1": "ticketing.VipBundleFinalized_v1",
        "app-vip-bundles-changelog": "ticketing.VipBundle",
    }
    with_inputs = registry.processor_topic_schemas(topics, SCHEMAS, inputs=True)
    assert len(with_inputs) == 11
    for name in EVENT_NAMES:
        assert with_inputs[f"events.{name}"]["name"] == f"ticketing.{name}"
    assert registry.subject_for("refunds") == "refunds-value"


# ----------------------------------------------------------- the real registry


@pytest.fixture(scope="module")
def client(schema_registry_url: str) -> SchemaRegistryClient:
    return registry.make_client(schema_registry_url)


@pytest.fixture
def topic() -> str:
    """A topic name no other test (or test run on a shared registry) uses."""
    return f"test-registry-{uuid.uuid4().hex[:12]}"


class CountingClient(SchemaRegistryClient):
    """The real client, counting the schema fetches that reach the registry."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.fetches = 0

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.fetches += 1
        return super().get_schema(schema_id, *args, **kwargs)


@pytest.fixture
def counting(schema_registry_url: str) -> Iterator[CountingClient]:
    client = CountingClient(registry.client_config(schema_registry_url))
    yield client
    client.close()


@pytest.mark.integration
def test_register_then_fetch_by_id(client: SchemaRegistryClient, topic: str) -> None:
    other = f"{topic}-changelog"
    ids = registry.register_schemas(client, {topic: REFUND, other: SCHEMAS["VipBundle"]})
    assert set(ids) == {topic, other} and ids[topic] != ids[other]
    # Idempotent, and found again without registering.
    assert registry.register_schemas(client, {topic: REFUND}) == {topic: ids[topic]}
    assert registry.lookup_schemas(client, {topic: REFUND, other: SCHEMAS["VipBundle"]}) == ids
    writer = registry.WriterSchemas(client).get(ids[topic])
    assert to_parsing_canonical_form(writer) == to_parsing_canonical_form(REFUND)


@pytest.mark.integration
def test_lookup_names_every_unregistered_subject(client: SchemaRegistryClient, topic: str) -> None:
    registry.register_schemas(client, {topic: REFUND})
    with pytest.raises(registry.SchemaNotRegistered) as caught:
        registry.lookup_schemas(
            client, {topic: REFUND, f"{topic}-a": REFUND, f"{topic}-b": SCHEMAS["Money"]}
        )
    assert caught.value.subjects == (f"{topic}-a-value", f"{topic}-b-value")
    assert "processor schemas register" in str(caught.value)


@pytest.mark.integration
def test_round_trip_and_interplay_with_confluent_serdes(
    client: SchemaRegistryClient, topic: str
) -> None:
    schema_id = registry.register_schemas(client, {topic: REFUND})[topic]
    parsed = fastavro.parse_schema(REFUND)
    writers = registry.WriterSchemas(client)
    record = refund_record()
    ours = registry.encode(registry.header(schema_id), parsed, record)
    assert registry.schema_id_of(ours) == schema_id
    assert registry.decode(ours, writers, parsed) == record
    assert registry.decode(ours, writers) == record

    # confluent-kafka's serdes read what we write, and we read what they write.
    ctx = SerializationContext(topic, MessageField.VALUE)
    theirs = AvroSerializer(client, registry.schema_json(REFUND))(record, ctx)
    assert theirs == ours
    assert AvroDeserializer(client)(ours, ctx) == record


@pytest.mark.integration
def test_backward_refuses_a_new_required_field(client: SchemaRegistryClient, topic: str) -> None:
    registry.register_schemas(client, {topic: REFUND})
    registry.set_compatibility(client, "BACKWARD", topic)
    assert registry.compatibility(client, topic) == "BACKWARD"
    v2 = with_field(REFUND, REQUIRED_NOTE)
    assert registry.is_compatible(client, topic, v2) is False
    with pytest.raises(registry.IncompatibleSchema) as caught:
        registry.register_schemas(client, {topic: v2})
    assert caught.value.subject == f"{topic}-value"
    # Under NONE the same schema goes in: the refusal was the rule's doing.
    registry.set_compatibility(client, "NONE", topic)
    assert registry.is_compatible(client, topic, v2) is True


@pytest.mark.integration
def test_backward_accepts_a_new_optional_field_and_both_versions_read(
    client: SchemaRegistryClient, topic: str
) -> None:
    registry.set_compatibility(client, "BACKWARD", topic)
    v1_id = registry.register_schemas(client, {topic: REFUND})[topic]
    v2 = with_field(REFUND, OPTIONAL_NOTE)
    assert registry.is_compatible(client, topic, v2) is True
    v2_id = registry.register_schemas(client, {topic: v2})[topic]
    assert v2_id != v1_id

    writers = registry.WriterSchemas(client)
    v1_reader, v2_reader = fastavro.parse_schema(REFUND), fastavro.parse_schema(v2)
    record = refund_record()
    new = registry.encode(registry.header(v2_id), v2_reader, {**record, "note": "late"})
    old = registry.encode(registry.header(v1_id), v1_reader, record)
    # A v2 writer read by a v1 reader (the processor before its upgrade) drops the field...
    assert registry.decode(new, writers, v1_reader) == record
    # ...and a v1 writer read by a v2 reader gets the default.
    assert registry.decode(old, writers, v2_reader) == {**record, "note": None}
    assert registry.decode(new, writers, v2_reader) == {**record, "note": "late"}
    # Equal writer and reader: fastavro is spared the resolution; different: it resolves.
    assert writers.resolve(v1_id, v1_reader) == (writers.get(v1_id), None)
    assert writers.resolve(v1_id, v2_reader) == (writers.get(v1_id), v2_reader)


@pytest.mark.integration
def test_an_unknown_id_is_the_records_fault_and_is_remembered(counting: CountingClient) -> None:
    now = [0.0]
    writers = registry.WriterSchemas(counting, retry_unknown_after_s=5.0, clock=lambda: now[0])
    unknown = 2**31 - 7
    data = registry.frame(unknown, b"\x00")
    with pytest.raises(RecordSchemaError) as caught:
        registry.decode(data, writers)
    assert caught.value.kind == "unknown-schema-id"
    assert f"no schema id {unknown}" in str(caught.value)
    assert counting.fetches == 1
    now[0] = 4.9  # still remembered: no request
    with pytest.raises(RecordSchemaError, match="unknown-schema-id"):
        writers.get(unknown)
    assert counting.fetches == 1
    now[0] = 5.0  # asked again
    with pytest.raises(RecordSchemaError, match="unknown-schema-id"):
        writers.get(unknown)
    assert counting.fetches == 2


@pytest.mark.integration
def test_remembered_unknown_ids_are_bounded(
    counting: CountingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_MAX_UNKNOWN", 3)
    now = [0.0]
    writers = registry.WriterSchemas(counting, retry_unknown_after_s=1.0, clock=lambda: now[0])
    for step, unknown in enumerate(range(2**31 - 20, 2**31 - 14)):
        now[0] = step * 0.5  # each id expires two steps after it was asked for
        with pytest.raises(RecordSchemaError):
            writers.get(unknown)
        assert len(writers._unknown) <= 3
    assert counting.fetches == 6


@pytest.mark.integration
def test_a_known_id_is_fetched_once(counting: CountingClient, topic: str) -> None:
    schema_id = registry.register_schemas(counting, {topic: REFUND})[topic]
    counting.fetches = 0
    writers = registry.WriterSchemas(counting)
    reader = fastavro.parse_schema(REFUND)
    data = registry.encode(registry.header(schema_id), reader, refund_record())
    for _ in range(50):
        registry.decode(data, writers, reader)
    assert counting.fetches == 1 and len(writers) == 1


@pytest.mark.integration
def test_records_that_do_not_match_their_schemas(client: SchemaRegistryClient, topic: str) -> None:
    ids = registry.register_schemas(client, {topic: REFUND, f"{topic}-m": SCHEMAS["Money"]})
    writers = registry.WriterSchemas(client)
    refund = fastavro.parse_schema(REFUND)
    good = registry.encode(registry.header(ids[topic]), refund, refund_record())

    def kind(data: bytes, reader: Any = None) -> str:
        with pytest.raises(RecordSchemaError) as caught:
            registry.decode(data, writers, reader)
        return caught.value.kind

    assert kind(good[:-3]) == "undecodable"  # truncated
    assert kind(good + b"\x00") == "undecodable"  # trailing bytes
    # A Money record where a RefundTicket is expected: the writer does not resolve.
    money = registry.encode(
        registry.header(ids[f"{topic}-m"]),
        fastavro.parse_schema(SCHEMAS["Money"]),
        {"amount": "1.00", "currency": "EUR"},
    )
    assert kind(money, refund) == "incompatible-schema"


@pytest.mark.integration
def test_a_schema_that_is_not_avro_is_the_records_fault(
    client: SchemaRegistryClient, topic: str
) -> None:
    json_schema = '{"type":"object","properties":{"a":{"type":"string"}}}'
    json_id = client.register_schema(registry.subject_for(topic), Schema(json_schema, "JSON"))
    with pytest.raises(RecordSchemaError) as caught:
        registry.WriterSchemas(client).get(json_id)
    assert caught.value.kind == "unsupported-schema" and "JSON" in str(caught.value)


@pytest.mark.integration
def test_writer_schemas_with_references_resolve(client: SchemaRegistryClient, topic: str) -> None:
    money_subject = f"{topic}-money"
    client.register_schema(money_subject, Schema(registry.schema_json(SCHEMAS["Money"]), "AVRO"))
    price = {
        "type": "record",
        "name": "Price",
        "namespace": "shop",
        "fields": [{"name": "price", "type": "ticketing.Money"}],
    }
    ref = SchemaReference("ticketing.Money", money_subject, 1)
    price_id = client.register_schema(
        registry.subject_for(topic), Schema(json.dumps(price), "AVRO", [ref])
    )
    writers = registry.WriterSchemas(client)
    value = {"price": {"amount": "12.50", "currency": "EUR"}}
    data = registry.encode(registry.header(price_id), writers.get(price_id), value)
    assert registry.decode(data, writers) == value


@pytest.mark.integration
def test_an_unreachable_registry_is_not_the_records_fault() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = registry.make_client(f"http://127.0.0.1:{port}", {"max.retries": "0"})
    with pytest.raises(RegistryUnavailable, match="fetching schema id 1"):
        registry.WriterSchemas(client).get(1)
    with pytest.raises(RegistryUnavailable, match="registering"):
        registry.register_schemas(client, {"t": REFUND})


# --------------------------------------------------------------------------- CLI


@pytest.mark.integration
def test_cli_registers_outputs_changelog_and_inputs(
    schema_registry_url: str, client: SchemaRegistryClient, capsys: pytest.CaptureFixture[str]
) -> None:
    app = f"test-cli-{uuid.uuid4().hex[:8]}"
    args = ["schemas", "register", "--schema-registry", schema_registry_url]
    args += ["--application-id", app, "--topic", f"commands.RefundTicket={app}-refunds"]
    assert cli_main([*args, "--compatibility", "BACKWARD"]) == 0
    first = capsys.readouterr().out.splitlines()
    subjects = [line.split()[-1] for line in first]
    assert subjects == [
        "commands.BookShowTickets-value",
        "commands.BookFlight-value",
        f"{app}-refunds-value",
        "events.VipBundleFinalized_v1-value",
        f"{app}-vip-bundles-changelog-value",
    ]
    assert registry.compatibility(client, f"{app}-refunds") == "BACKWARD"
    assert cli_main(args) == 0  # idempotent: the same ids
    assert capsys.readouterr().out.splitlines() == first
    assert cli_main([*args, "--inputs"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 11


@pytest.mark.integration
def test_cli_check_and_register_refuse_an_incompatible_schema(
    schema_registry_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = f"test-cli-{uuid.uuid4().hex[:8]}"
    refunds = f"{app}-refunds"
    args = ["schemas", "register", "--schema-registry", schema_registry_url]
    args += ["--application-id", app, "--topic", f"commands.RefundTicket={refunds}"]
    assert cli_main([*args, "--compatibility", "BACKWARD"]) == 0
    capsys.readouterr()
    changed = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_DIR, changed)
    path = changed / "ticketing.RefundTicket.avsc"
    original = json.loads(path.read_text())
    path.write_text(json.dumps(with_field(original, REQUIRED_NOTE)))

    assert cli_main([*args, "--check", "--schema-dir", str(changed)]) == 2
    verdicts = dict(line.split()[::-1] for line in capsys.readouterr().out.splitlines())
    assert verdicts[f"{refunds}-value"] == "REFUSED"
    assert verdicts["commands.BookFlight-value"] == "compatible"
    assert cli_main([*args, "--schema-dir", str(changed)]) == 2


def test_cli_without_a_registry_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    assert cli_main(["schemas", "register"]) == 2
    assert "--schema-registry URL or set SCHEMA_REGISTRY_URL" in caplog.text
