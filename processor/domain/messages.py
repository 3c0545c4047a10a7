"""The saga's messages and state as plain, immutable values.

Field names match the Avro schemas in `schemas/` (the original Go system's JSON
tags), so the codec maps records to these classes by name. Every class carries
`schema_name`, the Avro record name it is written as. They are msgspec Structs:
cheap to build, and the codec turns a decoded record into one with a single
validating call. Ids are strings; `Uuid` fields must be RFC 4122 text, checked
when a message is decoded. Validation that Avro cannot express (counts,
positivity) runs in `__post_init__`, so an invalid message never reaches the
decision function. Their fields are strings, numbers, datetimes, tuples and other
Structs, so no value can be part of a reference cycle: `gc=False` keeps them out
of the cyclic garbage collector (profiled: fewer and cheaper collections).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from msgspec import Meta, Struct

_HEX = "[0-9a-fA-F]"
_UUID = f"^{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}$"
Uuid = Annotated[str, Meta(pattern=_UUID)]


class InvalidMessage(ValueError):
    """A message that decodes but breaks a rule of the contract."""


class MessageHeader(Struct, frozen=True, gc=False):
    id: Uuid
    published_at: datetime
    idempotency_key: Uuid


class Money(Struct, frozen=True, gc=False):
    amount: str
    currency: str


def _require_positive(name: str, value: int) -> None:
    if value <= 0:
        raise InvalidMessage(f"{name} must be positive, got {value}")


# --- events the process manager consumes ------------------------------------


class VipBundleInitializedV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "VipBundleInitialized_v1"
    header: MessageHeader
    vip_bundle_id: Uuid
    booking_id: Uuid
    customer_email: str
    number_of_tickets: int
    show_id: Uuid
    passengers: tuple[str, ...]
    inbound_flight_id: Uuid

    def __post_init__(self) -> None:
        _require_positive("number_of_tickets", self.number_of_tickets)
        if len(self.passengers) != self.number_of_tickets:
            raise InvalidMessage(
                f"{len(self.passengers)} passengers for {self.number_of_tickets} tickets"
            )


class BookingMadeV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "BookingMade_v1"
    header: MessageHeader
    number_of_tickets: int
    booking_id: Uuid
    customer_email: str
    show_id: Uuid

    def __post_init__(self) -> None:
        _require_positive("number_of_tickets", self.number_of_tickets)


class TicketBookingConfirmedV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "TicketBookingConfirmed_v1"
    header: MessageHeader
    ticket_id: Uuid
    customer_email: str
    price: Money
    booking_id: Uuid


class BookingFailedV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "BookingFailed_v1"
    header: MessageHeader
    booking_id: Uuid
    failure_reason: str


class FlightBookedV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "FlightBooked_v1"
    header: MessageHeader
    flight_id: Uuid
    flight_tickets_ids: tuple[Uuid, ...]
    reference_id: Uuid


class FlightBookingFailedV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "FlightBookingFailed_v1"
    header: MessageHeader
    flight_id: Uuid
    failure_reason: str
    reference_id: Uuid


Event = (
    VipBundleInitializedV1
    | BookingMadeV1
    | TicketBookingConfirmedV1
    | BookingFailedV1
    | FlightBookedV1
    | FlightBookingFailedV1
)


def bundle_id_of(event: Event) -> str | None:
    """The vip_bundle_id an event names itself, or None for the booking events,
    which name only their booking (the route stage looks those up)."""
    match event:
        case VipBundleInitializedV1():
            return event.vip_bundle_id
        case FlightBookedV1() | FlightBookingFailedV1():
            return event.reference_id  # the flight service's reference is the bundle id
    return None


EVENT_TYPES: tuple[type[Event], ...] = (
    VipBundleInitializedV1,
    BookingMadeV1,
    TicketBookingConfirmedV1,
    BookingFailedV1,
    FlightBookedV1,
    FlightBookingFailedV1,
)

# --- what the process manager emits -----------------------------------------


class VipBundleFinalizedV1(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "VipBundleFinalized_v1"
    header: MessageHeader
    vip_bundle_id: Uuid
    success: bool


class BookShowTickets(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "BookShowTickets"
    header: MessageHeader
    booking_id: Uuid
    customer_email: str
    number_of_tickets: int
    show_id: Uuid


class BookFlight(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "BookFlight"
    header: MessageHeader
    customer_email: str
    flight_id: Uuid
    passengers: tuple[str, ...]
    reference_id: Uuid
    idempotency_key: Uuid


class RefundTicket(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "RefundTicket"
    header: MessageHeader
    ticket_id: Uuid


Message = BookShowTickets | BookFlight | RefundTicket | VipBundleFinalizedV1


class Output(Struct, frozen=True, gc=False):
    """One message to publish: `kind` picks the topic family (commands./events.),
    `key` the record key (design: RefundTicket by ticket_id, the rest by bundle)."""

    kind: Literal["command", "event"]
    key: str
    message: Message


# --- state ------------------------------------------------------------------


class VipBundle(Struct, frozen=True, gc=False):
    schema_name: ClassVar[str] = "VipBundle"
    vip_bundle_id: Uuid
    booking_id: Uuid
    customer_email: str
    number_of_tickets: int
    show_id: Uuid
    passengers: tuple[str, ...]
    inbound_flight_id: Uuid
    booking_made_at: datetime | None = None
    # A set, kept sorted so that the changelog bytes are deterministic.
    ticket_ids: tuple[Uuid, ...] = ()
    inbound_flight_ticket_ids: tuple[Uuid, ...] = ()
    is_finalized: bool = False
    failed: bool = False


MESSAGE_TYPES: dict[str, type] = {
    cls.schema_name: cls
    for cls in (
        *EVENT_TYPES,
        VipBundleFinalizedV1,
        BookShowTickets,
        BookFlight,
        RefundTicket,
        VipBundle,
    )
}
"""Every record type the codec maps, by Avro record name."""
