"""What the bench feeds the processor: complete bundle histories and realistic states."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from confluent_kafka import Producer

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
Headers = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None


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
        self._n += 1
        tickets = rng.randint(1, self.max_tickets)
        bundle, booking, show, flight = (self._uuid() for _ in range(4))
        email = f"customer{self._n}@example.com"
        events: list[Event] = [
            VipBundleInitializedV1(
                self._header(),
                bundle,
                booking,
                email,
                tickets,
                show,
                tuple(f"Passenger {i}" for i in range(tickets)),
                flight,
            )
        ]
        if outcome == "booking-failed":
            events.append(BookingFailedV1(self._header(), booking, "sold out"))
        else:
            events.append(BookingMadeV1(self._header(), tickets, booking, email, show))
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
        waiting for its flight, a third finalized booked, a third finalized failed.
        (Built directly, not through a history: 100k of them must be quick.)"""
        rng = self._rng
        self._n += 1
        tickets = rng.randint(1, self.max_tickets)
        bundle, booking, show, flight = (self._uuid() for _ in range(4))
        init = VipBundleInitializedV1(
            self._header(),
            bundle,
            booking,
            f"customer{self._n}@example.com",
            tickets,
            show,
            tuple(f"Passenger {i}" for i in range(tickets)),
            flight,
        )
        kind = rng.randrange(3)
        state = VipBundle(
            vip_bundle_id=bundle,
            booking_id=booking,
            customer_email=init.customer_email,
            number_of_tickets=tickets,
            show_id=show,
            passengers=init.passengers,
            inbound_flight_id=flight,
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
    """Produces every event of `bundles` to its input topic with timestamps in causal
    order (the manage stage orders a task's records by timestamp); returns the count."""
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


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    timestamp: int = 0,
    headers: Headers = None,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, timestamp=timestamp)
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.05)
