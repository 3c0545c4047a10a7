"""What the bench feeds the processor: complete bundle histories and realistic states.

Every domain value the bench builds is built in `Stories` (its `_header`,
`bundle` and `state`): the one place to adapt when the messages change.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from confluent_kafka import Producer

from processor.bench.kafka import produce
from processor.codec import Codec
from processor.domain.messages import (
    BookingFailedV1,
    BookingMadeV1,
    Event,
    FlightBookedV1,
    FlightBookingFailedV1,
    MessageHeader,
    Money,
    TicketBookingConfirmedV1,
    VipBundle,
    VipBundleInitializedV1,
)
from processor.domain.saga import Apply, decide
from processor.topology import Topics

Outcome = Literal["success", "flight-failed", "booking-failed"]


@dataclass(frozen=True)
class Bundle:
    vip_bundle_id: str
    tickets: int
    outcome: Outcome
    events: tuple[Event, ...]  # in causal order

    @property
    def outputs(self) -> int:
        """Records the saga publishes for the whole history (every event applies)."""
        state: VipBundle | None = None
        count = 0
        for event in self.events:
            decision = decide(state, event)
            assert isinstance(decision, Apply), f"{self.outcome}: {decision}"
            state = decision.state
            count += len(decision.outputs)
        return count


class Stories:
    """Deterministic (seeded) bundles with mixed outcomes, like the simulated services'."""

    def __init__(
        self,
        seed: int,
        booking_failure_rate: float = 0.1,
        flight_failure_rate: float = 0.3,
        max_tickets: int = 5,
    ) -> None:
        self._rng = random.Random(seed)
        self.booking_failure_rate = booking_failure_rate
        self.flight_failure_rate = flight_failure_rate
        self.max_tickets = max_tickets
        self._n = 0

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _header(self) -> MessageHeader:
        return MessageHeader(self._uuid(), datetime.now(UTC), self._uuid())

    def _initialized(self, tickets: int) -> VipBundleInitializedV1:
        self._n += 1
        bundle, booking, show, flight = (self._uuid() for _ in range(4))
        return VipBundleInitializedV1(
            self._header(),
            bundle,
            booking,
            f"customer{self._n}@example.com",
            tickets,
            show,
            tuple(f"Passenger {i}" for i in range(tickets)),
            flight,
        )

    def bundle(self, outcome: Outcome | None = None) -> Bundle:
        rng = self._rng
        if outcome is None:
            draw = rng.random()
            outcome = (
                "booking-failed"
                if draw < self.booking_failure_rate
                else "flight-failed"
                if draw < self.booking_failure_rate + self.flight_failure_rate
                else "success"
            )
        tickets = rng.randint(1, self.max_tickets)
        init = self._initialized(tickets)
        bundle, booking, email = init.vip_bundle_id, init.booking_id, init.customer_email
        flight = init.inbound_flight_id
        events: list[Event] = [init]
        if outcome == "booking-failed":
            events.append(BookingFailedV1(self._header(), booking, "sold out"))
        else:
            events.append(BookingMadeV1(self._header(), tickets, booking, email, init.show_id))
            events += [
                TicketBookingConfirmedV1(
                    self._header(), self._uuid(), email, Money("120.00", "EUR"), booking
                )
                for _ in range(tickets)
            ]
            if outcome == "success":
                seats = tuple(self._uuid() for _ in range(tickets))
                events.append(FlightBookedV1(self._header(), flight, seats, bundle))
            else:
                events.append(FlightBookingFailedV1(self._header(), flight, "no seats", bundle))
        return Bundle(bundle, tickets, outcome, tuple(events))

    def state(self) -> tuple[VipBundleInitializedV1, VipBundle]:
        """A bundle's initialization and a state the saga could hold for it: a third
        waiting for its flight, a third finalized booked, a third finalized failed."""
        rng = self._rng
        tickets = rng.randint(1, self.max_tickets)
        init = self._initialized(tickets)
        kind = rng.randrange(3)
        state = VipBundle(
            vip_bundle_id=init.vip_bundle_id,
            booking_id=init.booking_id,
            customer_email=init.customer_email,
            number_of_tickets=tickets,
            show_id=init.show_id,
            passengers=init.passengers,
            inbound_flight_id=init.inbound_flight_id,
            booking_made_at=init.header.published_at + timedelta(minutes=1),
            ticket_ids=tuple(sorted(self._uuid() for _ in range(tickets))),
            inbound_flight_ticket_ids=(
                tuple(sorted(self._uuid() for _ in range(tickets))) if kind == 1 else ()
            ),
            is_finalized=kind > 0,
            failed=kind == 2,
        )
        return init, state


def key_of(event: Event) -> str:
    """Keys as the services choose them: the processor must not rely on them."""
    for name in ("vip_bundle_id", "booking_id", "flight_id"):
        value = getattr(event, name, None)
        if value is not None:
            return value
    raise TypeError(f"no key for {type(event).__name__}")


def produce_histories(
    producer: Producer,
    codec: Codec,
    topics: Topics,
    bundles: Iterable[Bundle],
    base_ms: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """A backlog: every event of `bundles` to its input topic, with timestamps in
    causal order (tasks take records in timestamp order); returns the count."""
    sent = 0
    for i, bundle in enumerate(bundles):
        for step, event in enumerate(bundle.events):
            produce(
                producer,
                topics.input(event.schema_name),
                codec.encode(event),
                key_of(event).encode(),
                timestamp=base_ms + i * 10 + step,
            )
            sent += 1
        if i % 100 == 0:
            progress(sent)
    producer.flush(60)
    progress(sent)
    return sent


def feed_causally(
    producer: Producer, codec: Codec, topics: Topics, events: Sequence[Event]
) -> None:
    """Produces `events` live, as services would: the initializations are stored
    before any event that refers to them is sent (else the route stage may find a
    booking event's bundle unknown, rightly, and skip it)."""
    first = [e for e in events if isinstance(e, VipBundleInitializedV1)]
    rest = [e for e in events if not isinstance(e, VipBundleInitializedV1)]
    for batch in (first, rest):
        for event in batch:
            topic, key = topics.input(event.schema_name), key_of(event).encode()
            produce(producer, topic, codec.encode(event), key)
        if producer.flush(30):
            raise RuntimeError("events not delivered within 30 s")
