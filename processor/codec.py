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
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from processor.domain.messages import MESSAGE_TYPES, InvalidMessage

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

    `types` maps Avro record names (without namespace) to dataclasses whose fields
    match the schema's; nested records, arrays (tuples) and the uuid and
    timestamp logical types are converted on the way.
    """

    def __init__(
        self, store: SchemaStore | None = None, types: Mapping[str, type] = MESSAGE_TYPES
    ) -> None:
        self.store = store or SchemaStore()
        self._types = dict(types)
        self._reader_of_type = {cls: self.store.reader(name) for name, cls in types.items()}
        self._type_of_name = {self._reader_of_type[cls].full_name: cls for cls in types.values()}
        self._header_of_type = {
            cls: MAGIC + s.fingerprint for cls, s in self._reader_of_type.items()
        }

    def encode(self, value: object) -> bytes:
        schema = self._reader_of_type.get(type(value))
        if schema is None:
            raise CodecError("unexpected-type", f"no schema for {type(value).__name__}")
        buf = io.BytesIO()
        buf.write(self._header_of_type[type(value)])
        try:
            fastavro.schemaless_writer(
                buf, schema.schema, _to_record(value), strict=True, disable_tuple_notation=True
            )
        except Exception as exc:  # fastavro raises many types for a bad value
            raise CodecError("schema-violation", f"{schema.full_name}: {exc}") from exc
        return buf.getvalue()

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
        writer = self.writer_schema(data)
        cls = self._type_of_name.get(writer.full_name)
        if cls is None or (expected is not None and cls is not expected):
            wanted = expected.__name__ if expected else "a known record"
            raise CodecError("unexpected-type", f"got {writer.full_name}, expected {wanted}")
        reader = self._reader_of_type[cls]
        body = io.BytesIO(data)
        body.seek(_HEADER_LEN)
        try:
            record = fastavro.schemaless_reader(body, writer.schema, reader.schema)
        except Exception as exc:  # truncated, bad UUID, bad UTF-8, unresolvable...
            raise CodecError("undecodable", f"{writer.full_name}: {exc!r}") from exc
        if body.tell() != len(data):
            raise CodecError(
                "undecodable", f"{writer.full_name}: {len(data) - body.tell()} trailing bytes"
            )
        try:
            return _from_record(cls, record)
        except InvalidMessage as exc:
            raise CodecError("invalid", f"{writer.full_name}: {exc}") from exc


# --- dataclass <-> Avro record ----------------------------------------------


def _to_record(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _to_record(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_to_record(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    # fastavro reads logicalType uuid as uuid.UUID; the domain keeps strings.
    return str(value) if isinstance(value, uuid.UUID) else value


_builders: dict[type, list[tuple[str, Callable[[Any], Any]]]] = {}


def _from_record(cls: type, record: Mapping[str, Any]) -> Any:
    builder = _builders.get(cls)
    if builder is None:
        builder = _builders[cls] = _builder_for(cls)
    return cls(**{name: convert(record[name]) for name, convert in builder})


def _builder_for(cls: type) -> list[tuple[str, Callable[[Any], Any]]]:
    hints = typing.get_type_hints(cls)
    builder: list[tuple[str, Callable[[Any], Any]]] = []
    for f in fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and is_dataclass(hint):
            builder.append((f.name, lambda v, t=hint: _from_record(t, v)))
        elif typing.get_origin(hint) is tuple:
            builder.append((f.name, lambda v: tuple(_plain(x) for x in v)))
        elif isinstance(hint, types.UnionType | type) or hint is Any:
            builder.append((f.name, _plain))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {hint}")
    return builder
