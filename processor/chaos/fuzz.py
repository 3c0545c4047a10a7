"""Bad records for the six input topics, each with the one fate it must meet.

Every fuzzed record is either **dead-lettered** (it can never be routed: it does
not decode, or decodes into a message that breaks the contract) or **skipped**
(valid Avro of an event that names no VIP bundle: "not part of a VIP bundle",
counted, never dead-lettered, never answered). The ledger (`Fuzzed`, with the
partition and offset the broker gave it) is what the verdict checks the DLQ
against, record by record.

Kinds (`KINDS`), and the topics they fit:
- random-bytes, empty-value, null-value (a tombstone), truncated-avro,
  unknown-fingerprint, wrong-type (another event's valid Avro), bad-uuid: all six;
- zero-tickets, negative-tickets: VipBundleInitialized_v1 and BookingMade_v1;
- passengers-mismatch: VipBundleInitialized_v1;
- near-max-size: random bytes a few KiB under the topic's max.message.bytes (room
  left for the DLQ's headers), a fixed few per run: they are a megabyte each;
- unknown-bundle (skipped): every topic but VipBundleInitialized_v1, where a valid
  record would start a bundle.
Keys are null, a UUID string or random bytes, whatever the kind.
"""

from __future__ import annotations

import io
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
from confluent_kafka import KafkaError, Message, Producer

from processor.codec import MAGIC, Codec, CodecError, to_record
from processor.domain.messages import (
    EVENT_TYPES,
    BookingFailedV1,
    BookingMadeV1,
    Event,
    FlightBookedV1,
    FlightBookingFailedV1,
    MessageHeader,
    Money,
    TicketBookingConfirmedV1,
    VipBundleInitializedV1,
    bundle_id_of,
)
from processor.logs import client_logging
from processor.topology import Topics

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # published_at of fuzzed events: same seed, same bytes
FUZZ_HEADER = "chaos.fuzz"  # "<seq>:<kind>" on every fuzzed record; the DLQ keeps it
SKIPPED = "unknown-bundle"
NEAR_MAX = "near-max-size"
# Below the topic's max.message.bytes by at least this: the dead letter adds the six
# __streams.errors.* headers (a few hundred bytes for an undecodable record).
NEAR_MAX_HEADROOM = 2048
NEAR_MAX_SPREAD = 6144

_INIT = VipBundleInitializedV1.schema_name
_MADE = BookingMadeV1.schema_name
_ALL = tuple(cls.schema_name for cls in EVENT_TYPES)
KINDS: dict[str, tuple[str, ...]] = {
    "random-bytes": _ALL,
    "empty-value": _ALL,
    "null-value": _ALL,
    "truncated-avro": _ALL,
    "unknown-fingerprint": _ALL,
    "wrong-type": _ALL,
    "bad-uuid": _ALL,
    "zero-tickets": (_INIT, _MADE),
    "negative-tickets": (_INIT, _MADE),
    "passengers-mismatch": (_INIT,),
    NEAR_MAX: _ALL,
    SKIPPED: tuple(name for name in _ALL if name != _INIT),
}


@dataclass
class Fuzzed:
    """One fuzzed record and where it landed (partition -1 until delivered)."""

    seq: int
    kind: str
    event_name: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reference: str | None = None  # the bundle id a skipped record names: no output for it
    partition: int = -1
    offset: int = -1
    error: str | None = None  # the broker refused it: it never existed

    @property
    def dead_letter(self) -> bool:
        return self.kind != SKIPPED

    @property
    def size(self) -> int:
        return len(self.value or b"")


class Generator:
    """Makes fuzzed records; deterministic for a seed."""

    def __init__(self, topics: Topics, max_message_bytes: int, seed: int = 0) -> None:
        self._topics = topics
        self._max = max_message_bytes
        # Not random.Random(seed): the services draw their ids from that very stream, and
        # the fuzzer's "unknown" ids would be the world's own (a fuzzed flight result for a
        # real bundle).
        self._rng = random.Random(f"fuzz/{seed}")
        self._codec = Codec()
        self._codec_types = {cls.schema_name: cls for cls in EVENT_TYPES}
        self._seq = 0

    def make(self, kind: str, event_name: str) -> Fuzzed:
        if event_name not in KINDS[kind]:
            raise ValueError(f"{kind} does not fit {event_name}")
        self._seq += 1
        reference = None
        if kind == SKIPPED:
            event = self._event(event_name)
            value: bytes | None = self._codec.encode(event)
            reference = bundle_id_of(event)
        else:
            value = self._value(kind, event_name)
        # The fate is by construction; the codec (the route stage's) confirms it.
        if self._decodes(event_name, value) != (kind == SKIPPED):
            raise AssertionError(f"a fuzzed {kind} record of {event_name} does not meet its fate")
        headers = [(FUZZ_HEADER, f"{self._seq}:{kind}".encode())]
        if self._rng.random() < 0.5:
            headers.append(("origin", self._rng.randbytes(8)))  # the DLQ keeps headers too
        topic = self._topics.input(event_name)
        key = self._key()
        return Fuzzed(self._seq, kind, event_name, topic, key, value, headers, reference)

    def stream(self, count: int, near_max: int) -> Iterator[Fuzzed]:
        """`count` records over the six topics in turn, `near_max` of them near the
        maximum size spread evenly, the rest of every other kind at random."""
        every = count // near_max if near_max else 0
        small = [k for k in KINDS if k != NEAR_MAX]
        for i in range(count):
            name = _ALL[i % len(_ALL)]
            if every and i % every == every - 1 and i // every < near_max:
                yield self.make(NEAR_MAX, name)
                continue
            kind = self._rng.choice([k for k in small if name in KINDS[k]])
            yield self.make(kind, name)

    # --- keys and values -------------------------------------------------------------

    def _key(self) -> bytes | None:
        roll = self._rng.random()
        if roll < 0.35:
            return None
        if roll < 0.7:
            return self._uuid().encode()
        return self._rng.randbytes(self._rng.randint(1, 40))

    def _value(self, kind: str, name: str) -> bytes | None:
        rng = self._rng
        match kind:
            case "random-bytes":
                return self._garbage(rng.randint(1, 300))
            case "empty-value":
                return b""
            case "null-value":
                return None
            case "near-max-size":
                low = self._max - NEAR_MAX_HEADROOM - NEAR_MAX_SPREAD
                return self._garbage(rng.randint(low, self._max - NEAR_MAX_HEADROOM))
            case "truncated-avro":
                whole = self._codec.encode(self._event(name))
                # Past the 10-byte header, short of the end: the body cannot be read.
                return whole[: rng.randint(len(MAGIC) + 9, len(whole) - 1)]
            case "unknown-fingerprint":
                whole = self._codec.encode(self._event(name))
                fingerprint = rng.randbytes(8)
                while fingerprint in self._codec.store.writers:
                    fingerprint = rng.randbytes(8)
                return MAGIC + fingerprint + whole[len(MAGIC) + 8 :]
            case "wrong-type":
                other = rng.choice([n for n in _ALL if n != name])
                return self._codec.encode(self._event(other))
            case "bad-uuid":
                return self._write(name, self._bad_uuid)
            case "zero-tickets":
                return self._write(name, lambda r: r.__setitem__("number_of_tickets", 0))
            case "negative-tickets":
                count = -rng.randint(1, 5)
                return self._write(name, lambda r: r.__setitem__("number_of_tickets", count))
            case "passengers-mismatch":
                return self._write(name, self._more_passengers)
        raise ValueError(f"unknown fuzz kind {kind}")

    def _decodes(self, name: str, value: bytes | None) -> bool:
        try:
            self._codec.decode(value or b"", self._codec_types[name])
        except CodecError:
            return False
        return True

    def _garbage(self, size: int) -> bytes:
        """Random bytes that cannot pass for single-object Avro (no C3 marker)."""
        data = bytearray(self._rng.randbytes(size))
        if data and data[0] == MAGIC[0]:
            data[0] ^= 0xFF
        return bytes(data)

    def _write(self, name: str, spoil: Callable[[dict[str, Any]], None]) -> bytes:
        """A valid event's record, spoiled, written as if by a careless producer: Avro
        itself accepts it (a string is a string); the contract does not."""
        schema = self._codec.store.reader(name)
        record = _record(self._event(name))
        spoil(record)
        buf = io.BytesIO()
        buf.write(MAGIC + schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.schema, record)
        return buf.getvalue()

    def _bad_uuid(self, record: dict[str, Any]) -> None:
        bad = self._rng.choice(["not-a-uuid", "", "1234", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"])
        record["header"]["id"] = bad

    def _more_passengers(self, record: dict[str, Any]) -> None:
        record["passengers"] = [*record["passengers"], "Stowaway"]

    def _event(self, name: str) -> Event:
        """A valid event of `name` that names no bundle, booking or flight of the world."""
        rng, u = self._rng, self._uuid
        header = MessageHeader(u(), _EPOCH + timedelta(seconds=self._seq), u())
        match name:
            case "VipBundleInitialized_v1":
                tickets = rng.randint(1, 4)
                passengers = tuple(f"Fuzz {i}" for i in range(tickets))
                return VipBundleInitializedV1(
                    header, u(), u(), "fuzz@example.com", tickets, u(), passengers, u()
                )
            case "BookingMade_v1":
                return BookingMadeV1(header, rng.randint(1, 4), u(), "fuzz@example.com", u())
            case "TicketBookingConfirmed_v1":
                return TicketBookingConfirmedV1(
                    header, u(), "fuzz@example.com", Money("1.00", "EUR"), u()
                )
            case "BookingFailed_v1":
                return BookingFailedV1(header, u(), "fuzz")
            case "FlightBooked_v1":
                return FlightBookedV1(header, u(), (u(),), u())
            case "FlightBookingFailed_v1":
                return FlightBookingFailedV1(header, u(), "fuzz", u())
        raise ValueError(f"no event named {name}")

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


def _record(value: Any) -> Any:
    """A domain value as the plain dicts and lists fastavro writes."""
    return to_record(value)  # fresh dicts, datetimes kept for the timestamp logical type


class Fuzzer:
    """Produces a stream of fuzzed records at a pace, keeping the ledger."""

    def __init__(
        self, producer: Producer, records: Iterator[Fuzzed], total: int, over_s: float
    ) -> None:
        self._producer = producer
        self._records = records
        self.total = total
        self._over_s = over_s
        self.ledger: list[Fuzzed] = []

    def step(self, elapsed_s: float) -> None:
        """Sends what is due `elapsed_s` into the run: evenly spread over `over_s`."""
        due = (
            self.total if elapsed_s >= self._over_s else int(self.total * elapsed_s / self._over_s)
        )
        while len(self.ledger) < due:
            fuzzed = next(self._records)
            self._produce(fuzzed)
            self.ledger.append(fuzzed)
        self._producer.poll(0)

    def _produce(self, fuzzed: Fuzzed) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                fuzzed.error = str(err)
            else:
                fuzzed.partition, fuzzed.offset = msg.partition(), msg.offset()

        while True:
            try:
                self._producer.produce(
                    fuzzed.topic,
                    fuzzed.value,
                    fuzzed.key,
                    headers=fuzzed.headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout)

    @property
    def sent(self) -> int:
        return len(self.ledger)

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.ledger)


def fuzz_producer(bootstrap: str, max_message_bytes: int, extra: dict[str, Any]) -> Producer:
    """Idempotent, so a retried send cannot make a second record (the ledger says one);
    allowed up to the topic's maximum, which is above librdkafka's default."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            **extra,
            **client_logging(),
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.max.bytes": max_message_bytes + 4096,
        }
    )
