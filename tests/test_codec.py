"""Avro single-object encoding: round trips, Java-compatible fingerprints, bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint
from msgspec.structs import replace

from processor.codec import (
    DEFAULT_SCHEMA_DIR,
    MAGIC,
    Codec,
    CodecError,
    DecodeMemo,
    SchemaStore,
)
from processor.domain.messages import (
    MESSAGE_TYPES,
    BookingMadeV1,
    VipBundleFinalizedV1,
    VipBundleInitializedV1,
)
from processor.domain.saga import Apply, decide
from tests.factories import BundleStory, avro_record, raw_avro

codec = Codec()
story = BundleStory(tickets=2)


def every_value() -> list[object]:
    """One value of every record type the codec maps, built by the saga itself."""
    values: list[object] = [
        story.initialized(),
        story.booking_made(),
        *story.all_confirmed(),
        story.booking_failed(),
        story.flight_booked(),
        story.flight_failed(),
    ]
    state = None
    for event in [story.initialized(), story.booking_made(), *story.all_confirmed()]:
        decision = decide(state, event)
        assert isinstance(decision, Apply)
        state = decision.state
        values += [state, *(o.message for o in decision.outputs)]
    final = decide(state, story.flight_failed())
    assert isinstance(final, Apply)
    values += [final.state, *(o.message for o in final.outputs)]
    return values


def test_every_record_type_round_trips() -> None:
    values = every_value()
    assert {type(v) for v in values} == set(MESSAGE_TYPES.values())
    for value in values:
        assert codec.decode(codec.encode(value)) == value


def test_encoding_is_deterministic() -> None:
    assert codec.encode(story.initialized()) == codec.encode(story.initialized())


@pytest.mark.parametrize(
    ("pcf", "java_fingerprint"),
    [
        # From Apache Avro's share/test/data/schema-tests.txt (checked by the Java tests).
        ('"int"', 8247732601305521295),
        ('{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ],
)
def test_fingerprint_matches_java_parsing_fingerprint64(pcf: str, java_fingerprint: int) -> None:
    java_bytes = (java_fingerprint & (2**64 - 1)).to_bytes(8, "little")
    assert bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO")) == java_bytes


def test_fingerprint_covers_named_types_inlined_at_first_use() -> None:
    data = codec.encode(story.confirmed(0))
    writer = codec.writer_schema(data)
    expected_pcf = (
        '{"name":"ticketing.TicketBookingConfirmed_v1","type":"record","fields":['
        '{"name":"header","type":{"name":"ticketing.MessageHeader","type":"record","fields":['
        '{"name":"id","type":"string"},{"name":"published_at","type":"long"},'
        '{"name":"idempotency_key","type":"string"}]}},'
        '{"name":"ticket_id","type":"string"},{"name":"customer_email","type":"string"},'
        '{"name":"price","type":{"name":"ticketing.Money","type":"record","fields":['
        '{"name":"amount","type":"string"},{"name":"currency","type":"string"}]}},'
        '{"name":"booking_id","type":"string"}]}'
    )
    assert data[:2] == MAGIC
    assert data[2:10] == bytes.fromhex(fingerprint(expected_pcf, "CRC-64-AVRO"))
    assert writer.full_name == "ticketing.TicketBookingConfirmed_v1"


def test_decode_with_expected_type_rejects_another_record() -> None:
    data = codec.encode(story.booking_made())
    assert codec.decode(data, BookingMadeV1) == story.booking_made()
    with pytest.raises(CodecError) as err:
        codec.decode(data, VipBundleInitializedV1)
    assert err.value.kind == "unexpected-type"


# --- bad input -------------------------------------------------------------------


def raw(schema_name: str, record: dict[str, object]) -> bytes:
    return raw_avro(schema_name, record, codec)


def initialized_record(**changes: object) -> dict[str, object]:
    return avro_record(story.initialized(), **changes)


def test_raw_writer_helper_produces_what_the_codec_decodes() -> None:
    assert codec.decode(raw("VipBundleInitialized_v1", initialized_record())) == story.initialized()


GOOD = codec.encode(story.initialized())


@pytest.mark.parametrize(
    ("data", "kind", "says"),
    [
        (b"", "not-single-object", "0 bytes"),
        (b'{"vip_bundle_id": "x"}', "not-single-object", "C3 01"),
        (MAGIC + b"\x00" * 8 + GOOD[10:], "unknown-fingerprint", "0000000000000000"),
        (GOOD[:-5], "undecodable", "VipBundleInitialized_v1"),
        (GOOD + b"\x00", "undecodable", "1 trailing bytes"),
        (
            raw("VipBundleInitialized_v1", initialized_record(booking_id="not-a-uuid")),
            "invalid",
            "booking_id",
        ),
        (
            raw("VipBundleInitialized_v1", initialized_record(number_of_tickets=0, passengers=[])),
            "invalid",
            "number_of_tickets must be positive",
        ),
        (
            raw("VipBundleInitialized_v1", initialized_record(passengers=["only one"])),
            "invalid",
            "1 passengers for 2 tickets",
        ),
        (
            raw("MessageHeader", initialized_record()["header"]),  # type: ignore[arg-type]
            "unexpected-type",
            "ticketing.MessageHeader",
        ),
    ],
    ids=[
        "empty",
        "json",
        "unknown-fingerprint",
        "truncated",
        "trailing-bytes",
        "bad-uuid",
        "non-positive-tickets",
        "passengers-mismatch",
        "not-a-message",
    ],
)
def test_bad_bytes_raise_one_typed_error_that_says_what_was_wrong(
    data: bytes, kind: str, says: str
) -> None:
    with pytest.raises(CodecError) as err:
        codec.decode(data)
    assert err.value.kind == kind
    assert says in str(err.value)


def test_encoding_a_value_that_breaks_its_schema_raises_the_typed_error() -> None:
    bad = replace(story.booking_failed(), failure_reason=None)  # type: ignore[arg-type]
    with pytest.raises(CodecError) as err:
        codec.encode(bad)
    assert err.value.kind == "schema-violation"


def test_encoding_an_unmapped_type_raises_the_typed_error() -> None:
    with pytest.raises(CodecError) as err:
        codec.encode(object())
    assert err.value.kind == "unexpected-type"


# --- schema evolution ------------------------------------------------------------


def test_a_record_written_with_a_retired_schema_resolves_to_the_current_one(
    tmp_path: Path,
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_DIR, schemas)
    # An older VipBundleFinalized_v1 had one more field; history files are self-contained.
    old = json.loads((schemas / "ticketing.VipBundleFinalized_v1.avsc").read_text())
    old["fields"][0]["type"] = json.loads((schemas / "ticketing.MessageHeader.avsc").read_text())
    old["fields"].append({"name": "channel", "type": "string"})
    (schemas / "history").mkdir()
    (schemas / "history" / "ticketing.VipBundleFinalized_v1.0.avsc").write_text(json.dumps(old))
    evolved = Codec(SchemaStore(schemas))
    [retired] = [w for w in evolved.store.writers.values() if w.path.parent.name == "history"]
    final = next(v for v in every_value() if isinstance(v, VipBundleFinalizedV1))
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        retired.schema,
        {
            "header": vars_of(final.header),
            "vip_bundle_id": final.vip_bundle_id,
            "success": final.success,
            "channel": "web",
        },
    )
    old_bytes = MAGIC + retired.fingerprint + buf.getvalue()

    assert retired.fingerprint != evolved.store.reader("VipBundleFinalized_v1").fingerprint
    assert evolved.decode(old_bytes) == final
    with pytest.raises(CodecError) as err:
        codec.decode(old_bytes)  # a codec without the history does not know it
    assert err.value.kind == "unknown-fingerprint"


def vars_of(header: object) -> dict[str, object]:
    return {name: getattr(header, name) for name in ("id", "published_at", "idempotency_key")}


def test_unknown_schema_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SchemaStore(tmp_path / "nope")


# --- the decode memo ------------------------------------------------------------


class CountingCodec:
    def __init__(self) -> None:
        self.decoded = 0

    def decode(self, data: bytes, expected: type | None = None) -> object:
        self.decoded += 1
        return codec.decode(data, expected)


def test_a_later_stage_takes_what_an_earlier_one_decoded_without_decoding_again() -> None:
    counting = CountingCodec()
    memo = DecodeMemo(counting)
    data = codec.encode(story.initialized())
    index_value = memo.decode(data, VipBundleInitializedV1)  # the booking index
    route_value = memo.decode(bytes(data), VipBundleInitializedV1)  # equal bytes, new object
    manage_value = memo.take(bytes(data), VipBundleInitializedV1)
    assert index_value is route_value is manage_value == story.initialized()
    assert counting.decoded == 1
    assert len(memo) == 0  # the last reader took it
    assert memo.take(data, VipBundleInitializedV1) == story.initialized()  # decoded again
    assert counting.decoded == 2


def test_the_memo_keeps_at_most_its_capacity_oldest_out_first() -> None:
    counting = CountingCodec()
    memo = DecodeMemo(counting, capacity=2)
    events = [*story.all_confirmed()[:2], story.booking_made()]
    first, second, third = (codec.encode(e) for e in events)
    for data in (first, second, third):
        memo.decode(data)
    assert len(memo) == 2
    memo.take(second)
    memo.take(third)
    assert counting.decoded == 3
    memo.take(first)  # aged out: decoded again
    assert counting.decoded == 4


def test_the_memo_checks_the_expected_type_and_keeps_no_failures() -> None:
    memo = DecodeMemo(codec)
    data = codec.encode(story.booking_made())
    memo.decode(data, BookingMadeV1)
    with pytest.raises(CodecError) as err:
        memo.decode(data, VipBundleInitializedV1)
    assert err.value.kind == "unexpected-type"
    with pytest.raises(CodecError):
        memo.decode(b"\xc3\x01garbage", BookingMadeV1)
    assert len(memo) == 1  # only the good one
