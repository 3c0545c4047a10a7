"""The saga's messages and state as plain, immutable values.

Field names match the Avro schemas in `schemas/` (the original Go system's JSON
tags), so the codec maps records to these classes by name. Every class carries
`schema_name`, the Avro record name it is written as. Validation that Avro
cannot express (counts, positivity) runs at construction, so an invalid
message never reaches the decision function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal


class InvalidMessage(ValueError):
    """A message that decodes but breaks a rule of the contract."""


@dataclass(frozen=True, slots=True)
class MessageHeader:
    id: str
    published_at: datetime
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Money:
    amount: str
    currency: str


def _require_positive(name: str, value: int) -> None:
    if value <= 0:
        raise InvalidMessage(f"{name} must be positive, got {value}")


# --- events the process manager consumes ------------------------------------


@dataclass(frozen=True, slots=True)
class VipBundleInitializedV1:
    schema_name: ClassVar[str] = "VipBundleInitialized_v1"
    header: MessageHeader
    vip_bundle_id: str
    booking_id: str
    customer_email: str
    number_of_tickets: int
    show_id: str
    passengers: tuple[str, ...]
    inbound_flight_id: str

    def __post_init__(self) -> None:
        _require_positive("number_of_tickets", self.number_of_tickets)
        if len(self.passengers) != self.number_of_tickets:
            raise InvalidMessage(
                f"{len(self.passengers)} passengers for {self.number_of_tickets} tickets"
            )


@dataclass(frozen=True, slots=True)
class BookingMadeV1:
    schema_name: ClassVar[str] = "BookingMade_v1"
    header: MessageHeader
    number_of_tickets: int
    booking_id: str
    customer_email: str
    show_id: str

    def __post_init__(self) -> None:
        _require_positive("number_of_tickets", self.number_of_tickets)


@dataclass(frozen=True, slots=True)
class TicketBookingConfirmedV1:
    schema_name: ClassVar[str] = "TicketBookingConfirmed_v1"
    header: MessageHeader
    ticket_id: str
    customer_email: str
    price: Money
    booking_id: str


@dataclass(frozen=True, slots=True)
class BookingFailedV1:
    schema_name: ClassVar[str] = "BookingFailed_v1"
    header: MessageHeader
    booking_id: str
    failure_reason: str


@dataclass(frozen=True, slots=True)
class FlightBookedV1:
    schema_name: ClassVar[str] = "FlightBooked_v1"
    header: MessageHeader
    flight_id: str
    flight_tickets_ids: tuple[str, ...]
    reference_id: str


@dataclass(frozen=True, slots=True)
class FlightBookingFailedV1:
    schema_name: ClassVar[str] = "FlightBookingFailed_v1"
    header: MessageHeader
    flight_id: str
    failure_reason: str
    reference_id: str


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


@dataclass(frozen=True, slots=True)
class VipBundleFinalizedV1:
    schema_name: ClassVar[str] = "VipBundleFinalized_v1"
    header: MessageHeader
    vip_bundle_id: str
    success: bool


@dataclass(frozen=True, slots=True)
class BookShowTickets:
    schema_name: ClassVar[str] = "BookShowTickets"
    header: MessageHeader
    booking_id: str
    customer_email: str
    number_of_tickets: int
    show_id: str


@dataclass(frozen=True, slots=True)
class BookFlight:
    schema_name: ClassVar[str] = "BookFlight"
    header: MessageHeader
    customer_email: str
    flight_id: str
    passengers: tuple[str, ...]
    reference_id: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RefundTicket:
    schema_name: ClassVar[str] = "RefundTicket"
    header: MessageHeader
    ticket_id: str


Message = BookShowTickets | BookFlight | RefundTicket | VipBundleFinalizedV1


@dataclass(frozen=True, slots=True)
class Output:
    """One message to publish: `kind` picks the topic family (commands./events.),
    `key` the record key (design: RefundTicket by ticket_id, the rest by bundle)."""

    kind: Literal["command", "event"]
    key: str
    message: Message


# --- state ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VipBundle:
    schema_name: ClassVar[str] = "VipBundle"
    vip_bundle_id: str
    booking_id: str
    customer_email: str
    number_of_tickets: int
    show_id: str
    passengers: tuple[str, ...]
    inbound_flight_id: str
    booking_made_at: datetime | None = None
    # A set, kept sorted so that the changelog bytes are deterministic.
    ticket_ids: tuple[str, ...] = field(default=())
    inbound_flight_ticket_ids: tuple[str, ...] = field(default=())
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
