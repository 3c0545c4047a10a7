"""Events of one VIP bundle, as the ticket and flight services would publish them."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import fastavro
import msgspec

from processor.codec import MAGIC, Codec
from processor.domain.messages import (
    BookingFailedV1,
    BookingMadeV1,
    Event,
    FlightBookedV1,
    FlightBookingFailedV1,
    MessageHeader,
    Money,
    TicketBookingConfirmedV1,
    VipBundleInitializedV1,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OUTCOMES = ("booking_failed", "flight_booked", "flight_failed")


def _id(rng_name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, rng_name))


@dataclass(frozen=True)
class BundleStory:
    """Ids of one bundle; each method returns the same event on every call,
    so calling twice models a redelivery."""

    seed: str = "bundle-0"
    tickets: int = 3
    vip_bundle_id: str = field(init=False)
    booking_id: str = field(init=False)
    show_id: str = field(init=False)
    inbound_flight_id: str = field(init=False)
    ticket_ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "vip_bundle_id", _id(f"{self.seed}/bundle"))
        set_(self, "booking_id", _id(f"{self.seed}/booking"))
        set_(self, "show_id", _id(f"{self.seed}/show"))
        set_(self, "inbound_flight_id", _id(f"{self.seed}/flight"))
        set_(self, "ticket_ids", tuple(_id(f"{self.seed}/ticket/{i}") for i in range(self.tickets)))

    @property
    def email(self) -> str:
        return f"{self.seed}@example.com"

    def _header(self, what: str, minute: int) -> MessageHeader:
        return MessageHeader(
            id=_id(f"{self.seed}/{what}/id"),
            published_at=T0 + timedelta(minutes=minute),
            idempotency_key=_id(f"{self.seed}/{what}/key"),
        )

    def initialized(self) -> VipBundleInitializedV1:
        return VipBundleInitializedV1(
            header=self._header("initialized", 0),
            vip_bundle_id=self.vip_bundle_id,
            booking_id=self.booking_id,
            customer_email=self.email,
            number_of_tickets=self.tickets,
            show_id=self.show_id,
            passengers=tuple(f"Passenger {i}" for i in range(self.tickets)),
            inbound_flight_id=self.inbound_flight_id,
        )

    def booking_made(self) -> BookingMadeV1:
        return BookingMadeV1(
            header=self._header("booking-made", 1),
            number_of_tickets=self.tickets,
            booking_id=self.booking_id,
            customer_email=self.email,
            show_id=self.show_id,
        )

    def confirmed(self, i: int) -> TicketBookingConfirmedV1:
        return TicketBookingConfirmedV1(
            header=self._header(f"confirmed/{i}", 2),
            ticket_id=self.ticket_ids[i],
            customer_email=self.email,
            price=Money(amount="120.00", currency="EUR"),
            booking_id=self.booking_id,
        )

    def all_confirmed(self) -> list[TicketBookingConfirmedV1]:
        return [self.confirmed(i) for i in range(self.tickets)]

    def booking_failed(self) -> BookingFailedV1:
        return BookingFailedV1(
            header=self._header("booking-failed", 1),
            booking_id=self.booking_id,
            failure_reason="sold out",
        )

    def flight_booked(self) -> FlightBookedV1:
        return FlightBookedV1(
            header=self._header("flight-booked", 3),
            flight_id=self.inbound_flight_id,
            flight_tickets_ids=tuple(_id(f"{self.seed}/seat/{i}") for i in range(self.tickets)),
            reference_id=self.vip_bundle_id,
        )

    def history(self, outcome: str) -> list[Event]:
        """What the services publish for this bundle, in causal order, for one of OUTCOMES."""
        if outcome == "booking_failed":
            return [self.initialized(), self.booking_failed()]
        result = self.flight_booked() if outcome == "flight_booked" else self.flight_failed()
        return [self.initialized(), self.booking_made(), *self.all_confirmed(), result]

    def flight_failed(self) -> FlightBookingFailedV1:
        return FlightBookingFailedV1(
            header=self._header("flight-failed", 3),
            flight_id=self.inbound_flight_id,
            failure_reason="no seats",
            reference_id=self.vip_bundle_id,
        )


# --- bytes the domain would refuse to build ----------------------------------------


def avro_record(event: object, **changes: object) -> dict[str, object]:
    """`event` as the plain record fastavro writes, with fields replaced by `changes`."""

    record = msgspec.to_builtins(event, builtin_types=(datetime,))
    assert isinstance(record, dict)
    return record | changes


def raw_avro(schema_name: str, record: dict[str, object], codec: Codec | None = None) -> bytes:
    """Single-object bytes written straight with fastavro, bypassing the domain's checks."""
    writer = (codec or Codec()).store.reader(schema_name)
    buf = io.BytesIO(MAGIC + writer.fingerprint)
    buf.seek(0, io.SEEK_END)
    fastavro.schemaless_writer(buf, writer.schema, record)
    return buf.getvalue()
