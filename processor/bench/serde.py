"""Per-record cost of the registry-mode wire format: confluent-kafka's AvroSerializer and
AvroDeserializer against the thin layer of processor.registry, with plain fastavro (what
single-object encoding costs, minus its 10-byte header) as the floor.

    python -m processor.bench.serde [--records 20000] [--repeat 3]

Uses SCHEMA_REGISTRY_URL, else starts the local registry (and stops it afterwards). Each
figure is the best of --repeat runs over the same record, a VipBundleInitialized_v1.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fastavro
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from processor import registry
from processor.codec import DEFAULT_SCHEMA_DIR
from processor.localregistry import ensure_registry

RECORD_TYPE = "VipBundleInitialized_v1"


def sample_record() -> dict[str, Any]:
    return {
        "header": {
            "id": str(uuid.uuid4()),
            "published_at": datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
            "idempotency_key": str(uuid.uuid4()),
        },
        "vip_bundle_id": str(uuid.uuid4()),
        "booking_id": str(uuid.uuid4()),
        "customer_email": "someone@example.com",
        "number_of_tickets": 3,
        "show_id": str(uuid.uuid4()),
        "passengers": ["Ada Lovelace", "Alan Turing", "Grace Hopper"],
        "inbound_flight_id": str(uuid.uuid4()),
    }


def best_us(
    cases: list[tuple[str, Callable[[], object]]], records: int, repeat: int
) -> list[tuple[str, float]]:
    """Best mean microseconds per call of each case over `repeat` rounds of `records` calls.
    Rounds interleave the cases, so a busy neighbour slows all of them alike."""
    best = dict.fromkeys((name for name, _ in cases), float("inf"))
    for _ in range(repeat):
        for name, fn in cases:
            started = time.perf_counter()
            for _ in range(records):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / records * 1e6)
    return list(best.items())


def measure(url: str, records: int, repeat: int) -> list[tuple[str, float]]:
    client = registry.make_client(url)
    schema = registry.load_writer_schemas(DEFAULT_SCHEMA_DIR)[RECORD_TYPE]
    topic = f"bench-serde-{uuid.uuid4().hex[:8]}"
    schema_id = registry.register_schemas(client, {topic: schema})[topic]
    parsed = fastavro.parse_schema(schema)
    record = sample_record()
    ctx = SerializationContext(topic, MessageField.VALUE)

    serializer = AvroSerializer(client, registry.schema_json(schema))
    deserializer = AvroDeserializer(client, registry.schema_json(schema))
    framed = serializer(record, ctx)
    assert framed is not None and registry.schema_id_of(framed) == schema_id

    head = registry.header(schema_id)
    writers = registry.WriterSchemas(client)
    # A reader parsed apart from the writer: equal, but not the same object (as in a codec).
    reader = fastavro.parse_schema(schema)
    assert registry.decode(framed, writers, reader) == deserializer(framed, ctx)

    def plain_write() -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    body = plain_write()

    def plain_read() -> object:
        return fastavro.schemaless_reader(io.BytesIO(body), parsed, None)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("encode: fastavro schemaless_writer only", plain_write),
        ("encode: registry.encode (thin)", lambda: registry.encode(head, parsed, record)),
        ("encode: AvroSerializer(record, ctx)", lambda: serializer(record, ctx)),
        ("decode: fastavro schemaless_reader only", plain_read),
        ("decode: registry.decode (thin, reader given)",
         lambda: registry.decode(framed, writers, reader)),
        ("decode: registry.decode (thin, no reader)", lambda: registry.decode(framed, writers)),
        ("decode: AvroDeserializer(data, ctx)", lambda: deserializer(framed, ctx)),
        ("decode: AvroDeserializer(data) without ctx", lambda: deserializer(framed)),
    ]  # fmt: skip
    return best_us(cases, records, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processor.bench.serde",
        description="Per-record cost of Confluent-framed Avro: confluent-kafka's serdes vs "
        "processor.registry's thin layer. Needs a registry: SCHEMA_REGISTRY_URL, else the "
        "local one is started for the run.",
    )
    parser.add_argument("--records", type=int, default=20_000, help="calls per run (%(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best counts (%(default)s)")
    args = parser.parse_args(argv)
    url, stop = ensure_registry()
    try:
        rows = measure(url, args.records, args.repeat)
    finally:
        stop()
    width = max(len(name) for name, _ in rows)
    print(f"{'per record':<{width}}  {'µs':>7}  {'records/s':>10}")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:7.1f}  {1e6 / micros:10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
