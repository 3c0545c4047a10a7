"""Avro single-object encoding of the domain's messages (fastavro).

Wire format: 0xC3 0x01, the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's Parsing Canonical Form, then the Avro body. The fingerprint is
taken over the *expanded* schema (named types such as MessageHeader inlined at
their first use, as Java's SchemaNormalization does), which is what fastavro's
`load_schema` yields when every named type lives in `<full name>.avsc`.

`schemas/*.avsc` are the current (reader) schemas; `schemas/history/*.avsc`
keep retired writer schemas, self-contained, so that old records still decode
and resolve to the current reader schema.
"""

from __future__ import annotations

import importlib.resources
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import fastavro
import msgspec
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from processor.domain.messages import MESSAGE_TYPES

MAGIC = b"\xc3\x01"
_HEADER_LEN = len(MAGIC) + 8


def _default_schema_dir() -> Path:
    """VIP_SCHEMA_DIR if set; else `schemas/`, installed as the package `processor_schemas`
    (the repository's own directory in an editable install, a copy in a wheel's)."""
    override = os.environ.get("VIP_SCHEMA_DIR")
    if override:
        return Path(override)
    # A regular package on disk: files() is its directory (fastavro needs real paths).
    return Path(str(importlib.resources.files("processor_schemas")))


DEFAULT_SCHEMA_DIR = _default_schema_dir()


def write_framed(header: bytes, schema: Any, value: object) -> bytes:
    """`header` followed by `value`'s Avro body in the parsed `schema`."""
    buf = io.BytesIO()
    buf.write(header)
    try:
        fastavro.schemaless_writer(buf, schema, to_record(value))
    except Exception as exc:  # fastavro raises many types for a bad value
        raise CodecError("schema-violation", f"{schema['name']}: {exc}") from exc
    return buf.getvalue()


class CodecError(ValueError):
    """Bytes that are not a message of ours, or a message that breaks its schema.

    `kind` says which: not-single-object, unknown-fingerprint, undecodable,
    unexpected-type, invalid (decodes but breaks a contract rule) or
    schema-violation (on encode).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class WriterSchema:
    full_name: str
    schema: Any  # a fastavro parsed schema
    fingerprint: bytes
    path: Path


def _load(path: Path) -> WriterSchema:
    schema = load_schema(str(path))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    return WriterSchema(schema["name"], schema, fp, path)


class SchemaStore:
    """Current reader schemas by full name, every known writer schema by fingerprint."""

    def __init__(self, directory: Path = DEFAULT_SCHEMA_DIR) -> None:
        if not directory.is_dir():
            raise FileNotFoundError(f"schema directory {directory} does not exist")
        self.directory = directory
        current = [_load(p) for p in sorted(directory.glob("*.avsc"))]
        retired = [_load(p) for p in sorted((directory / "history").glob("*.avsc"))]
        self.readers: dict[str, WriterSchema] = {s.full_name: s for s in current}
        self.writers: dict[bytes, WriterSchema] = {}
        for s in (*current, *retired):
            other = self.writers.setdefault(s.fingerprint, s)
            if other.full_name != s.full_name:
                raise ValueError(f"fingerprint clash between {other.path} and {s.path}")

    def reader(self, short_name: str) -> WriterSchema:
        matches = [s for name, s in self.readers.items() if name.rsplit(".", 1)[-1] == short_name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} reader schemas named {short_name}")
        return matches[0]


class Codec:
    """Encodes domain values to single-object Avro and back.

    `types` maps Avro record names (without namespace) to msgspec Structs whose
    fields match the schema's. Records are read and written with the uuid logical
    type left out (ids stay strings: no uuid.UUID built and printed per field),
    and `msgspec.convert` turns a decoded record into its Struct in one call,
    checking ids against the Structs' `Uuid` pattern and running their
    `__post_init__` rules. Timestamps stay datetimes.
    """

    def __init__(
        self, store: SchemaStore | None = None, types: Mapping[str, type] = MESSAGE_TYPES
    ) -> None:
        self.store = store or SchemaStore()
        self._reader_of_type = {cls: self.store.reader(name) for name, cls in types.items()}
        self._type_of_name = {self._reader_of_type[cls].full_name: cls for cls in types.values()}
        self._encoders = {
            cls: (MAGIC + s.fingerprint, ids_as_strings(s.schema))
            for cls, s in self._reader_of_type.items()
        }
        # fingerprint -> (type, writer schema, reader schema or None when they are one)
        self._decoders: dict[bytes, tuple[type, Any, Any]] = {}
        for fp, writer in self.store.writers.items():
            cls = self._type_of_name.get(writer.full_name)
            if cls is None:
                continue  # a schema of ours that is not a message (MessageHeader...)
            reader = self._reader_of_type[cls]
            resolve = None if reader.fingerprint == fp else ids_as_strings(reader.schema)
            self._decoders[fp] = (cls, ids_as_strings(writer.schema), resolve)

    def encode(self, value: object) -> bytes:
        encoder = self._encoders.get(type(value))
        if encoder is None:
            raise CodecError("unexpected-type", f"no schema for {type(value).__name__}")
        return write_framed(*encoder, value)

    def writer_schema(self, data: bytes) -> WriterSchema:
        """The writer schema of single-object encoded `data` (the body is not read)."""
        if len(data) < _HEADER_LEN or data[:2] != MAGIC:
            raise CodecError("not-single-object", f"{len(data)} bytes without the C3 01 marker")
        fp = data[2:_HEADER_LEN]
        writer = self.store.writers.get(fp)
        if writer is None:
            raise CodecError("unknown-fingerprint", f"no schema has fingerprint {fp.hex()}")
        return writer

    def decode(self, data: bytes, expected: type | None = None) -> Any:
        """The domain value in `data`; `expected` rejects any other record type."""
        decoder = self._decoders.get(data[2:_HEADER_LEN]) if data[:2] == MAGIC else None
        if decoder is None:
            writer = self.writer_schema(data)  # raises what is wrong
            raise CodecError("unexpected-type", f"got {writer.full_name}, expected a message")
        cls, writer, reader = decoder
        if expected is not None and cls is not expected:
            wanted = expected.__name__
            raise CodecError("unexpected-type", f"got {writer['name']}, expected {wanted}")
        body = io.BytesIO(data)
        body.seek(_HEADER_LEN)
        try:
            record = fastavro.schemaless_reader(body, writer, reader)
        except Exception as exc:  # truncated, bad UTF-8, unresolvable...
            raise CodecError("undecodable", f"{writer['name']}: {exc!r}") from exc
        if body.tell() != len(data):
            raise CodecError(
                "undecodable", f"{writer['name']}: {len(data) - body.tell()} trailing bytes"
            )
        return from_record(cls, record, writer["name"])


class Decoder(Protocol):
    def decode(self, data: bytes, expected: type | None = None) -> Any: ...


class DecodeMemo:
    """Values this process decoded lately, by their bytes.

    The route stage decodes every event to find its bundle, and the manage stage of
    the same instance reads the very same bytes back from the repartition topic. A
    decoded value depends on the bytes alone and is immutable, so the later stage
    takes it instead of decoding again (profiled: decoding was a third of the
    engine's time). Bounded, oldest out first: an event routed to a partition
    of another instance is never taken here and ages out. Failures are not kept:
    the codec raises them again, where each stage reports them.
    """

    def __init__(self, codec: Decoder, capacity: int = 20_000) -> None:
        self._codec = codec
        self._capacity = capacity
        self._values: dict[bytes, Any] = {}

    def __len__(self) -> int:
        return len(self._values)

    def decode(self, data: bytes, expected: type | None = None) -> Any:
        """The value of `data`, kept for a later stage."""
        value = self._values.get(data)
        if value is not None and (expected is None or type(value) is expected):
            return value
        value = self._codec.decode(data, expected)
        values = self._values
        if len(values) >= self._capacity:
            del values[next(iter(values))]
        values[data] = value
        return value

    def take(self, data: bytes, expected: type | None = None) -> Any:
        """The value of `data` for its last reader: no longer kept."""
        value = self._values.pop(data, None)
        if value is not None and (expected is None or type(value) is expected):
            return value
        return self._codec.decode(data, expected)


# --- Struct <-> Avro record ---------------------------------------------------


def to_record(value: object) -> Any:
    """The dict fastavro writes: nested Structs as dicts, datetimes kept."""
    return msgspec.to_builtins(value, builtin_types=_KEPT)


_KEPT = (datetime,)


def from_record(cls: type, record: Any, name: str) -> Any:
    """The Struct of a decoded record; ids and contract rules checked."""
    try:
        return msgspec.convert(record, cls)
    except msgspec.ValidationError as exc:
        raise CodecError("invalid", f"{name}: {exc}") from exc


def ids_as_strings(schema: Any) -> Any:
    """`schema` parsed again without the uuid logical type: the wire format is the
    same (a string), and the fingerprint is taken over the canonical form, which
    has no logical types anyway."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("logicalType") == "uuid":
                return strip(node["type"])
            return {k: strip(v) for k, v in node.items() if not k.startswith("__")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return fastavro.parse_schema(strip(schema), named_schemas={})
