"""The Schema Registry side of registry mode: client, subjects, registration, compatibility, the
Confluent wire format and a writer-schema cache for the hot path.

Registry mode writes and reads the Confluent wire format: a magic byte 0, the 4-byte big-endian
schema id, then the Avro body. Subjects follow TopicNameStrategy: a topic's values are under
``<topic>-value``. The schemas we register are the expanded, self-contained writer schemas of
``schemas/`` (named types inlined at their first use), exactly what the codec writes with.

The hot path asks the registry nothing per record: ``WriterSchemas`` fetches and parses each
writer schema once per id, and ``decode`` reads the body with ``schemaless_reader(writer,
reader)``. (confluent-kafka's ``AvroDeserializer`` costs about twice as much per record, its
``AvroSerializer`` about a third more; ``python -m processor.bench.serde`` measures them.)

Errors say what to do with the record: ``RecordSchemaError`` is the record's fault (dead-letter
it); ``RegistryUnavailable`` is not (retry, never dead-letter).
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import _resolve_named_schema
from confluent_kafka.schema_registry.common.avro import parse_schema_with_repo
from fastavro.read import SchemaResolutionError
from fastavro.schema import load_schema

from processor.topology import EVENT_NAMES, Topics

__all__ = [
    "COMPATIBILITY_LEVELS",
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "OPTION_PREFIX",
    "IncompatibleSchema",
    "RecordSchemaError",
    "RegistryUnavailable",
    "SchemaNotRegistered",
    "WriterSchemas",
    "client_config",
    "compatibility",
    "decode",
    "encode",
    "frame",
    "header",
    "is_compatible",
    "load_writer_schemas",
    "lookup_schemas",
    "make_client",
    "parse",
    "processor_topic_schemas",
    "register_schemas",
    "schema_id_of",
    "schema_json",
    "set_compatibility",
    "subject_for",
]

OPTION_PREFIX = "schema.registry."
SUBJECT_SUFFIX = "-value"
MAGIC_BYTE = 0
_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size  # 5
COMPATIBILITY_LEVELS = (
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
    "FULL", "FULL_TRANSITIVE",
)  # fmt: skip
# SchemaRegistryClient insists on numbers for these; options from a command line are strings.
_NUMERIC_OPTIONS = frozenset(
    {"timeout", "cache.capacity", "cache.latest.ttl.sec", "max.retries", "retries.wait.ms",
     "retries.max.wait.ms"}
)  # fmt: skip
# What Topics.outputs names, as (kind, record name): a topic's name may be overridden.
_OUTPUTS = (
    ("command", "BookShowTickets"),
    ("command", "BookFlight"),
    ("command", "RefundTicket"),
    ("event", "VipBundleFinalized_v1"),
)
_MAX_UNKNOWN = 1024  # unknown ids remembered before the expired ones are dropped
_SUBJECT_NOT_FOUND = 40401
_VERSION_NOT_FOUND = 40402


class RecordSchemaError(ValueError):
    """A record that registry mode cannot read: the record's fault, so it goes to the DLQ.

    `kind`: not-registry-framed, unknown-schema-id, unsupported-schema (not Avro, or not
    parsable), incompatible-schema (the writer schema does not resolve to the reader's) or
    undecodable (the body does not match its writer schema).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class RegistryUnavailable(RuntimeError):
    """The registry did not answer, or refused us (5xx, auth, network): retry, never DLQ."""


class IncompatibleSchema(ValueError):
    """The registry refused a schema under its subject's compatibility rule."""

    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(f"{subject}: {detail}")
        self.subject = subject


class SchemaNotRegistered(LookupError):
    """Schemas this processor writes are not registered, and it may not register them."""

    def __init__(self, subjects: Iterable[str]) -> None:
        self.subjects = tuple(subjects)
        super().__init__(
            f"not registered: {', '.join(self.subjects)}; register them with "
            "`processor schemas register`, or let the processor register them"
        )


# ------------------------------------------------------------------------ client


def client_config(url: str, options: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> dict:
    """SchemaRegistryClient settings from a URL and ``schema.registry.*`` options.

    Keys may carry the ``schema.registry.`` prefix (as in Java clients' configs) or not:
    ``basic.auth.user.info``, ``ssl.ca.location``, ``ssl.certificate.location``,
    ``ssl.key.location``, ``ssl.key.password``, ``bearer.auth.*``, ``timeout``,
    ``max.retries``, ... are passed through; the client rejects unknown ones.
    """
    config: dict[str, Any] = {"url": url}
    pairs = options.items() if isinstance(options, Mapping) else options
    for key, value in pairs:
        name = key.removeprefix(OPTION_PREFIX)
        if name == "url":
            raise ValueError(f"give the registry URL on its own, not as option {key!r}")
        config[name] = _number(name, value) if name in _NUMERIC_OPTIONS else value
    return config


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, int | float):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"schema registry option {name}={value!r} is not a number") from None
    return int(number) if number.is_integer() else number


def make_client(
    url: str, options: Mapping[str, str] | Iterable[tuple[str, str]] = ()
) -> SchemaRegistryClient:
    """A client for the registry at `url` (for Apicurio: its ``/apis/ccompat/v7`` base)."""
    # httpx logs every request at INFO: noise in a processor's log. Failures still surface.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    try:
        return SchemaRegistryClient(client_config(url, options))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"schema registry settings: {exc}") from exc


def _call(what: str, request: Callable[[], Any]) -> Any:
    """Run one registry request; anything but a SchemaRegistryError means it did not answer."""
    try:
        return request()
    except SchemaRegistryError:
        raise
    except Exception as exc:  # httpx transport errors, TLS and auth-provider errors
        raise RegistryUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------- schemas


def subject_for(topic: str) -> str:
    """TopicNameStrategy for record values."""
    return f"{topic}{SUBJECT_SUFFIX}"


def load_writer_schemas(directory: Path) -> dict[str, dict[str, Any]]:
    """Record name (without namespace) -> expanded, self-contained schema of each
    ``<namespace>.<Name>.avsc`` in `directory` (retired versions in history/ are not included).

    Expanded like the codec's schemas (fastavro's load_schema inlines named types at first
    use), minus fastavro's private markers, so the JSON is a plain Avro schema.
    """
    result: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.avsc")):
        parsed = load_schema(str(path))
        schema = {k: v for k, v in parsed.items() if not k.startswith("__")}
        result[schema["name"].rsplit(".", 1)[-1]] = schema
    if not result:
        raise FileNotFoundError(f"no *.avsc schema in {directory}")
    return result


def processor_topic_schemas(
    topics: Topics, schemas: Mapping[str, Mapping[str, Any]], *, inputs: bool = False
) -> dict[str, Mapping[str, Any]]:
    """Topic -> writer schema of every topic the processor writes Avro to: the four outputs
    and the changelog (value VipBundle); with `inputs`, the six input topics too (what
    producers of events would register). Repartition topics carry the inputs' bytes as they
    are, and the DLQ any bytes, so they have no subject of their own."""
    result: dict[str, Mapping[str, Any]] = {}
    for kind, name in _OUTPUTS:
        result[topics.output_named(kind, name)] = schemas[name]
    result[topics.changelog] = schemas["VipBundle"]
    if inputs:
        for name in EVENT_NAMES:
            result[topics.input(name)] = schemas[name]
    return result


def schema_json(schema: Mapping[str, Any] | str) -> str:
    """The schema as compact JSON text (a str is taken as JSON already)."""
    if isinstance(schema, str):
        return schema
    return json.dumps(schema, separators=(",", ":"))


def _schema(schema: Mapping[str, Any] | str) -> Schema:
    return Schema(schema_json(schema), "AVRO")


def register_schemas(
    client: SchemaRegistryClient,
    topics_to_schema: Mapping[str, Mapping[str, Any] | str],
    *,
    normalize: bool = False,
) -> dict[str, int]:
    """Register each topic's writer schema under ``<topic>-value``; topic -> schema id.

    Idempotent: a schema already registered under its subject keeps its id. Raises
    IncompatibleSchema when the subject's compatibility rule refuses one (the ones before
    it stay registered), RegistryUnavailable when the registry does not answer.
    """
    ids: dict[str, int] = {}
    for topic, schema in topics_to_schema.items():
        subject = subject_for(topic)
        try:
            ids[topic] = _call(
                f"registering {subject}",
                lambda s=subject, v=schema: client.register_schema(  # type: ignore[misc]
                    s, _schema(v), normalize_schemas=normalize
                ),
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise IncompatibleSchema(subject, exc.error_message) from exc
            raise _unavailable(f"registering {subject}", exc) from exc
    return ids


def lookup_schemas(
    client: SchemaRegistryClient, topics_to_schema: Mapping[str, Mapping[str, Any] | str]
) -> dict[str, int]:
    """The ids of schemas already registered under their topics' subjects; registers nothing.

    For registries where the processor may only read: raises SchemaNotRegistered naming
    every subject that lacks its schema.
    """
    ids: dict[str, int] = {}
    missing: list[str] = []
    for topic, schema in topics_to_schema.items():
        subject = subject_for(topic)
        try:
            found = _call(
                f"looking up {subject}",
                lambda s=subject, v=schema: client.lookup_schema(s, _schema(v)),  # type: ignore[misc]
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                missing.append(subject)
                continue
            raise _unavailable(f"looking up {subject}", exc) from exc
        ids[topic] = found.schema_id
    if missing:
        raise SchemaNotRegistered(missing)
    return ids


def set_compatibility(client: SchemaRegistryClient, level: str, topic: str | None = None) -> None:
    """Set the compatibility rule of `topic`'s subject, or the global one."""
    if level not in COMPATIBILITY_LEVELS:
        raise ValueError(f"{level!r} is not one of {', '.join(COMPATIBILITY_LEVELS)}")
    subject = subject_for(topic) if topic is not None else None
    try:
        _call("setting compatibility", lambda: client.set_compatibility(subject, level))
    except SchemaRegistryError as exc:
        raise _unavailable("setting compatibility", exc) from exc


def compatibility(client: SchemaRegistryClient, topic: str | None = None) -> str | None:
    """The compatibility rule set on `topic`'s subject, or the global one without a topic.

    None when the subject has no rule of its own (Confluent's registry answers 404 then, and
    the global rule applies). Apicurio answers NONE instead, although its global rule still
    applies: set subjects' rules explicitly where the answer matters.
    """
    subject = subject_for(topic) if topic is not None else None
    try:
        return str(_call("reading compatibility", lambda: client.get_compatibility(subject)))
    except SchemaRegistryError as exc:
        if subject is not None and exc.http_status_code == 404:
            return None
        raise _unavailable("reading compatibility", exc) from exc


def is_compatible(
    client: SchemaRegistryClient, topic: str, schema: Mapping[str, Any] | str
) -> bool:
    """Whether `schema` may be registered next under `topic`'s subject (True for a subject
    that has no version yet)."""
    subject = subject_for(topic)
    try:
        return bool(
            _call(
                f"testing compatibility with {subject}",
                lambda: client.test_compatibility(subject, _schema(schema)),
            )
        )
    except SchemaRegistryError as exc:
        if exc.error_code in (_SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND):
            return True
        raise _unavailable(f"testing compatibility with {subject}", exc) from exc


def _unavailable(what: str, exc: SchemaRegistryError) -> RegistryUnavailable:
    return RegistryUnavailable(f"{what}: {exc}")


# ------------------------------------------------------------------ wire format


def header(schema_id: int) -> bytes:
    """The 5 bytes before an Avro body of writer schema `schema_id` (cache it per schema)."""
    return _HEADER.pack(MAGIC_BYTE, schema_id)


def frame(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


def schema_id_of(data: bytes) -> int:
    """The writer schema id of a framed record; its body starts at HEADER_SIZE."""
    if len(data) < HEADER_SIZE or data[0] != MAGIC_BYTE:
        what = f"first byte {data[0]}" if data else "empty"
        raise RecordSchemaError(
            "not-registry-framed", f"{len(data)} bytes, {what}: no magic byte 0 + schema id"
        )
    return int(_HEADER.unpack_from(data)[1])


def parse(data: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body) of a framed record. The body is a copy: on the hot path prefer
    schema_id_of() and reading `data` from HEADER_SIZE, as decode() does."""
    return schema_id_of(data), data[HEADER_SIZE:]


class WriterSchemas:
    """Parsed writer schemas by id, fetched from the registry once each.

    An id the registry does not know raises RecordSchemaError("unknown-schema-id") and is
    remembered for `retry_unknown_after_s`, so a stream of such records costs one request
    per interval, not one each. Schemas with references are resolved as AvroDeserializer does.
    Not thread-safe: one per consuming thread.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        *,
        retry_unknown_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}
        # (schema id, id(reader)) -> (reader, writer, reader to pass to fastavro: None when
        # the writer equals it; fastavro compares the two dicts on every call otherwise).
        self._readers: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._unknown: dict[int, tuple[float, str]] = {}
        self._retry_unknown_after_s = retry_unknown_after_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._parsed)

    def get(self, schema_id: int) -> Any:
        """The parsed (fastavro) writer schema of `schema_id`."""
        try:
            return self._parsed[schema_id]
        except KeyError:
            return self._load(schema_id)

    def resolve(self, schema_id: int, reader: Any | None) -> tuple[Any, Any | None]:
        """(writer, reader) to pass to fastavro's schemaless_reader for `schema_id`; the
        reader is None where the writer schema equals it (nothing to resolve)."""
        cached = self._readers.get((schema_id, id(reader)))
        if cached is not None and cached[0] is reader:
            return cached[1], cached[2]
        writer = self.get(schema_id)
        effective = None if reader is None or writer == reader else reader
        # The entry holds `reader` itself, so its id() cannot be reused while it is cached.
        self._readers[(schema_id, id(reader))] = (reader, writer, effective)
        return writer, effective

    def _remember_unknown(self, schema_id: int, detail: str) -> None:
        now = self._clock()
        if len(self._unknown) >= _MAX_UNKNOWN:  # garbage ids: forget the expired ones
            self._unknown = {k: v for k, v in self._unknown.items() if v[0] > now}
        self._unknown[schema_id] = (now + self._retry_unknown_after_s, detail)

    def _load(self, schema_id: int) -> Any:
        known_unknown = self._unknown.get(schema_id)
        if known_unknown is not None:
            until, detail = known_unknown
            if self._clock() < until:
                raise RecordSchemaError("unknown-schema-id", detail)
            del self._unknown[schema_id]
        try:
            schema = _call(
                f"fetching schema id {schema_id}", lambda: self._client.get_schema(schema_id)
            )
            if (schema.schema_type or "AVRO") != "AVRO":
                raise RecordSchemaError(
                    "unsupported-schema", f"schema id {schema_id} is {schema.schema_type}, not AVRO"
                )
            named = _call(
                f"resolving references of schema id {schema_id}",
                lambda: _resolve_named_schema(schema, self._client),
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                detail = f"the registry has no schema id {schema_id} ({exc.error_message})"
                self._remember_unknown(schema_id, detail)
                raise RecordSchemaError("unknown-schema-id", detail) from exc
            raise _unavailable(f"fetching schema id {schema_id}", exc) from exc
        try:
            text = (schema.schema_str or "").strip()
            if text[:1] not in ("{", "["):  # a bare primitive such as "string"
                text = f'{{"type":{text}}}'
            parsed = parse_schema_with_repo(text, named_schemas=named)
        except Exception as exc:  # fastavro raises many types for a bad schema
            raise RecordSchemaError(
                "unsupported-schema", f"schema id {schema_id} does not parse: {exc}"
            ) from exc
        self._parsed[schema_id] = parsed
        return parsed


def encode(prefix: bytes, schema: Any, record: Any) -> bytes:
    """`record` written with the parsed writer `schema`, after `prefix` = header(its id)."""
    buf = io.BytesIO()
    buf.write(prefix)
    fastavro.schemaless_writer(buf, schema, record, strict=True, disable_tuple_notation=True)
    return buf.getvalue()


def decode(data: bytes, writers: WriterSchemas, reader: Any | None = None) -> Any:
    """The record in framed `data`, read with its writer schema and resolved to `reader`
    (a parsed schema; None reads it as written). Raises RecordSchemaError (the record's
    fault) or RegistryUnavailable (retry)."""
    schema_id = schema_id_of(data)
    writer, reader = writers.resolve(schema_id, reader)
    return read_body(data, schema_id, writer, reader)


def read_body(data: bytes, schema_id: int, writer: Any, reader: Any | None) -> Any:
    """The Avro body of framed `data` (schema `schema_id`), read with `writer` and resolved
    to `reader` (None: as written). Raises RecordSchemaError."""
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        record = fastavro.schemaless_reader(body, writer, reader)
    except SchemaResolutionError as exc:
        raise RecordSchemaError(
            "incompatible-schema", f"writer schema id {schema_id} does not resolve: {exc}"
        ) from exc
    except Exception as exc:  # truncated, bad UTF-8, bad UUID, ...
        raise RecordSchemaError("undecodable", f"schema id {schema_id}: {exc!r}") from exc
    if body.tell() != len(data):
        raise RecordSchemaError(
            "undecodable", f"schema id {schema_id}: {len(data) - body.tell()} trailing bytes"
        )
    return record
