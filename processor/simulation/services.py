"""The ticket and flight services, simulated: they answer commands with events,
late, reordered and sometimes twice, and remember what should happen to every
bundle (the ground truth the run is checked against).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from processor.domain.messages import (
    BookFlight,
    BookingFailedV1,
    BookingMadeV1,
    BookShowTickets,
    Event,
    FlightBookedV1,
    FlightBookingFailedV1,
    MessageHeader,
    Money,
    TicketBookingConfirmedV1,
    VipBundleInitializedV1,
)


@dataclass(frozen=True)
class Knobs:
    booking_failure_rate: float = 0.1
    flight_failure_rate: float = 0.3
    duplicate_rate: float = 0.05
    late_confirmation_rate: float = 0.3  # confirmations held until after the flight result
    ordinary_booking_rate: float = 0.3  # non-VIP bookings per VIP bundle
    max_tickets: int = 4
    max_delay_s: float = 1.0
    null_key_rate: float = 0.0  # events sent without a key: routing must not need one


@dataclass
class Plan:
    """What the services decided for one bundle: the ground truth."""

    bundle: VipBundleInitializedV1
    booking_fails: bool
    flight_fails: bool
    ticket_ids: tuple[str, ...] = ()
    booked: bool = False  # BookShowTickets answered with BookingMade_v1
    # Real services de-duplicate commands by idempotency key; these stand for that.
    show_answered: bool = False
    flight_answered: bool = False

    @property
    def expect_success(self) -> bool:
        return not self.booking_fails and not self.flight_fails

    @property
    def expected_refunds(self) -> frozenset[str]:
        return frozenset(self.ticket_ids) if self.booked and self.flight_fails else frozenset()


@dataclass(order=True)
class Scheduled:
    due: float
    seq: int
    event: Event = field(compare=False)


class Services:
    def __init__(self, knobs: Knobs, seed: int = 0) -> None:
        self.knobs = knobs
        self._rng = random.Random(seed)
        self._seq = 0
        self.plans: dict[str, Plan] = {}
        self._plan_of_booking: dict[str, Plan] = {}
        self._late: dict[str, list[TicketBookingConfirmedV1]] = {}  # held until the flight result
        self.ordinary = 0
        self.ordinary_references: set[str] = set()  # flight references of no bundle
        self.commands_answered = 0

    # --- what the outside world starts ----------------------------------------------

    def new_bundle(self, now: float) -> list[Scheduled]:
        rng = self._rng
        tickets = rng.randint(1, self.knobs.max_tickets)
        event = VipBundleInitializedV1(
            header=self._header(),
            vip_bundle_id=self._uuid(),
            booking_id=self._uuid(),
            customer_email=f"customer{len(self.plans)}@example.com",
            number_of_tickets=tickets,
            show_id=self._uuid(),
            passengers=tuple(f"Passenger {i}" for i in range(tickets)),
            inbound_flight_id=self._uuid(),
        )
        booking_fails = rng.random() < self.knobs.booking_failure_rate
        flight_fails = not booking_fails and rng.random() < self.knobs.flight_failure_rate
        plan = Plan(event, booking_fails, flight_fails)
        self.plans[event.vip_bundle_id] = plan
        self._plan_of_booking[event.booking_id] = plan
        out = self._send(now, event)
        if rng.random() < self.knobs.ordinary_booking_rate:
            out += self._ordinary_booking(now)
        return out

    def _ordinary_booking(self, now: float) -> list[Scheduled]:
        """A booking that is no VIP bundle's: the processor must leave it alone."""
        self.ordinary += 1
        booking, reference = self._uuid(), self._uuid()
        self.ordinary_references.add(reference)
        events: list[Event] = [
            BookingMadeV1(self._header(), 1, booking, "someone@example.com", self._uuid()),
            TicketBookingConfirmedV1(
                self._header(), self._uuid(), "someone@example.com", Money("50.00", "EUR"), booking
            ),
            FlightBookingFailedV1(self._header(), self._uuid(), "no seats", reference),
        ]
        return [s for e in events for s in self._send(now, e)]

    # --- answering commands -------------------------------------------------------------

    def on_command(self, command: object, now: float) -> list[Scheduled]:
        self.commands_answered += 1
        if isinstance(command, BookShowTickets):
            return self._book_show(command, now)
        if isinstance(command, BookFlight):
            return self._book_flight(command, now)
        return []  # RefundTicket: recorded by the checker, nothing to answer

    def _book_show(self, command: BookShowTickets, now: float) -> list[Scheduled]:
        plan = self._plan_of_booking.get(command.booking_id)
        if plan is None or plan.show_answered:
            return []
        plan.show_answered = True
        if plan.booking_fails:
            return self._send(now, BookingFailedV1(self._header(), command.booking_id, "sold out"))
        plan.booked = True
        plan.ticket_ids = tuple(self._uuid() for _ in range(command.number_of_tickets))
        made = BookingMadeV1(
            self._header(),
            command.number_of_tickets,
            command.booking_id,
            command.customer_email,
            command.show_id,
        )
        out = self._send(now, made)
        for ticket_id in plan.ticket_ids:
            confirmed = TicketBookingConfirmedV1(
                self._header(),
                ticket_id,
                command.customer_email,
                Money("120.00", "EUR"),
                command.booking_id,
            )
            if plan.flight_fails and self._rng.random() < self.knobs.late_confirmation_rate:
                self._late.setdefault(plan.bundle.vip_bundle_id, []).append(confirmed)
            else:
                out += self._send(now, confirmed)
        return out

    def _book_flight(self, command: BookFlight, now: float) -> list[Scheduled]:
        plan = self.plans.get(command.reference_id)
        if plan is None or plan.flight_answered:
            return []
        plan.flight_answered = True
        if plan.flight_fails:
            result: Event = FlightBookingFailedV1(
                self._header(), command.flight_id, "no seats", command.reference_id
            )
        else:
            seats = tuple(self._uuid() for _ in command.passengers)
            result = FlightBookedV1(self._header(), command.flight_id, seats, command.reference_id)
        out = self._send(now, result)
        # Held confirmations arrive after the failure: the refund must wait for them.
        after = max(s.due for s in out)
        for confirmed in self._late.pop(command.reference_id, []):
            out += self._send(after, confirmed)
        return out

    # --- helpers --------------------------------------------------------------------------

    def _send(self, now: float, event: Event) -> list[Scheduled]:
        """Schedules `event` after a random delay, sometimes twice (a redelivery)."""
        copies = 2 if self._rng.random() < self.knobs.duplicate_rate else 1
        out = []
        for _ in range(copies):
            self._seq += 1
            delay = self._rng.uniform(0, self.knobs.max_delay_s)
            out.append(Scheduled(now + delay, self._seq, event))
        return out

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _header(self) -> MessageHeader:
        return MessageHeader(self._uuid(), datetime.now(UTC), self._uuid())
