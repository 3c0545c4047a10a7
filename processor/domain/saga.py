"""The VIP bundle saga: every rule of the process manager, in one place.

`decide(state, event)` is pure. It returns exactly one outcome:

- `Apply(state, outputs)`: the new state and the messages to publish;
- `Ignore(reason)`: a duplicate, an event after finalization, or one that is
  not about this bundle's booking or flight; nothing changes;
- `NotReady(reason)`: the event came too early (unknown bundle, flight result
  before the show booking, refunds before every ticket is confirmed); the
  runtime retries it later.

The table, rows = state, columns = event (I = Ignore, N = NotReady):

    state \\ event  Initialized BookingMade TicketConfirmed BookingFailed FlightBooked FlightFailed
    unknown         apply       N           N               N             N            N
    open, unbooked  I (dup)     apply       apply | I (dup) finalize(F)   N            N
    open, booked    I (dup)     I (dup)     apply | I (dup) rollback      finalize(T)  rollback
    finalized       I           I           I               I             I            I

`rollback` = NotReady until all number_of_tickets confirmations are known, then
one RefundTicket per confirmed ticket and VipBundleFinalized_v1(success=false).
Booking events of another booking_id and flight events of another flight_id
are ignored (they are not this bundle's). Only a booked bundle (booking_made_at
set) is ever refunded.

Outputs are deterministic: ids are uuid5 of (bundle, message name, ticket or
flight id) and published_at is the triggering event's, so a replay yields the
same records and downstream services can de-duplicate.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from msgspec.structs import replace

from processor.domain.messages import (
    BookFlight,
    BookingFailedV1,
    BookingMadeV1,
    BookShowTickets,
    Event,
    FlightBookedV1,
    FlightBookingFailedV1,
    Message,
    MessageHeader,
    Output,
    RefundTicket,
    TicketBookingConfirmedV1,
    VipBundle,
    VipBundleFinalizedV1,
    VipBundleInitializedV1,
)

# Fixed namespaces: changing them changes every output id, which would defeat
# downstream de-duplication across versions.
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-5b8a-9c41-2a7de0b51f10")
IDEMPOTENCY_NAMESPACE = uuid.UUID("b0e8d3a4-51c2-5f6e-8d7a-94c3e1f20a6b")


@dataclass(frozen=True, slots=True)
class Apply:
    state: VipBundle
    outputs: tuple[Output, ...] = ()


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class NotReady:
    reason: str


Decision = Apply | Ignore | NotReady


def decide(state: VipBundle | None, event: Event) -> Decision:
    """The one outcome of `event` on the bundle `state` (None: not known yet)."""
    if isinstance(event, VipBundleInitializedV1):
        if state is not None:
            return Ignore("bundle already initialized")
        return _initialize(event)
    if state is None:
        return NotReady(f"bundle of {event.schema_name} is not initialized yet")
    if state.is_finalized:
        return Ignore("bundle already finalized")
    match event:
        case BookingMadeV1() | TicketBookingConfirmedV1() | BookingFailedV1() if (
            event.booking_id != state.booking_id
        ):
            return Ignore(f"booking {event.booking_id} is not this bundle's")
        case FlightBookedV1() | FlightBookingFailedV1() if (
            event.flight_id != state.inbound_flight_id
        ):
            return Ignore(f"flight {event.flight_id} is not this bundle's inbound flight")
        case BookingMadeV1():
            return _booking_made(state, event)
        case TicketBookingConfirmedV1():
            return _ticket_confirmed(state, event)
        case BookingFailedV1():
            return _rollback(state, event.header)
        case FlightBookedV1():
            return _flight_booked(state, event)
        case FlightBookingFailedV1():
            if state.booking_made_at is None:
                return NotReady("flight result before the show booking was made")
            return _rollback(state, event.header)
    raise TypeError(f"not an event: {type(event).__name__}")


def _initialize(event: VipBundleInitializedV1) -> Apply:
    bundle = VipBundle(
        vip_bundle_id=event.vip_bundle_id,
        booking_id=event.booking_id,
        customer_email=event.customer_email,
        number_of_tickets=event.number_of_tickets,
        show_id=event.show_id,
        passengers=event.passengers,
        inbound_flight_id=event.inbound_flight_id,
    )
    book = BookShowTickets(
        header=_header(bundle, BookShowTickets, "", event.header),
        booking_id=bundle.booking_id,
        customer_email=bundle.customer_email,
        number_of_tickets=bundle.number_of_tickets,
        show_id=bundle.show_id,
    )
    return Apply(bundle, (_command(bundle, book),))


def _booking_made(state: VipBundle, event: BookingMadeV1) -> Decision:
    if state.booking_made_at is not None:
        return Ignore("booking already made")
    header = _header(state, BookFlight, state.inbound_flight_id, event.header)
    book = BookFlight(
        header=header,
        customer_email=state.customer_email,
        flight_id=state.inbound_flight_id,
        passengers=state.passengers,
        reference_id=state.vip_bundle_id,
        idempotency_key=header.idempotency_key,
    )
    new_state = replace(state, booking_made_at=event.header.published_at)
    return Apply(new_state, (_command(state, book),))


def _ticket_confirmed(state: VipBundle, event: TicketBookingConfirmedV1) -> Decision:
    if event.ticket_id in state.ticket_ids:
        return Ignore("ticket already confirmed")
    tickets = tuple(sorted((*state.ticket_ids, event.ticket_id)))
    return Apply(replace(state, ticket_ids=tickets))


def _flight_booked(state: VipBundle, event: FlightBookedV1) -> Decision:
    if state.booking_made_at is None:
        return NotReady("flight result before the show booking was made")
    new_state = replace(
        state, inbound_flight_ticket_ids=event.flight_tickets_ids, is_finalized=True
    )
    return Apply(new_state, (_finalized(state, event.header, success=True),))


def _rollback(state: VipBundle, trigger: MessageHeader) -> Decision:
    """Refund every ticket of a booking that was made, then finalize as failed."""
    refunds: list[Output] = []
    if state.booking_made_at is not None:
        known = len(state.ticket_ids)
        if known < state.number_of_tickets:
            return NotReady(
                f"{known} of {state.number_of_tickets} ticket confirmations known; "
                "refunds wait for all"
            )
        for ticket_id in state.ticket_ids:
            refund = RefundTicket(
                header=_header(state, RefundTicket, ticket_id, trigger), ticket_id=ticket_id
            )
            refunds.append(Output("command", ticket_id, refund))
    new_state = replace(state, is_finalized=True, failed=True)
    return Apply(new_state, (*refunds, _finalized(state, trigger, success=False)))


def _finalized(state: VipBundle, trigger: MessageHeader, *, success: bool) -> Output:
    event = VipBundleFinalizedV1(
        header=_header(state, VipBundleFinalizedV1, "", trigger),
        vip_bundle_id=state.vip_bundle_id,
        success=success,
    )
    return Output("event", state.vip_bundle_id, event)


def _command(state: VipBundle, message: Message) -> Output:
    return Output("command", state.vip_bundle_id, message)


def _header(
    state: VipBundle, message_type: type, discriminator: str, trigger: MessageHeader
) -> MessageHeader:
    name = f"{state.vip_bundle_id}/{message_type.schema_name}/{discriminator}".encode()
    return MessageHeader(
        id=_uuid5(_MESSAGE_ID_PREFIX, name),
        published_at=trigger.published_at,
        idempotency_key=_uuid5(_IDEMPOTENCY_PREFIX, name),
    )


_MESSAGE_ID_PREFIX = MESSAGE_ID_NAMESPACE.bytes
_IDEMPOTENCY_PREFIX = IDEMPOTENCY_NAMESPACE.bytes


def _uuid5(namespace: bytes, name: bytes) -> str:
    """str(uuid.uuid5(namespace, name)), without building UUID objects (a hot path)."""
    digest = bytearray(hashlib.sha1(namespace + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
