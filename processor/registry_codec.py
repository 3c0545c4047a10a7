"""Registry mode: the codec of the Confluent wire format (magic byte 0, 4-byte schema
id, Avro body), for systems whose other services read and write through a Schema
Registry. It has the single-object `Codec`'s interface and the same domain values.

Reading: the writer schema comes from the registry by id (once per id, cached),
and is resolved to our reader schema, so compatible evolution works. An id the
registry does not know, or a writer schema that does not resolve to ours, is the
record's fault: `CodecError`, so the record goes to the DLQ. A registry that does
not answer is not: `TryLater`, and the engine tries again.

Writing: each type is written under the subject of the one topic it goes to
(TopicNameStrategy), with the id registered at start (or looked up, where the
processor may not register: `processor schemas register` does it beforehand).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from processor import registry
from processor.codec import (
    DEFAULT_SCHEMA_DIR,
    CodecError,
    SchemaStore,
    from_record,
    ids_as_strings,
    write_framed,
)
from processor.domain.messages import (
    EVENT_TYPES,
    MESSAGE_TYPES,
    BookFlight,
    BookShowTickets,
    RefundTicket,
    VipBundle,
    VipBundleFinalizedV1,
)
from processor.runtime.handler import TryLater
from processor.topology import Topics

HEADER = registry.HEADER_SIZE


def processor_topics(topics: Topics) -> dict[type, str]:
    """What the processor writes, by type: the four outputs and the changelog."""
    return {
        BookShowTickets: topics.output_named("command", "BookShowTickets"),
        BookFlight: topics.output_named("command", "BookFlight"),
        RefundTicket: topics.output_named("command", "RefundTicket"),
        VipBundleFinalizedV1: topics.output_named("event", "VipBundleFinalized_v1"),
        VipBundle: topics.changelog,
    }


def input_topics(topics: Topics) -> dict[type, str]:
    """What the ticket and flight services write, by type: the six events."""
    return {cls: topics.input(cls.schema_name) for cls in EVENT_TYPES}


class RegistryCodec:
    def __init__(
        self,
        client: SchemaRegistryClient,
        writes: Mapping[type, str],
        *,
        register: bool = True,
        store: SchemaStore | None = None,
    ) -> None:
        """`writes`: the types this codec encodes, and the topic each goes to."""
        self.store = store or SchemaStore()
        self._client = client
        readers = {cls: self.store.reader(name) for name, cls in MESSAGE_TYPES.items()}
        self._type_of_name = {s.full_name: cls for cls, s in readers.items()}
        self._reader_of_type = {cls: ids_as_strings(s.schema) for cls, s in readers.items()}
        schemas = registry.load_writer_schemas(self.store.directory)
        by_topic = {topic: schemas[cls.schema_name] for cls, topic in writes.items()}
        ids = (
            registry.register_schemas(client, by_topic)
            if register
            else registry.lookup_schemas(client, by_topic)
        )
        self.schema_ids = {cls: ids[topic] for cls, topic in writes.items()}
        self._encoders = {
            cls: (registry.header(ids[topic]), self._reader_of_type[cls])
            for cls, topic in writes.items()
        }
        self._writers = registry.WriterSchemas(client)
        # schema id -> (type, writer schema, reader schema or None when they are one)
        self._decoders: dict[int, tuple[type, Any, Any]] = {}

    def encode(self, value: object) -> bytes:
        encoder = self._encoders.get(type(value))
        if encoder is None:
            raise CodecError("unexpected-type", f"{type(value).__name__} is not written here")
        return write_framed(*encoder, value)

    def decode(self, data: bytes, expected: type | None = None) -> Any:
        if len(data) < HEADER or data[0] != registry.MAGIC_BYTE:
            raise CodecError(
                "not-registry-framed", f"{len(data)} bytes without the magic byte 0 and an id"
            )
        schema_id = int.from_bytes(data[1:HEADER], "big")
        decoder = self._decoders.get(schema_id) or self._decoder(schema_id)
        cls, writer, reader = decoder
        if expected is not None and cls is not expected:
            raise CodecError(
                "unexpected-type",
                f"schema id {schema_id} is {writer['name']}, not {expected.__name__}",
            )
        try:
            record = registry.read_body(data, schema_id, writer, reader)
        except registry.RecordSchemaError as exc:
            raise CodecError(exc.kind, exc.detail) from exc
        return from_record(cls, record, writer["name"])

    def _decoder(self, schema_id: int) -> tuple[type, Any, Any]:
        try:
            fetched = self._writers.get(schema_id)
        except registry.RecordSchemaError as exc:
            raise CodecError(exc.kind, exc.detail) from exc
        except registry.RegistryUnavailable as exc:
            raise TryLater(str(exc)) from exc
        name = fetched["name"] if isinstance(fetched, dict) else str(fetched)
        cls = self._type_of_name.get(name)
        if cls is None:
            raise CodecError("unexpected-type", f"schema id {schema_id} is {name}, not a message")
        writer = ids_as_strings(fetched)
        reader = self._reader_of_type[cls]
        decoder = (cls, writer, None if writer == reader else reader)
        self._decoders[schema_id] = decoder
        return decoder


def make_client(url: str, options: Mapping[str, str] | None = None) -> SchemaRegistryClient:
    return registry.make_client(url, dict(options or {}))


__all__ = ["DEFAULT_SCHEMA_DIR", "RegistryCodec", "input_topics", "make_client", "processor_topics"]
